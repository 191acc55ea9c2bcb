"""Atomic writes and safe loading: a full disk or an unwritable folder never leaves a partial file, and a
checkpoint that carries pickled objects is refused."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from dussss_monai.errors import CheckpointError, DuSSSError
from dussss_monai.utils.io import atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "datalist.json"
    atomic_write_json(path, {"training": [1, 2]})
    atomic_write_json(path, {"training": [3]})
    assert json.loads(path.read_text()) == {"training": [3]}
    assert [p.name for p in tmp_path.iterdir()] == ["datalist.json"]


def test_full_disk_keeps_the_old_file_and_leaves_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "report.md"
    atomic_write_text(path, "good report\n")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DuSSSError) as e:
        atomic_write_text(path, "new report that does not fit\n")
    assert str(path) in str(e.value) and "No space left" in str(e.value)
    assert path.read_text() == "good report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_unwritable_output_folder_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(DuSSSError, match="locked"):
            atomic_torch_save({"w": torch.zeros(1)}, locked / "model.pt")
    finally:
        locked.chmod(0o700)


def test_unwritable_output_folder_as_root_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DuSSSError, match="not_a_folder"):
        atomic_write_json(blocker / "out" / "split.json", {})


class Payload:
    """An arbitrary class: unpickling it could run code, so loading must refuse it."""


def test_safe_load_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="unsafe"):
        safe_torch_load(path)


def test_safe_load_names_truncated_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(3)}, path)
    assert torch.equal(safe_torch_load(path)["w"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="model.pt"):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_torch_load(tmp_path / "absent.pt")
