"""Model-zoo checks of every bundle with the real CLI: ``verify_net_in_out`` against the metadata's shapes, and
``ckpt_export`` to TorchScript that loads and matches the eager network.

A small U-Net (``--unet_channels [4,8] --unet_strides [2]``) keeps the checks fast; the metadata's 224x224 input
is used as is (224 is divisible by the single stride 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle_cli import small_network

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ("dussss_qata_cov19", "dussss_monuseg", "dussss_bmseg")
SMALL = ["--unet_channels", "[4,8]", "--unet_strides", "[2]"]

pytestmark = pytest.mark.slow


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def _channels(configs: Path) -> int:
    return json.loads((configs / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]["num_channels"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle, tmp_path):
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    res = _cli(
        [
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            str(configs / "metadata.json"),
            "--config_file",
            str(configs / "inference.json"),
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "data shape of network is verified with no error" in res.stdout + res.stderr


@pytest.mark.parametrize("bundle", BUNDLES)
def test_ckpt_export_matches_eager(bundle, tmp_path):
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    channels = _channels(configs)
    torch.manual_seed(0)
    net = small_network(bundle)
    with torch.no_grad():  # non-trivial BatchNorm statistics (where the bundle has them): eval mode matters
        net.train()
        net(torch.rand(4, channels, 32, 32))
    torch.save(net.state_dict(), tmp_path / "model.pt")  # what train.json's best-model saver writes
    res = _cli(
        [
            "ckpt_export",
            "network_def",
            "--filepath",
            str(tmp_path / "model.ts"),
            "--ckpt_file",
            str(tmp_path / "model.pt"),
            "--meta_file",
            str(configs / "metadata.json"),
            "--config_file",
            str(configs / "inference.json"),
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    scripted = torch.jit.load(str(tmp_path / "model.ts"), map_location="cpu")
    eager = small_network(bundle)
    eager.load_state_dict(torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True), strict=True)
    eager.eval()
    scripted.eval()
    x = torch.rand(2, channels, 64, 64)
    with torch.no_grad():
        expected, got = eager(x), scripted(x)
    assert got.shape == (2, 1, 64, 64)
    assert torch.allclose(got, expected, atol=1e-5)
