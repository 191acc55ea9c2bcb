"""``configs/multi_gpu_train.json`` merged over ``train.json``: two processes (gloo on CPU) under ``torchrun``.

A probe (``ddp_probe.py``, merged as a third config file) records what each rank saw. Checked: the ranks get
disjoint shards that together cover the labeled and the unlabeled images in every epoch (and the validation
images), both ranks compute the same validation metric (so ``EarlyStopHandler`` decides alike and no rank waits
forever), student, teacher and grounding decoder stay identical on both ranks, the teacher is a plain U-Net (a
copy of ``network.module``, not of the DDP wrapper), and ``models/model.pt`` and the training checkpoint hold
plain state dicts without ``module.`` prefixes. DuSSS is used (it has every stream and f_g); its stage-1 model
is a random VLM of the same tiny settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "bundles" / "dussss_qata_cov19" / "configs"
TINY = {
    "image_size": "32",
    "num_workers": "0",
    "vit_patch_size": "8",
    "vit_hidden_size": "32",
    "vit_mlp_dim": "64",
    "vit_num_layers": "1",
    "vit_num_heads": "2",
    "embed_dim": "16",
    "text_max_length": "16",
    "decoder_channels": "8",
    "unet_channels": "[4,8]",
    "unet_strides": "[2]",
}

pytestmark = pytest.mark.slow


def _tiny_unet(in_channels: int = 1):
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        channels=(4, 8),
        strides=(2,),
        num_res_units=2,
        norm="batch",
    )


def _random_stage1_model(path: Path) -> None:
    """Save a random VLM built from train.json's ``vlm_def`` with the tiny settings (stands in for stage 1)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    for k, v in TINY.items():
        parser[k] = json.loads(v)
    torch.manual_seed(0)
    vlm = parser.get_parsed_content("vlm_def")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vlm.state_dict(), path)


def test_two_process_training_shards_and_stays_in_sync(tmp_path):
    from dussss_monai.data import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", n_train=16, n_val=5, n_test=0, image_size=48, seed=0)
    root = tmp_path / "bundle"
    _random_stage1_model(root / "models" / "vlm.pt")
    probe = tmp_path / "probe.json"
    # `run training` runs the `training` list: the probe is attached first, then multi_gpu_train.json's list
    training = json.loads((CONFIGS / "multi_gpu_train.json").read_text())["training"]
    probe_component = {
        "_target_": "ddp_probe.attach",
        "trainer": "@train#trainer",
        "evaluator": "@validate#evaluator",
        "out_dir": "@output_dir",
    }
    probe.write_text(json.dumps({"training": [probe_component, *training]}))
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(probe)]
    overrides = {
        **TINY,
        "dataset_dir": str(data),
        "bundle_root": str(root),
        "max_epochs": "2",
        "labeled_ratio": "0.5",
        "batch_size": "2",
        "log_iterations": "False",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        repr(files),
    ]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)]),
    )
    start = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    elapsed = time.monotonic() - start
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]

    run_dir = root / "runs" / "dussss_ratio0.5_seed0"
    probes = [json.loads((run_dir / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    split = json.loads((run_dir / "split_ratio0.5_seed0.json").read_text())
    datalist = json.loads((run_dir / "datalist.json").read_text())
    labeled = {d["name"] for d in split["labeled"]}
    unlabeled = {d["name"] for d in split["unlabeled"]}
    validation = {d["name"] for d in datalist["validation"]}
    assert len(labeled) == len(unlabeled) == 8 and len(validation) == 5

    for p in probes:
        assert p["world_size"] == 2 and p["network_type"] == "DistributedDataParallel"
        assert p["teacher_type"] == "UNet"  # a copy of network.module, not of the wrapper
        assert p["iterations"] == 2 * 2  # 8 images / 2 ranks / batch 2 = 2 iterations, 2 epochs
    for epoch in range(2):
        for stream, expected in (("labeled", labeled), ("unlabeled", unlabeled), ("validation", validation)):
            a, b = (set(p[stream][epoch]) for p in probes)
            assert len(probes[0][stream][epoch]) == len(a) and len(probes[1][stream][epoch]) == len(b), stream
            assert not a & b, f"epoch {epoch}: both ranks saw {sorted(a & b)} ({stream})"
            assert a | b == expected, f"epoch {epoch}: {stream} not covered"
    # one metric over all validation images, the same on both ranks
    assert probes[0]["val_metric"] == pytest.approx(probes[1]["val_metric"], abs=1e-7)
    assert len(probes[0]["val_metric"]) == 2
    for part in ("student", "teacher", "grounding_decoder"):
        assert probes[0][part] is not None
        assert probes[0][part] == pytest.approx(probes[1][part], rel=1e-6, abs=1e-6), part

    # the best model is a plain U-Net state dict (no DDP prefix), written once
    state = torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    _tiny_unet().load_state_dict(state, strict=True)
    final = torch.load(run_dir / "checkpoints" / "training_final.pt", map_location="cpu", weights_only=True)
    assert {"network", "teacher", "grounding_decoder", "optimizer", "decoder_optimizer", "trainer"} <= set(final)
    _tiny_unet().load_state_dict(final["network"], strict=True)
    _tiny_unet().load_state_dict(final["teacher"], strict=True)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["world_size"] == 2 and record["status"] == "finished" and len(record["attempts"]) == 1
    print(f"two-process training took {elapsed:.1f} s")
