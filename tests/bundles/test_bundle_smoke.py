"""Every config of the MoNuSeg and BM-Seg bundles runs unchanged on generated data, with only ``--dataset_dir``,
the epoch count and tiny network sizes overridden: stage 1, stage 2 (DuSSS, 1 epoch), evaluation and
inference, through the real ``monai.bundle`` CLI. The generated images are grey; MoNuSeg's configs convert them
to RGB (``in_channels 3``). The BM-Seg data has no validation folder, as BM-Seg itself: validation is held out
of the training images. The MoNuSeg bundle also runs one tiny epoch on the real tiles when they are present.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dussss_monai.bundle import text_check

from bundle_cli import run_bundle_cli, small_network

REPO_ROOT = Path(__file__).resolve().parents[2]
VLM_TINY = {
    "image_size": "32",
    "num_workers": "0",
    "vit_patch_size": "8",
    "vit_hidden_size": "32",
    "vit_mlp_dim": "64",
    "vit_num_layers": "1",
    "vit_num_heads": "2",
    "embed_dim": "16",
    "text_max_length": "16",
}
UNET_TINY = {"unet_channels": "[4,8]", "unet_strides": "[2]"}

pytestmark = pytest.mark.slow


def _ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


# bundle, in_channels, validation folder in the data, stage-1 overrides (BM-Seg's 8 training images < batch 32)
CASES = [("dussss_monuseg", 3, True, {}), ("dussss_bmseg", 1, False, {"batch_size": "4"})]
#: MoNuSeg trains on native patches: small ones for 48-pixel generated images, two iterations an epoch
SMALL_PATCHES = {
    "dussss_monuseg": {"patch_size": "32", "score_size": "32", "decoder_crop_size": "16", "epoch_length": "2"}
}


@pytest.mark.parametrize("bundle, channels, has_val, pretrain_extra", CASES, ids=[c[0] for c in CASES])
def test_configs_run_on_generated_data(bundle, channels, has_val, pretrain_extra, tmp_path, capsys):
    from dussss_monai.data import generate_demo_dataset

    configs = REPO_ROOT / "bundles" / bundle / "configs"
    data = generate_demo_dataset(
        tmp_path / "data", n_train=8 if has_val else 10, n_val=3 if has_val else 0, n_test=2, image_size=48, seed=0
    )
    root = tmp_path / "bundle"
    common = {"dataset_dir": str(data), "bundle_root": str(root), "max_epochs": "1"}

    _ok(run_bundle_cli("training", configs / "pretrain.json", {**common, **VLM_TINY, **pretrain_extra}, tmp_path))
    assert (root / "models" / "vlm.pt").is_file()

    _ok(
        run_bundle_cli(
            "training",
            configs / "train.json",
            {
                **common,
                **VLM_TINY,
                **UNET_TINY,
                **SMALL_PATCHES.get(bundle, {}),
                "decoder_channels": "8",
                "batch_size": "2",
            },
            tmp_path,
        )
    )
    run_dir = root / "runs" / "dussss_ratio0.25_seed0"
    model = run_dir / "models" / "model.pt"  # each run keeps its own best model
    state = torch.load(model, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    small_network(bundle).load_state_dict(state, strict=True)  # a plain state dict of the U-Net
    assert json.loads(model.with_suffix(".json").read_text())["unet_channels"] == [4, 8]  # the model's record
    datalist = json.loads((run_dir / "datalist.json").read_text())
    assert len(datalist["validation"]) == (3 if has_val else 2)  # BM-Seg: held out of the 10 training images

    # the text check reads the run back from its record: the run's teacher, f_g and validation images
    assert text_check.main(["--run", str(run_dir), "--json", "--samples_per_image", "2"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures["dice"]) == set(text_check.TARGETS) and 0 <= figures["changed_pct"] <= 100
    assert figures["n_samples"] == len(datalist["validation"]) * (2 if bundle in SMALL_PATCHES else 1)

    small = {
        "image_size": "32",
        "num_workers": "0",
        **UNET_TINY,
        **SMALL_PATCHES.get(bundle, {}),
        "bundle_root": str(root),
    }
    _ok(
        run_bundle_cli(
            "evaluating",
            [configs / "train.json", configs / "evaluate.json"],
            {**small, "dataset_dir": str(data)},
            tmp_path,
        )
    )
    rows = list(csv.DictReader(open(run_dir / "eval_validation" / "per_image_metrics.csv", newline="")))
    assert len(rows) == len(datalist["validation"])

    out = tmp_path / "masks"
    _ok(
        run_bundle_cli(
            None,
            configs / "inference.json",
            {"checkpoint": str(model), "input_dir": str(data / "Test_Folder" / "img"), "output_dir": str(out)},
            tmp_path,
        )
    )
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == 2
    assert all(np.asarray(Image.open(m)).shape == (48, 48) for m in masks)


def test_monuseg_real_data_one_tiny_epoch(monuseg_dir, tmp_path):
    """Stage 2, supervised, on 64-pixel crops of the real 1000x1000 RGB tiles (24 train + 6 val), two iterations."""
    configs = REPO_ROOT / "bundles" / "dussss_monuseg" / "configs"
    root = tmp_path / "bundle"
    _ok(
        run_bundle_cli(
            "training",
            [configs / "train.json", configs / "supervised.json"],
            {
                "dataset_dir": str(monuseg_dir),
                "bundle_root": str(root),
                "max_epochs": "1",
                "patch_size": "64",
                "epoch_length": "2",
                "num_workers": "0",
                **UNET_TINY,
            },
            tmp_path,
        )
    )
    run_dir = root / "runs" / "supervised_ratio0.25_seed0"
    small_network("dussss_monuseg").load_state_dict(
        torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True), strict=True
    )
    datalist = json.loads((run_dir / "datalist.json").read_text())
    assert (len(datalist["training"]), len(datalist["validation"])) == (24, 6)
    metrics = (root / "runs" / "supervised_ratio0.25_seed0" / "metrics.csv").read_text()
    assert "val_mean_dice" in metrics


def test_patch_mode_train_evaluate_infer_on_generated_data(tmp_path):
    """``--patch_size``: stage 2 (DuSSS, with stain transfer) on native-resolution crops, validation and evaluation
    by sliding window scored on the ``score_size`` grid, inference writing masks at each input's own size."""
    configs = REPO_ROOT / "bundles" / "dussss_monuseg" / "configs"
    from dussss_monai.data import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", n_train=8, n_val=2, n_test=2, image_size=48, seed=0)
    root = tmp_path / "bundle"
    common = {"dataset_dir": str(data), "bundle_root": str(root), "max_epochs": "1"}
    _ok(run_bundle_cli("training", configs / "pretrain.json", {**common, **VLM_TINY}, tmp_path))
    patch = {"patch_size": "24", "score_size": "40", "decoder_crop_size": "12", "epoch_length": "2"}
    _ok(
        run_bundle_cli(
            "training",
            configs / "train.json",
            # stain transfer from the unlabeled images: the whole path from the datalist to the batches
            {
                **common,
                **VLM_TINY,
                **UNET_TINY,
                **patch,
                "decoder_channels": "8",
                "batch_size": "2",
                "stain_transfer_prob": "1.0",
            },
            tmp_path,
        )
    )
    run_dir = root / "runs" / "dussss_ratio0.25_seed0"
    small_network("dussss_monuseg").load_state_dict(
        torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    )
    assert "val_mean_dice" in (run_dir / "metrics.csv").read_text()

    small = {"image_size": "32", "num_workers": "0", **UNET_TINY, **patch, "bundle_root": str(root)}
    _ok(
        run_bundle_cli(
            "evaluating",
            [configs / "train.json", configs / "evaluate.json"],
            {**small, "dataset_dir": str(data)},
            tmp_path,
        )
    )
    report = run_dir / "eval_validation"
    overlays = sorted((report / "overlays").glob("*_overlay.png"))
    assert len(list(csv.DictReader(open(report / "per_image_metrics.csv", newline="")))) == 2 and overlays

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (50, 70), "b.png": (20, 30)}  # one larger, one smaller than the patch
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(inputs / name)
    out = tmp_path / "masks"
    _ok(
        run_bundle_cli(
            None,
            configs / "inference.json",
            {"checkpoint": str(run_dir / "models" / "model.pt"), "input_dir": str(inputs), "output_dir": str(out)},
            tmp_path,
        )
    )
    for name, size in sizes.items():
        assert np.asarray(Image.open(out / name.replace(".png", "_mask.png"))).shape == size


def test_monuseg_real_data_patch_mode_one_tiny_epoch(monuseg_dir, tmp_path):
    """Stage 2, supervised with stain transfer from the unlabeled tiles, on 128-pixel crops of the real tiles;
    validation by sliding window over the whole 1000 x 1000 tiles, scored on a 64 x 64 grid."""
    configs = REPO_ROOT / "bundles" / "dussss_monuseg" / "configs"
    root = tmp_path / "bundle"
    _ok(
        run_bundle_cli(
            "training",
            [configs / "train.json", configs / "supervised.json"],
            {
                "dataset_dir": str(monuseg_dir),
                "bundle_root": str(root),
                "max_epochs": "1",
                "stain_transfer_prob": "0.5",
                "patch_size": "128",
                "score_size": "64",
                "num_workers": "0",
                **UNET_TINY,
            },
            tmp_path,
        )
    )
    metrics = (root / "runs" / "supervised_ratio0.25_seed0" / "metrics.csv").read_text()
    dice = float(metrics.strip().splitlines()[-1].split(",")[1])
    assert 0.0 <= dice <= 1.0
