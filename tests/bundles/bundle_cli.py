"""Shared by the bundle tests: run ``python -m monai.bundle run`` in a subprocess, offline and single-threaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bundle_cli(
    run_id: str | None, config: Path | list[Path], overrides: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    """Run a bundle workflow (``config``: one file, or a list merged in order, e.g. train.json and evaluate.json);
    returns the finished process (output captured, not checked)."""
    files = str(config) if isinstance(config, Path) else json.dumps([str(c) for c in config])
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else []) + ["--config_file", files]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def bundle_network(bundle: str, **overrides):
    """The bundle's own student network (``network_def`` of its ``inference.json``), with ``overrides`` of the
    config's values."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def", instantiate=True)


def small_network(bundle: str, channels: list[int] | None = None, strides: list[int] | None = None):
    """The bundle's own student network (norm included) with small channels: what a tiny training run of that
    bundle saves."""
    return bundle_network(bundle, unet_channels=channels or [4, 8], unet_strides=strides or [2])
