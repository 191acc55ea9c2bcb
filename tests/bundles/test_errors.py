"""Whatever a user types, a failed run ends on our message: the file or setting and the fix are the last line the
user sees, the exit status is not 0, and the cheap checks come before any model is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle_cli import run_bundle_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "bundles" / "dussss_qata_cov19" / "configs"
SMALL = {"num_workers": "0", "image_size": "32", "unet_channels": "[4,8]", "unet_strides": "[2]"}

pytestmark = pytest.mark.slow


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from dussss_monai.data import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("data") / "demo", n_train=8, n_val=2, n_test=0, image_size=32)


def test_a_missing_dataset_folder(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_bundle_cli(
        "training", [CONFIGS / "train.json", CONFIGS / "supervised.json"], {"dataset_dir": str(missing)}, tmp_path
    )
    last = _last_line(proc)
    assert f"{missing} does not exist: pass --dataset_dir" in last
    assert "Traceback" not in proc.stderr  # hidden unless DUSSS_TRACEBACK=1


def test_a_method_given_as_a_setting_through_the_dussss_command(tmp_path, data):
    """``--method`` names no setting: the method is a config layer, and the message shows the layer to add."""
    cmd = [sys.executable, "-m", "dussss_monai.bundle.console", "run", "training", "--config_file",
           str(CONFIGS / "train.json"), "--dataset_dir", str(data), "--method", "mean_teacher",
           "--lerning_rate", "0.1", "--bundle_root", str(tmp_path)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    last = _last_line(proc)
    assert last.startswith("error: 2 setting problems: --method: the method is chosen by its config layer")
    assert "configs/mean_teacher.json" in last and "(did you mean --learning_rate?)" in last
    shown = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env={**env, "DUSSS_TRACEBACK": "1"})  # fmt: skip
    assert "Traceback" in shown.stderr and _last_line(shown).endswith("(did you mean --learning_rate?)")
    assert not (tmp_path / "runs").exists()  # a run that never started leaves nothing


def test_no_stage1_checkpoint_names_this_bundles_stage1_command_before_loading_anything(tmp_path, data):
    root = tmp_path / "elsewhere"  # --bundle_root away from the bundle folder: the hint must still be right
    proc = run_bundle_cli("training", CONFIGS / "train.json",
                          {"dataset_dir": str(data), "bundle_root": str(root)}, tmp_path)  # fmt: skip
    last = _last_line(proc)
    assert f"no checkpoint at {root / 'models' / 'vlm.pt'}" in last
    assert f"python -m monai.bundle run training --config_file {CONFIGS / 'pretrain.json'} --dataset_dir {data}" in last
    assert "Loading weights" not in proc.stdout + proc.stderr  # the text encoder was not loaded first


def test_a_checkpoint_of_another_network(tmp_path, data):
    from monai.networks.nets import UNet

    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    other = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2))
    torch.save(other.state_dict(), root / "models" / "model.pt")
    proc = run_bundle_cli("evaluating", [CONFIGS / "train.json", CONFIGS / "evaluate.json"],
                          {**SMALL, "dataset_dir": str(data), "checkpoint": str(root / "models" / "model.pt")},
                          tmp_path)  # fmt: skip
    last = _last_line(proc)
    assert last.startswith(f"error: checkpoint {root / 'models' / 'model.pt'} holds another network than this config")
    assert "missing key(s), e.g." in last and "unexpected key(s), e.g." in last  # one line, not one per tensor
    assert "has no record of its network settings (model.json): give the settings it was trained with" in last


def test_no_trained_model_for_inference(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    proc = run_bundle_cli(None, CONFIGS / "inference.json",
                          {**SMALL, "bundle_root": str(tmp_path / "b"), "input_dir": str(images)}, tmp_path)  # fmt: skip
    last = _last_line(proc)
    assert f"no checkpoint at {tmp_path / 'b' / 'models' / 'model.pt'}" in last and "--checkpoint" in last
    proc = run_bundle_cli(None, CONFIGS / "inference.json", {**SMALL, "input_dir": str(tmp_path / "none")}, tmp_path)
    assert "does not exist: pass --input_dir" in _last_line(proc)


def test_an_error_that_is_not_ours_keeps_pythons_traceback(tmp_path, data):
    proc = run_bundle_cli("training", [CONFIGS / "train.json", CONFIGS / "supervised.json"],
                          {"dataset_dir": str(data), "optimizer#lr": "'fast'"}, tmp_path)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr and not _last_line(proc).startswith("error:")
