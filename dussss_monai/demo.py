"""The end-to-end demo behind ``make demo``: the whole DuSSS pipeline on the embedded generated data.

Steps (each is the same ``python -m monai.bundle`` command a user would type, printed before it runs):

1. generate the QaTa-COV19-like demo dataset (skipped when already there);
2. stage 1: pre-train the vision-language model (``configs/pretrain.json``);
3. stage 2: train DuSSS, the plain mean teacher and the supervised-only baseline with the same seed,
   labeled ratio and number of iterations (``configs/train.json --method ...``);
4. evaluate each student on the validation split (``configs/evaluate.json``);
5. write ``report.md`` with the three validation Dice scores side by side.

The network and image sizes are reduced so that the whole demo runs in a few minutes on two CPU
cores; the bundle defaults (224 px, ViT-B/16, a U-Net of 6.5 M parameters) are what a GPU run uses.

Usage::

    python -m dussss_monai.demo --workdir runs/demo [--epochs 8] [--pretrain_epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from dussss_monai.errors import DuSSSError
from dussss_monai.utils.io import atomic_write_text

__all__ = ["main", "DEMO_OVERRIDES", "run_bundle", "bundle_command"]

BUNDLE = Path("bundles") / "dussss_qata_cov19"

#: Settings that make the demo fit a few CPU minutes (every other setting is the bundle default).
DEMO_OVERRIDES: dict[str, object] = {
    "image_size": 64,
    "batch_size": 16,
    "num_workers": 0,
    "image_encoder": "conv",
    "conv_channels": [16, 32, 64],
    "conv_hidden_size": 64,
    "embed_dim": 64,
    "decoder_channels": 32,
    "text_max_length": 32,
}

#: Stage-1 settings of the demo (a small convolutional image encoder trained from scratch).
PRETRAIN_OVERRIDES: dict[str, object] = {"batch_size": 32, "learning_rate": 0.001}

#: Stage-2 settings of the demo (a small U-Net).
TRAIN_OVERRIDES: dict[str, object] = {
    "unet_channels": [16, 32, 64, 128],
    "unet_strides": [2, 2, 2],
    "learning_rate": 0.003,
    "min_learning_rate": 0.0003,
    # 240 steps in all: a teacher averaging ~100 steps (0.99) lags the student too far behind
    # (docs/benchmarks.md: mean teacher 60.5 -> 71.2 validation Dice at seed 0)
    "ema_decay": 0.9,
}

METHOD_TITLES = {"dussss": "DuSSS", "mean_teacher": "Mean teacher", "supervised": "Supervised only"}


def _arg(value: object) -> str:
    """Format an override for ``python -m monai.bundle`` (python-fire parses the value).

    ``None`` becomes the config expression ``$None``: a plain ``None`` would be dropped by ``monai.bundle``."""
    if value is None:
        return "$None"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value).replace(" ", "")
    return str(value)


def bundle_command(config: Path, run_id: str, overrides: Mapping[str, object]) -> list[str]:
    """The argument list of ``python -m monai.bundle run <run_id> --config_file <config> --key value ...``.

    Args:
        config: the bundle config file.
        run_id: the workflow to run (``training``, ``evaluating`` ...).
        overrides: command-line overrides; lists and dicts are passed as compact JSON.

    Returns:
        the command, starting with this interpreter (``sys.executable``).
    """
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(config)]
    for key, value in overrides.items():
        cmd += [f"--{key}", _arg(value)]
    return cmd


def run_bundle(
    config: Path, run_id: str, overrides: dict[str, object], log_file: Path, env: dict[str, str] | None = None
) -> float:
    """Run one bundle workflow in a subprocess, printing the command and teeing its output to ``log_file``.

    Returns:
        the wall time in seconds.

    Raises:
        DuSSSError: when the workflow fails; the message names the log file and shows its last lines.
    """
    cmd = bundle_command(config, run_id, overrides)
    print("$ " + " ".join(cmd[1:]), flush=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if _is_progress(line):
                print("    " + line.rstrip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise DuSSSError(f"'{run_id}' with {config} failed (exit {rc}); full log: {log_file}\n" + "\n".join(tail))
    return time.time() - start


def _is_progress(line: str) -> bool:
    """Lines worth echoing to the console: per-epoch validation results and key messages."""
    return ("Metrics --" in line and ("val_mean_dice" in line or "recall_at_1" in line)) or "Error" in line


def _read_summary(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DuSSSError(f"evaluation summary {path} is missing or unreadable: {e}") from e


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo", help="where models, logs and the report go")
    parser.add_argument("--dataset_dir", default="demo_data/qata_cov19", help="where the demo data is generated")
    parser.add_argument("--pretrain_epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=30, help="stage-2 epochs, the same for every method")
    parser.add_argument("--labeled_ratio", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="dussss,mean_teacher,supervised")
    args = parser.parse_args(argv)

    try:
        return _run(args)
    except DuSSSError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from dussss_monai.data import generate_demo_dataset

    t0 = time.time()
    work = Path(args.workdir).resolve()
    data = Path(args.dataset_dir).resolve()
    print(f"[1/4] demo data -> {data}", flush=True)
    generate_demo_dataset(data, seed=args.seed)

    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    common = {**DEMO_OVERRIDES, "dataset_dir": str(data), "seed": args.seed, "bundle_root": str(work)}
    vlm_ckpt = work / "models" / "vlm.pt"

    print("[2/4] stage 1: vision-language pre-training", flush=True)
    run_bundle(
        BUNDLE / "configs" / "pretrain.json",
        "training",
        {**common, **PRETRAIN_OVERRIDES, "max_epochs": args.pretrain_epochs, "ckpt_dir": str(work / "models"), "log_iterations": False},
        work / "logs" / "pretrain.log",
        env,
    )

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results: dict[str, dict] = {}
    for i, method in enumerate(methods):
        print(f"[3/4] stage 2 ({i + 1}/{len(methods)}): {METHOD_TITLES.get(method, method)}", flush=True)
        ckpt_dir = work / method / "models"
        run_bundle(
            BUNDLE / "configs" / "train.json",
            "training",
            {
                **common,
                **TRAIN_OVERRIDES,
                "method": method,
                "labeled_ratio": args.labeled_ratio,
                "max_epochs": args.epochs,
                "ckpt_dir": str(ckpt_dir),
                "vlm_checkpoint": str(vlm_ckpt),
                "output_dir": str(work / method / "run"),
                "log_iterations": False,
            },
            work / "logs" / f"train_{method}.log",
            env,
        )
        print(f"[4/4] evaluating {METHOD_TITLES.get(method, method)} on the validation split", flush=True)
        eval_dir = work / method / "eval"
        run_bundle(
            BUNDLE / "configs" / "evaluate.json",
            "evaluating",
            {
                **{k: v for k, v in common.items() if k in ("dataset_dir", "bundle_root", "image_size")},
                "unet_channels": TRAIN_OVERRIDES["unet_channels"],
                "unet_strides": TRAIN_OVERRIDES["unet_strides"],
                "ckpt_dir": str(ckpt_dir),
                "output_dir": str(eval_dir),
                "split": "validation",
            },
            work / "logs" / f"evaluate_{method}.log",
            env,
        )
        results[method] = _read_summary(eval_dir / "summary.json")

    report = _report(results, args, time.time() - t0, work)
    path = atomic_write_text(work / "report.md", report)
    print("\n" + report, flush=True)
    print(f"Outputs: models in {work}/<method>/models, per-image metrics and overlays in {work}/<method>/eval,")
    print(f"logs in {work}/logs, TensorBoard logs in {work}/<method>/run. Report: {path}")
    return 0


def _report(results: dict[str, dict], args: argparse.Namespace, seconds: float, work: Path) -> str:
    lines = [
        "# DuSSS demo report",
        "",
        f"Generated QaTa-COV19-like data, {int(args.labeled_ratio * 100)} % of the training masks used, seed {args.seed}, "
        f"{args.pretrain_epochs} stage-1 epochs, {args.epochs} stage-2 epochs for every method, "
        f"image size {DEMO_OVERRIDES['image_size']} (CPU demo settings). Total time {seconds / 60:.1f} min.",
        "",
        "| method | validation Dice | validation IoU | images |",
        "|---|---|---|---|",
    ]
    for method, s in results.items():
        lines.append(
            f"| {METHOD_TITLES.get(method, method)} | {100 * s['mean_dice']:.2f} ± {100 * s.get('std_dice', 0):.2f} "
            f"| {100 * s['mean_iou']:.2f} | {s.get('n', '?')} |"
        )
    lines += [
        "",
        "The ± is the spread over the validation images. Over seeds 0-2 the three methods differ by less than "
        "their seed-to-seed spread (about 2 Dice points) on this data: see docs/benchmarks.md before reading "
        "a ranking into one run.",
        "",
        f"Per-image metrics: `{work}/<method>/eval/per_image_metrics.csv`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
