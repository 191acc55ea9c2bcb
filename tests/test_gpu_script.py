"""``benchmarks/gpu.sh`` is run only when a session has a GPU (15 minutes at most): a broken script wastes that
session. Here it runs end to end on the CPU, on a payload made by ``prepare_gpu_payload.py`` from generated data,
with tiny networks: every part (step time with profiles, the side-by-side sweep, ``--report_only``, the archive)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dussss_monai.data.demo import generate_demo_dataset

REPO = Path(__file__).resolve().parents[1]

TINY_STEP = (
    "--size 32 --batch 2 --iters 1 --warmup 1 --vit-hidden 32 --vit-heads 2 --vit-layers 1 --embed-dim 16 "
    "--decoder-channels 8 --unet-channels 4 8"
)
TINY_BUNDLE = " ".join(
    f"--extra {x}"
    for x in ("image_size=32", "vit_num_layers=1", "vit_hidden_size=32", "vit_mlp_dim=64", "vit_num_heads=2",
              "embed_dim=16", "decoder_channels=8", "unet_channels=[4,8,16]", "unet_strides=[2,2]",
              "train:batch_size=2", "pretrain:batch_size=4")
)  # fmt: skip


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    data = generate_demo_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=0, image_size=32)
    payload, out = tmp_path / "payload", tmp_path / "out"
    prep = subprocess.run(
        [sys.executable, "benchmarks/prepare_gpu_payload.py", "--monuseg", str(data), "--out", str(payload),
         "--size", "48", "--skip_wheels"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert (payload / "text_cache.pt").is_file() and (payload / "monuseg" / "Val_Folder" / "img").is_dir()

    env = {**os.environ, "DEVICE": "cpu", "SKIP_INSTALL": "1", "SEEDS": "0", "METHODS": "supervised,dussss",
           "PRE_EPOCHS": "1", "EPOCHS": "1", "WORK": str(tmp_path / "work"), "STEP_ARGS": TINY_STEP,
           "SWEEP_EXTRA": TINY_BUNDLE, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    run = subprocess.run(["bash", "benchmarks/gpu.sh", str(payload), str(out)], cwd=REPO, capture_output=True,
                         text=True, env=env, timeout=600)  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "DuSSS / mean teacher:" in (out / "step_time.txt").read_text()
    profile = (out / "profile_b16_dussss.txt").read_text()
    assert profile.startswith("dussss: 8 iterations") and "Self CPU time total" in profile
    results = (out / "results.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith(("| Supervised only", "| DuSSS |"))]
    assert len(rows) == 2 and all("| 1 | 4 |" in r for r in rows), results  # one seed, four validation images
    assert "[ratio 0.25 seed 0 dussss] validation Dice" in log
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files  # the device tool returns at most 8 files
    assert {"logs.tar.gz", "results.csv", "learning_curves_ratio0.25.png"} <= set(files)
