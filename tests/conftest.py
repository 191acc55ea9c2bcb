"""Shared pytest fixtures and settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Deterministic, single-threaded maths keeps the suite reproducible and friendly to a 2-core machine.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def monuseg_dir() -> Path:
    """The real MoNuSeg folder in LViT's layout; tests using it skip where it is absent."""
    path = SHARED_DATA / "monuseg"
    if not (path / "Train_Folder").is_dir():
        pytest.skip(f"real MoNuSeg data not found at {path} (see ../shared/data/README.md)")
    return path
