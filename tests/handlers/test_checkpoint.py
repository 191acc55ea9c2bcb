"""SafeCheckpointLoader (weights_only loading, skip-if-missing) and atomic checkpoint saving."""

from __future__ import annotations

import os

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from torch import nn

from dussss_monai.errors import CheckpointError
from dussss_monai.handlers.checkpoint import AtomicCheckpointSaver, SafeCheckpointLoader, save_atomic
from dussss_monai.utils.io import safe_torch_load


class Arbitrary:
    """A custom class: unpickling it means running arbitrary code paths."""

    def __init__(self) -> None:
        self.payload = "anything"


def _engine(max_epochs: int = 3) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = max_epochs
    return engine


def test_refuses_checkpoint_with_pickled_arbitrary_object(tmp_path):
    net = nn.Linear(2, 2)
    path = tmp_path / "evil.pt"
    torch.save({"network": net.state_dict(), "extra": Arbitrary()}, path)
    loader = SafeCheckpointLoader(path, {"network": net})
    with pytest.raises(CheckpointError, match="unsafe"):
        loader(_engine())
    engine = Engine(lambda e, b: None)
    loader.attach(engine)
    with pytest.raises(CheckpointError, match="unsafe"):
        engine.run([0], max_epochs=1)


def test_restores_objects_and_engine_counters_keeping_max_epochs(tmp_path):
    torch.manual_seed(0)
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    trainer = Engine(lambda e, b: None)
    trainer.run([0, 1], max_epochs=2)
    path = save_atomic({"network": src, "trainer": trainer}, tmp_path / "ckpt.pt")
    target = _engine(max_epochs=5)
    assert SafeCheckpointLoader(path, {"network": dst, "trainer": target})(target) is True
    torch.testing.assert_close(dst.weight, src.weight)
    assert (target.state.iteration, target.state.epoch, target.state.max_epochs) == (4, 2, 5)


def test_checkpoint_beyond_max_epochs_is_refused(tmp_path):
    trainer = Engine(lambda e, b: None)
    trainer.run([0], max_epochs=4)
    path = save_atomic({"trainer": trainer}, tmp_path / "ckpt.pt")
    target = _engine(max_epochs=2)
    with pytest.raises(CheckpointError, match="max_epochs"):
        SafeCheckpointLoader(path, {"trainer": target})(target)


def test_missing_file_raises_unless_skipped_and_none_means_no_resume(tmp_path):
    net = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="does not exist"):
        SafeCheckpointLoader(tmp_path / "nope.pt", {"network": net})(_engine())
    assert SafeCheckpointLoader(tmp_path / "nope.pt", {"network": net}, skip_if_missing=True)(_engine()) is False
    assert SafeCheckpointLoader(None, {"network": net})(_engine()) is False
    with pytest.raises(CheckpointError):
        SafeCheckpointLoader(None, {})


def test_incompatible_or_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    path = save_atomic({"network": nn.Linear(2, 3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        SafeCheckpointLoader(path, {"network": nn.Linear(2, 2)})(_engine())
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="unreadable"):
        SafeCheckpointLoader(broken, {"network": nn.Linear(2, 3)})(_engine())


def test_single_object_from_a_bare_state_dict(tmp_path):
    src, dst = nn.Linear(2, 2), nn.Linear(2, 2)
    torch.save(src.state_dict(), tmp_path / "bare.pt")
    SafeCheckpointLoader(tmp_path / "bare.pt", {"model": dst})()
    torch.testing.assert_close(dst.bias, src.bias)


def _crashing_save(monkeypatch):
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)


def test_monai_checkpoint_saver_writes_in_place(tmp_path, monkeypatch):
    """Why AtomicCheckpointSaver exists: MONAI's CheckpointSaver uses DiskSaver(atomic=False)."""
    net = nn.Linear(2, 2)
    saver = CheckpointSaver(str(tmp_path), {"network": net}, save_interval=1)
    assert saver._interval_checkpoint.save_handler._atomic is False


@pytest.mark.parametrize("kind", ["interval", "final", "key_metric"])
def test_atomic_checkpoint_saver_never_leaves_a_truncated_file(tmp_path, monkeypatch, kind):
    net = nn.Linear(2, 2)
    trainer = Engine(lambda e, b: None)
    trainer.state.metrics = {}

    @trainer.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.metrics["dice"] = float(engine.state.epoch)  # improves every epoch

    kw = {
        "interval": {"save_interval": 1, "n_saved": 1},
        "final": {"save_final": True, "final_filename": "final.pt"},
        "key_metric": {"save_key_metric": True, "key_metric_name": "dice", "key_metric_filename": "model.pt"},
    }[kind]
    saver = AtomicCheckpointSaver(str(tmp_path), {"network": net, "trainer": trainer}, **kw)
    saver.attach(trainer)
    trainer.run([0], max_epochs=1)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".pt")  # no temporary file left behind
    good = tmp_path / files[0]
    assert set(safe_torch_load(good)) == {"network", "trainer"}
    assert os.stat(good).st_mode & 0o044 == 0o044  # group/others may read, as with MONAI's saver
    before = good.read_bytes()

    with torch.no_grad():
        net.weight.add_(1.0)
    _crashing_save(monkeypatch)
    with pytest.raises(OSError):
        trainer.run([0], max_epochs=2)  # the epoch-2 save crashes midway
    assert os.listdir(tmp_path) == files and good.read_bytes() == before  # the good file is untouched


def test_save_atomic_leaves_only_the_file(tmp_path):
    net = nn.Linear(2, 2)
    path = save_atomic({"network": net, "step": 3}, tmp_path / "x.pt")
    assert os.listdir(tmp_path) == ["x.pt"]
    loaded = safe_torch_load(path)
    assert loaded["step"] == 3 and set(loaded["network"]) == {"weight", "bias"}


def test_atomic_saver_keeps_n_saved_latest_files(tmp_path):
    net = nn.Linear(2, 2)
    trainer = Engine(lambda e, b: None)
    AtomicCheckpointSaver(str(tmp_path), {"network": net}, save_interval=1, n_saved=2).attach(trainer)
    trainer.run([0], max_epochs=4)
    assert sorted(os.listdir(tmp_path)) == ["network_epoch=3.pt", "network_epoch=4.pt"]
