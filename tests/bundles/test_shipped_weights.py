"""The MoNuSeg bundle's shipped student (``models/model.pt``): it loads into the bundle's own network, inference runs
on a folder of tiles straight after cloning, and, where the real data is present, ``evaluate.json`` reproduces the
Dice that ``metadata.json`` states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dussss_monai.utils.io import safe_torch_load

from bundle_cli import bundle_network, run_bundle_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "bundles" / "dussss_monuseg"
WEIGHTS = BUNDLE / "models" / "model.pt"

pytestmark = pytest.mark.slow


def test_weights_are_a_small_float16_state_dict_of_the_bundles_network():
    assert WEIGHTS.stat().st_size < 30 * 2**20
    state = safe_torch_load(WEIGHTS)
    floats = [v for v in state.values() if torch.is_floating_point(v)]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    net = bundle_network("dussss_monuseg")
    net.load_state_dict(state, strict=True)  # float16 tensors copy into the float32 parameters
    assert next(net.parameters()).dtype == torch.float32
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()


def test_inference_from_python_in_another_folder(tmp_path):
    """``monai.bundle.run`` from Python, in a working directory of the user's: the bundle is found from the config
    file (no ``bundle_root`` to pass), and a mistyped keyword ends on our one-line error."""
    import subprocess
    import sys

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tiles / "t.png")
    script = (
        "import monai.bundle, sys\n"
        f"config = {str(BUNDLE / 'configs' / 'inference.json')!r}\n"
        "monai.bundle.run(config_file=config, input_dir='tiles', output_dir='masks', flip_tta=False)\n"
        "monai.bundle.run(config_file=config, input_dir='tiles', output_dir='masks', flip_ttta=False)\n"
    )
    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert (tmp_path / "masks" / "t_mask.png").is_file(), proc.stderr[-2000:]
    assert proc.returncode == 1
    assert "--flip_ttta: this config has no setting 'flip_ttta' (did you mean --flip_tta?)" in proc.stderr


def test_inference_runs_on_a_folder_of_tiles_with_no_training(tmp_path):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(300, 280), (256, 256)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tiles / f"tile{i}.png")
    out = tmp_path / "masks"
    proc = run_bundle_cli(
        None,
        BUNDLE / "configs" / "inference.json",
        {"input_dir": str(tiles), "output_dir": str(out), "num_workers": "0"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    masks = sorted(out.glob("*_mask.png"))
    assert [m.name for m in masks] == ["tile0_mask.png", "tile1_mask.png"]
    assert np.array(Image.open(masks[0])).shape[:2] == (300, 280)  # the input's own size


def test_evaluate_reproduces_the_dice_in_metadata(monuseg_dir, tmp_path):
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    proc = run_bundle_cli(
        "evaluating",
        [BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "evaluate.json"],
        {"dataset_dir": str(monuseg_dir), "checkpoint": str(WEIGHTS), "eval_dir": str(tmp_path / "eval")},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n"] == 6
    assert summary["mean_dice"] == pytest.approx(meta["eval_metrics"]["mean_dice"], abs=5e-4)
