"""configs/evaluate.json and configs/inference.json, run end to end with the real ``monai.bundle`` CLI.

A random (untrained) small U-Net is saved as ``<bundle_root>/models/model.pt``, without a record of its settings;
the configs' network settings are overridden to match it (as a user does for a model trained elsewhere). The
scores are meaningless; what is checked is the contract: one CSV row per evaluated image, a summary,
overlays, and one mask per input image at the input's original size.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle_cli import run_bundle_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "bundles" / "dussss_qata_cov19" / "configs"
SMALL = {"unet_channels": "[4,8]", "unet_strides": "[2]", "image_size": "64", "num_workers": "0", "batch_size": "2"}

pytestmark = pytest.mark.slow


def _save_random_model(bundle_root: Path, in_channels: int = 1) -> Path:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        channels=(4, 8),
        strides=(2,),
        num_res_units=2,
        norm="batch",
    )
    path = bundle_root / "models" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return path


def test_evaluate_config_writes_report(tmp_path):
    from dussss_monai.data import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", n_train=4, n_val=3, n_test=2, image_size=48, seed=0)
    root = tmp_path / "bundle"
    model = _save_random_model(root)
    res = run_bundle_cli(
        "evaluating",
        [CONFIGS / "train.json", CONFIGS / "evaluate.json"],
        {**SMALL, "dataset_dir": str(data), "split": "test", "checkpoint": str(model), "eval_dir": str(root / "eval")},
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    eval_dir = root / "eval"
    rows = list(csv.DictReader(open(eval_dir / "per_image_metrics.csv", newline="")))
    assert len(rows) == 2  # one row per test image
    assert all(0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["iou"]) <= 1.0 and r["text"] for r in rows)
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["n"] == 2
    assert summary["mean_dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-5)
    assert len(list((eval_dir / "overlays").glob("*_overlay.png"))) == 2


def test_evaluate_config_missing_checkpoint_names_it(tmp_path):
    from dussss_monai.data import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", n_train=4, n_val=2, n_test=0, image_size=48, seed=0)
    root = tmp_path / "bundle"
    res = run_bundle_cli(
        "evaluating",
        [CONFIGS / "train.json", CONFIGS / "evaluate.json"],
        {**SMALL, "bundle_root": str(root), "dataset_dir": str(data)},
        cwd=tmp_path,
    )
    assert res.returncode != 0
    assert str(root / "runs" / "dussss_ratio0.25_seed0" / "models" / "model.pt") in res.stderr  # the run's model


def test_inference_config_writes_masks_at_original_size(tmp_path):
    root = tmp_path / "bundle"
    _save_random_model(root)
    inputs = tmp_path / "images"
    inputs.mkdir()
    sizes = {"x1.png": (50, 70), "x2.png": (64, 64), "x3.tif": (33, 90)}
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(inputs / name)
    out = tmp_path / "masks"
    res = run_bundle_cli(
        None,
        CONFIGS / "inference.json",
        {**SMALL, "bundle_root": str(root), "input_dir": str(inputs), "output_dir": str(out)},
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    written = sorted(p.name for p in out.iterdir())
    assert written == ["x1_mask.png", "x2_mask.png", "x3_mask.png"]
    for name, (h, w) in sizes.items():
        m = np.asarray(Image.open(out / (name.rsplit(".", 1)[0] + "_mask.png")))
        assert m.shape == (h, w) and set(np.unique(m)) <= {0, 255}
