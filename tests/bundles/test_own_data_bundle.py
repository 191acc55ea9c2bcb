"""A lab's own dataset through the documented commands (docs/own_data.md): an images folder, masks for a quarter of
the images, a CSV of reports with the lab's own column names. Trained semi-supervised with every mask-less image
used, evaluated without text, applied to new images; then the mistakes a user makes on a second day."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "bundles" / "dussss_qata_cov19" / "configs"
MEAN_TEACHER = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'mean_teacher.json'}']"
SMALL = {"image_size": "32", "unet_channels": "[4,8]", "unet_strides": "[2]", "batch_size": "2", "num_workers": "0"}

pytestmark = pytest.mark.slow


def dussss(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The ``dussss`` command (``python -m monai.bundle`` with our one-line errors), as the docs type it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "dussss_monai.bundle.console", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def last_line(res: subprocess.CompletedProcess) -> str:
    return (res.stderr.strip() or res.stdout.strip()).splitlines()[-1]


def _lab(root: Path, n: int = 12) -> None:
    """images/*.png (grey, a bright blob), masks/ for every fourth image, reports.csv (filename, report)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with open(root / "reports.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["filename", "report"])
        for i in range(n):
            img = rng.integers(20, 60, (40, 40), dtype=np.uint8)
            mask = np.zeros((40, 40), np.uint8)
            r, c = 5 + (i * 3) % 20, 5 + (i * 7) % 20
            img[r : r + 10, c : c + 10] = 200
            mask[r : r + 10, c : c + 10] = 255
            Image.fromarray(img).save(root / "images" / f"slide_{i:02d}.png")
            if i % 4 == 0:
                Image.fromarray(mask).save(root / "masks" / f"slide_{i:02d}.png")
            out.writerow([f"slide_{i:02d}.png", f"One bright lesion, report {i}."])
    (root / "new").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8)).save(root / "new" / f"new_{i}.png")


def test_a_labs_own_data_trains_evaluates_and_segments_with_documented_commands(tmp_path):
    lab = tmp_path / "lab"
    _lab(lab)
    data = [
        "--dataset_dir", "lab/reports.csv", "--columns", '{"image": "filename", "text": "report"}',
        "--image_dir", "lab/images", "--mask_dir", "lab/masks", "--bundle_root", "work",
    ]  # fmt: skip
    small = [a for k, v in SMALL.items() for a in (f"--{k}", v)]
    train = dussss("run", "training", "--config_file", MEAN_TEACHER, *data, "--max_epochs", "2", *small, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    run = tmp_path / "work" / "runs" / "mean_teacher_given_seed0"
    # every mask-less image is used: 3 masks (1 held out for validation, 2 labeled), 9 unlabeled; printed and recorded
    output = train.stdout + train.stderr
    assert "data: 2 labeled, 9 unlabeled, 1 validation images (as the data marks them)" in output
    assert "unlabeled: 9 training images without a mask" in output
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["split"]["mode"] == "given"
    assert (record["split"]["n_labeled"], record["split"]["n_unlabeled"]) == (2, 9)
    assert len(json.loads((run / "split_given.json").read_text())["unlabeled"]) == 9
    assert "epoch 2/2: " in output and "val_mean_dice" in output  # the progress line of each epoch
    assert json.loads((run / "models" / "model.json").read_text())["unet_channels"] == [4, 8]

    # evaluation without text, on the run's own validation image, with no network setting repeated
    evaluate = dussss("run", "evaluating", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
                      "--dataset_dir", "lab/images", "--mask_dir", "lab/masks",
                      "--checkpoint", str(run / "models" / "model.pt"), "--eval_dir", "report", cwd=tmp_path)  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["n"] == 3  # the image-mask pairs of the folders

    # new images, of other sizes, segmented at their own size
    infer = dussss("run", "--config_file", str(CONFIGS / "inference.json"), "--input_dir", "lab/new",
                   "--checkpoint", str(run / "models" / "model.pt"), "--output_dir", "masks", cwd=tmp_path)  # fmt: skip
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert [np.asarray(Image.open(tmp_path / "masks" / f"new_{i}_mask.png")).shape for i in range(2)] == [(50, 30)] * 2

    # the second day: the same command again is refused (the run is kept), a resume with another learning rate too
    again = dussss("run", "training", "--config_file", MEAN_TEACHER, *data, "--max_epochs", "2", *small, cwd=tmp_path)
    assert again.returncode == 1 and "already holds the run started" in last_line(again)
    changed = dussss("run", "training", "--config_file", MEAN_TEACHER, *data, "--max_epochs", "3", *small,
                     "--resume", "True", "--learning_rate", "0.01", cwd=tmp_path)  # fmt: skip
    assert changed.returncode == 1
    assert "learning_rate: 0.0003 in the run, 0.01 now" in last_line(changed)
    # a typo in a setting ends on our line, and leaves nothing behind
    typo = dussss("run", "training", "--config_file", str(CONFIGS / "train.json"), *data, "--lerning_rate", "0.1",
                  "--bundle_root", "typo", cwd=tmp_path)  # fmt: skip
    assert typo.returncode == 1 and "(did you mean --learning_rate?)" in last_line(typo)
    assert not (tmp_path / "typo").exists()
    # one bad file among the new images: the others are segmented, the run fails naming it
    (lab / "new" / "empty.png").write_bytes(b"")
    bad = dussss("run", "--config_file", str(CONFIGS / "inference.json"), "--input_dir", "lab/new",
                 "--checkpoint", str(run / "models" / "model.pt"), "--output_dir", "masks2", cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 1 and "empty.png: file is empty (0 bytes)" in last_line(bad)
    assert sorted(p.name for p in (tmp_path / "masks2").glob("*_mask.png")) == ["new_0_mask.png", "new_1_mask.png"]
    # a zero-byte model: one line
    (tmp_path / "zero.pt").write_bytes(b"")
    zero = dussss("run", "--config_file", str(CONFIGS / "inference.json"), "--input_dir", "lab/new",
                  "--checkpoint", "zero.pt", "--output_dir", "masks3", cwd=tmp_path)  # fmt: skip
    assert zero.returncode == 1 and "zero.pt is empty (0 bytes)" in last_line(zero)
