"""Reliability of real bundle runs: a SIGKILLed training resumes, a non-finite loss stops training without
damaging the saved models, and the same seed gives the same split and the same validation Dice.

These tests start ``python -m monai.bundle run training`` in subprocesses on a small generated dataset,
exactly as a user would, with a tiny U-Net so that each run takes seconds on a CPU.
"""

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

from dussss_monai.data import generate_demo_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "dussss_qata_cov19" / "configs"
MEAN_TEACHER = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'mean_teacher.json'}']"
SUPERVISED = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'supervised.json'}']"
TINY = [
    "--image_size",
    "32",
    "--batch_size",
    "4",
    "--num_workers",
    "0",
    "--unet_channels",
    "[4,8,16]",
    "--unet_strides",
    "[2,2]",
    "--log_iterations",
    "False",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(
        tmp_path_factory.mktemp("data") / "qata", n_train=16, n_val=4, n_test=0, image_size=32, seed=1
    )


def _cmd(dataset: Path, root: Path, config: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config,
        "--dataset_dir",
        str(dataset),
        "--bundle_root",
        str(root),
        *TINY,
        *extra,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)


def test_sigkilled_training_resumes_from_its_last_checkpoint(dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "mean_teacher_ratio0.5_seed0" / "checkpoints"
    common = (MEAN_TEACHER, "--labeled_ratio", "0.5")
    proc = subprocess.Popen(
        _cmd(dataset, tmp_path, *common, "--max_epochs", "400"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        cwd=REPO,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not list(run_dir.glob("training_checkpoint_epoch=*.pt")):
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        time.sleep(0.5)  # let it get into the middle of a later epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = sorted(run_dir.glob("training_checkpoint_epoch=*.pt"))
    assert saved, "no checkpoint survived the kill"
    assert not list(run_dir.glob("*.tmp")) or all(p.name.startswith(".") for p in run_dir.glob("*.tmp"))
    state = torch.load(saved[-1], weights_only=True)
    per_epoch = int(state["trainer"]["epoch_length"])
    iteration_done = int(state["trainer"]["iteration"])
    epoch_done = iteration_done // per_epoch
    assert epoch_done >= 1 and iteration_done == epoch_done * per_epoch

    target = epoch_done + 2
    resumed = _run(_cmd(dataset, tmp_path, *common, "--max_epochs", str(target), "--resume", "True"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"from {saved[-1]}" in log and "restored" in log
    final = torch.load(run_dir / "training_final.pt", weights_only=True)
    assert int(final["trainer"]["iteration"]) == per_epoch * target
    assert int(final["lr_scheduler"]["last_epoch"]) == target  # the schedule continued, not restarted
    assert "teacher" in final and "optimizer" in final
    # the killed attempt and the finished one are both in the record; the killed run's old checkpoints are pruned
    record = json.loads((run_dir.parent / "run.json").read_text())
    assert [a["status"] for a in record["attempts"]] == ["running", "finished"] and record["status"] == "finished"
    assert len(list(run_dir.glob("training_checkpoint_epoch=*.pt"))) == 2


def test_non_finite_loss_stops_and_keeps_good_models(dataset: Path, tmp_path: Path) -> None:
    # 16 training images at ratio 1.0 and batch 4 -> 4 iterations per epoch; NaN at iteration 7 (epoch 2)
    result = _run(
        _cmd(
            dataset,
            tmp_path,
            SUPERVISED,
            "--labeled_ratio",
            "1.0",
            "--max_epochs",
            "5",
            "--loss",
            "$__import__('nan_loss').NaNAfter(6)",
        )
    )
    assert result.returncode != 0
    assert "non-finite" in result.stderr.lower() and "iteration 7" in result.stderr
    best = tmp_path / "runs" / "supervised_ratio1.0_seed0" / "models" / "model.pt"
    ckpts = tmp_path / "runs" / "supervised_ratio1.0_seed0" / "checkpoints"
    record = json.loads((ckpts.parent / "run.json").read_text())
    assert record["status"] == "failed" and "non-finite" in record["attempts"][-1]["error"]
    assert best.is_file(), "the best model of epoch 1 must survive"
    state = torch.load(best, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    kept = list(ckpts.glob("training_checkpoint_epoch=1.pt"))
    assert kept and not list(ckpts.glob("training_checkpoint_epoch=2.pt"))
    assert not (ckpts / "training_final.pt").exists()


def test_same_seed_same_split_and_dice(dataset: Path, tmp_path: Path) -> None:
    summaries, splits = [], []
    for i in range(2):
        root = tmp_path / f"run{i}"
        result = _run(_cmd(dataset, root, SUPERVISED, "--labeled_ratio", "0.5", "--max_epochs", "2", "--seed", "3"))
        assert result.returncode == 0, result.stderr[-3000:]
        run_dir = root / "runs" / "supervised_ratio0.5_seed3"
        splits.append((run_dir / "split_ratio0.5_seed3.json").read_bytes())
        metrics = (run_dir / "metrics.csv").read_text()
        summaries.append(metrics)
        record = json.loads((run_dir / "run.json").read_text())
        assert record["identity"]["settings"]["seed"] == 3 and record["versions"]["torch"] == torch.__version__
        assert record["config"]["method"] == "supervised" and record["config"]["seed"] == 3
    assert splits[0] == splits[1]
    assert summaries[0] == summaries[1]
