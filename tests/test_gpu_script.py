"""``benchmarks/gpu.sh`` is run only when a session has a GPU (15 minutes at most): a broken script wastes that
session. Here its dry run prints, on the CPU, every command of the MoNuSeg table it would run: the current recipe
(``monuseg_table.py``, the bundle's configs with each method's layer), stage 1 once, the text features from the
payload."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dussss_monai.data.demo import generate_demo_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_script_dry_run_prints_the_current_recipe(tmp_path):
    data = generate_demo_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=0, image_size=32)
    payload, out = tmp_path / "payload", tmp_path / "out"
    reference = tmp_path / "plain_unet.py"
    reference.write_text("print('the reference')\n")
    prep = subprocess.run(
        [sys.executable, "benchmarks/prepare_gpu_payload.py", "--monuseg", str(data), "--out", str(payload),
         "--size", "48", "--skip_wheels", "--reference", str(reference)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert (payload / "text_cache.pt").is_file() and (payload / "plain_unet_monuseg.py").is_file()

    env = {**os.environ, "DRY_RUN": "1", "SKIP_INSTALL": "1", "SEEDS": "0", "METHODS": "reference,mean_teacher,dussss",
           "WORK": str(tmp_path / "work"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    run = subprocess.run(["bash", "benchmarks/gpu.sh", str(payload), str(out)], cwd=REPO, capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    # stage 1 in one shared folder, with the sentence features of the payload (a dry run prints it where it is needed)
    stage1 = {c for c in commands if "pretrain.json" in c}
    assert len(stage1) == 1 and "text_cache.pt" in next(iter(stage1)) and "work/stage1" in next(iter(stage1))
    trains = [c for c in commands if " training " in c and "pretrain.json" not in c]
    assert len(trains) == 2 and all("--max_epochs 48" in c for c in trains)
    assert sum("configs/mean_teacher.json" in c for c in trains) == 1  # the method is its config layer
    assert sum("--vlm_checkpoint" in c for c in trains) == 1  # DuSSS reads the shared stage-1 model
    assert sum("plain_unet_monuseg.py" in c and "--iterations=1200" in c for c in commands) == 1
    assert sum(" evaluating " in c for c in commands) == 2 * 2  # (mean teacher, DuSSS) x (with and without flip TTA)
