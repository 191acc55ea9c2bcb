"""A run folder belongs to one run: the lock, a new run never replacing an old one, resume of the same run only,
the record of every attempt, and the pruning of old checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dussss_monai.bundle import RunFolder
from dussss_monai.errors import ConfigError
from dussss_monai.handlers import AtomicCheckpointSaver

CONFIG = {"method": "mean_teacher", "learning_rate": 0.001, "seed": 0, "max_epochs": 4, "output_dir": "x"}


def _data(names=("a", "b", "c"), unlabeled=("u1", "u2")):
    return {
        "training": [],
        "validation": [{"image": "/d/v.png", "name": "v.png"}],
        "test": [],
        "labeled": [{"image": f"/d/{n}.png", "name": f"{n}.png"} for n in names],
        "unlabeled": [{"image": f"/d/{n}.png", "name": f"{n}.png"} for n in unlabeled],
        "split": {"mode": "given", "labeled_ratio": None, "seed": 0, "n_labeled": len(names),
                  "n_unlabeled": len(unlabeled), "n_validation": 1, "n_test": 0, "summary": ["..."]},
    }  # fmt: skip


def _folder(tmp_path, resume=False):
    run = tmp_path / "run"
    return RunFolder(run, run / "models", run / "checkpoints", resume=resume)


class _Trainer:
    def __init__(self, error: BaseException | None = None):
        self.error = error

    def run(self):
        if self.error is not None:
            raise self.error


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's lock, as a live run does."""
    code = (
        "import sys, time, json, os; from filelock import FileLock; "
        f"lock = FileLock({str(folder / '.lock')!r}); lock.acquire(); "
        f"open({str(folder / '.owner.json')!r}, 'w').write(json.dumps({{'pid': os.getpid(), 'host': 'lab-gpu', "
        "'started': 'today', 'argv': ['dussss', 'run', 'training', '--seed', '0']})); "
        "print('locked', flush=True); time.sleep(60)"
    )
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_first(tmp_path):
    holder = _hold_lock(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=rf"in use by another run \(process {holder.pid} on lab-gpu.*--seed 0"):
            _folder(tmp_path).start(_data(), config=CONFIG)
        assert not (tmp_path / "run" / "run.json").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_free_again(tmp_path):
    holder = _hold_lock(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    folder = _folder(tmp_path).start(_data(), config=CONFIG)
    owner = json.loads((tmp_path / "run" / ".owner.json").read_text())
    assert owner["pid"] == os.getpid()  # the stale owner is replaced
    folder.release()


def test_a_new_run_never_replaces_a_finished_run_or_one_with_checkpoints(tmp_path):
    first = _folder(tmp_path).start(_data(), {"unet_channels": [4, 8]}, config=CONFIG, method="mean_teacher")
    first.run(_Trainer())
    first.release()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "finished" and record["split"]["n_unlabeled"] == 2
    assert json.loads((tmp_path / "run" / "models" / "model.json").read_text()) == {"unet_channels": [4, 8]}
    with pytest.raises(ConfigError, match=r"already holds the run started .*last finished.*--resume True.*--run_name"):
        _folder(tmp_path).start(_data(), config=CONFIG)
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == record  # untouched


def test_a_failed_attempt_is_added_to_the_record_and_a_folder_without_checkpoints_is_reused(tmp_path):
    folder = _folder(tmp_path).start(_data(), config=CONFIG)
    with pytest.raises(RuntimeError, match="out of memory"):
        folder.run(_Trainer(RuntimeError("out of memory")))
    folder.release()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["attempts"][-1]["error"] == "RuntimeError: out of memory"
    # no checkpoint was written: the folder may start a new run
    _folder(tmp_path).start(_data(), config=CONFIG).release()


def test_resume_refuses_another_run_naming_each_difference(tmp_path):
    folder = _folder(tmp_path).start(_data(), config=CONFIG)
    folder.release()
    (tmp_path / "run" / "checkpoints").mkdir()
    torch.save({}, tmp_path / "run" / "checkpoints" / "training_checkpoint_epoch=2.pt")
    changed = {**CONFIG, "learning_rate": 0.01, "max_epochs": 8, "output_dir": "y"}  # max_epochs, paths may change
    with pytest.raises(ConfigError) as e:
        _folder(tmp_path, resume=True).start(_data(names=("a", "b", "c", "d"), unlabeled=("u1",)), config=changed)
    message = str(e.value)
    assert "learning_rate: 0.001 in the run, 0.01 now" in message
    assert "the images of the split differ (labeled 3 -> 4, unlabeled 2 -> 1)" in message
    assert "max_epochs" not in message and "output_dir" not in message
    same = _folder(tmp_path, resume=True).start(_data(), config={**CONFIG, "max_epochs": 8})
    assert same.resume_checkpoint.endswith("training_checkpoint_epoch=2.pt")
    same.run(_Trainer())
    attempts = json.loads((tmp_path / "run" / "run.json").read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["running", "finished"]  # the first attempt was never ended here


def test_resume_where_there_is_nothing_to_resume_says_so(tmp_path):
    other = tmp_path / "dussss_ratio0.25_seed0"
    RunFolder(other).start(config=CONFIG).release()
    with pytest.raises(
        ConfigError, match=r"nothing to resume in .*seed1: no training checkpoint .*dussss_ratio0.25_seed0"
    ):
        RunFolder(tmp_path / "seed1", checkpoint_dir=tmp_path / "seed1" / "checkpoints", resume=True).start(
            config=CONFIG
        )


def test_checkpoints_of_earlier_attempts_are_pruned_with_the_others(tmp_path):
    from ignite.engine import Engine, Events

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for epoch in (1, 4):  # left by an earlier attempt
        torch.save({}, folder / f"training_checkpoint_epoch={epoch}.pt")
        time.sleep(0.01)
    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(
        str(folder), {"network": net, "optimizer": torch.optim.SGD(net.parameters(), 0.1)}, file_prefix="training", save_interval=1, epoch_level=True, n_saved=2,
        save_final=True, final_filename="training_final.pt",
    )  # fmt: skip
    saver.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: time.sleep(0.01))
    engine.run([0], max_epochs=3)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["training_checkpoint_epoch=2.pt", "training_checkpoint_epoch=3.pt", "training_final.pt"]


def test_files_get_the_users_umask(tmp_path):
    from dussss_monai.utils.io import atomic_write_json

    previous = os.umask(0o002)
    try:
        path = atomic_write_json(tmp_path / "shared.json", {})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o664  # a lab's group can read and write it


def test_the_model_folder_of_a_live_run_is_locked_too(tmp_path):
    first = RunFolder(tmp_path / "a", tmp_path / "a" / "models").start(config=CONFIG)
    try:
        with pytest.raises(ConfigError, match=r"a/models is in use by another run \(process"):
            RunFolder(tmp_path / "b", tmp_path / "a" / "models").start(config=CONFIG)  # another run, the same models
        assert not (tmp_path / "b" / "run.json").exists()
    finally:
        first.release()
