"""Shared by the bundle tests: run ``python -m monai.bundle run`` in a subprocess, offline and single-threaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bundle_cli(run_id: str | None, config: Path, overrides: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a bundle workflow; returns the finished process (output captured, not checked)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else []) + ["--config_file", str(config)]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
