"""The end-to-end demo behind ``make demo``: the whole DuSSS pipeline on the embedded generated data.

Steps (each is the same ``python -m monai.bundle`` command a user would type, printed before it runs):

1. generate the QaTa-COV19-like demo dataset (skipped when already there);
2. stage 1: pre-train the vision-language model (``configs/pretrain.json``);
3. stage 2: train DuSSS, the plain mean teacher and the supervised-only baseline with the same labeled
   ratio and number of iterations (``configs/train.json`` with the method's layer, e.g. ``configs/mean_teacher.json``),
   once per stage-2 seed (``--seeds``,
   default 0; ``--seeds 0,1,2`` for a ranking: the seed draws the labeled split and the initialisation, the same
   for every method);
4. evaluate each student on the validation split (``configs/evaluate.json``);
5. write ``report.md`` with the validation Dice of every method and seed, and the mean and standard deviation
   over the seeds (one seed is not enough to rank methods whose gaps are smaller than the seed-to-seed spread).

The network and image sizes are reduced so that the whole demo runs in a few minutes on two CPU
cores; the bundle defaults (224 px, ViT-B/16, a U-Net of 6.5 M parameters) are what a GPU run uses.

Usage (from any directory)::

    python scripts/demo.py --workdir runs/demo [--epochs 8] [--pretrain_epochs 6] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_runner import BUNDLES_DIR, run_bundle, training_configs  # noqa: E402

from dussss_monai.errors import DuSSSError  # noqa: E402
from dussss_monai.utils.io import atomic_write_text  # noqa: E402

__all__ = ["main", "DEMO_OVERRIDES", "PRETRAIN_OVERRIDES", "TRAIN_OVERRIDES"]

BUNDLE = BUNDLES_DIR / "dussss_qata_cov19"

#: Settings that make the demo fit a few CPU minutes (every other setting is the bundle default).
DEMO_OVERRIDES: dict[str, object] = {
    "image_size": 64,
    "batch_size": 16,
    "num_workers": 0,
    "image_encoder": "conv",
    "conv_channels": [16, 32, 64],
    "conv_hidden_size": 64,
    "embed_dim": 64,
    "text_max_length": 32,
}

#: Stage-1 settings of the demo (a small convolutional image encoder trained from scratch).
PRETRAIN_OVERRIDES: dict[str, object] = {"batch_size": 32, "learning_rate": 0.001}

#: Stage-2 settings of the demo (a small U-Net).
TRAIN_OVERRIDES: dict[str, object] = {
    "decoder_channels": 32,
    "unet_channels": [16, 32, 64, 128],
    "unet_strides": [2, 2, 2],
    "learning_rate": 0.003,
    "min_learning_rate": 0.0003,
    # about 200 steps in all: a teacher averaging ~100 steps (0.99) lags the student too far behind
    # (docs/notebook/2026-11-27_benchmarks.md: mean teacher 60.5 -> 71.2 validation Dice at seed 0)
    "ema_decay": 0.9,
    # f_g reads the image as well as the 8 x 8 patch tokens (its mask Dice 21 -> 65 when trained alone), so
    # its logits may be confident: DuSSS 70.11 -> 72.33 over seeds 0-2 (docs/notebook/2026-11-27_benchmarks.md, "A grounding
    # decoder that sees the image")
    "decoder_image_skip_channels": 16,
    "text_logit_scale_init": 10.0,
    "text_logit_scale_max": 10.0,
}

METHOD_TITLES = {"dussss": "DuSSS", "mean_teacher": "Mean teacher", "supervised": "Supervised only"}


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
    parser.add_argument("--pretrain_epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=24, help="stage-2 epochs, the same for every method")
    parser.add_argument("--labeled_ratio", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and of stage 1")
    parser.add_argument(
        "--seeds",
        default="0",
        help="stage-2 seeds, comma-separated; every method runs at each (0,1,2 to rank the methods: about 3x the time)",
    )
    parser.add_argument("--methods", default="dussss,mean_teacher,supervised")
    args = parser.parse_args(argv)

    try:
        args.seeds = _seed_list(args.seeds)  # before any work: a typo must not cost a stage-1 run
        return _run(args)
    except DuSSSError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from dussss_monai.data import generate_demo_dataset

    t0 = time.time()
    work = Path(args.workdir).resolve()
    data = Path(args.dataset_dir).resolve()
    print(f"[1/3] demo data -> {data}", flush=True)
    generate_demo_dataset(data, seed=args.seed)

    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    common = {**DEMO_OVERRIDES, "dataset_dir": str(data), "seed": args.seed, "bundle_root": str(work)}
    vlm_ckpt = work / "models" / "vlm.pt"

    print("[2/3] stage 1: vision-language pre-training", flush=True)
    # the demo owns its work folder: each run starts afresh (a bundle never replaces a run folder by itself)
    shutil.rmtree(work / "runs" / f"pretrain_seed{args.seed}", ignore_errors=True)
    seconds = run_bundle(
        BUNDLE / "configs" / "pretrain.json",
        "training",
        {
            **common,
            **PRETRAIN_OVERRIDES,
            "max_epochs": args.pretrain_epochs,
            "ckpt_dir": str(work / "models"),
            "log_iterations": False,
        },
        work / "logs" / "pretrain.log",
        env,
        echo=False,
    )
    print(f"    stage 1 done ({seconds:.0f} s)", flush=True)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = args.seeds
    results: dict[str, dict[int, dict]] = {m: {} for m in methods}
    runs = [(seed, method) for seed in seeds for method in methods]
    print(f"[3/3] stage 2: {len(methods)} methods x {len(seeds)} seeds, each trained and evaluated", flush=True)
    durations: dict[str, list[float]] = {m: [] for m in methods}
    for i, (seed, method) in enumerate(runs):
        title = f"{METHOD_TITLES.get(method, method)}, seed {seed}"
        started = time.time()
        run_dir = work / method / f"seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        settings = {
            **common,
            **TRAIN_OVERRIDES,
            "seed": seed,
            "labeled_ratio": args.labeled_ratio,
            "max_epochs": args.epochs,
            "ckpt_dir": str(run_dir / "models"),
            "vlm_checkpoint": str(vlm_ckpt),
        }
        run_bundle(
            training_configs(BUNDLE / "configs", method),
            "training",
            {**settings, "output_dir": str(run_dir / "run"), "log_iterations": False},
            work / "logs" / f"train_{method}_seed{seed}.log",
            env,
            echo=False,
        )
        eval_dir = run_dir / "eval"
        run_bundle(
            training_configs(BUNDLE / "configs", method, "evaluate.json"),
            "evaluating",
            {**settings, "output_dir": str(run_dir / "run"), "eval_dir": str(eval_dir), "split": "validation"},
            work / "logs" / f"evaluate_{method}_seed{seed}.log",
            env,
            echo=False,
        )
        results[method][seed] = _read_summary(eval_dir / "summary.json")
        durations[method].append(time.time() - started)
        left = _time_left(durations, runs[i + 1 :])
        print(
            f"    ({i + 1}/{len(runs)}) {title}: validation Dice {100 * results[method][seed]['mean_dice']:.2f} "
            f"({durations[method][-1]:.0f} s)" + (f"; about {left / 60:.1f} min left" if i + 1 < len(runs) else ""),
            flush=True,
        )

    report = _report(results, args, time.time() - t0, work)
    path = atomic_write_text(work / "report.md", report)
    print("\n" + report, flush=True)
    run = f"{work}/<method>/seed<s>"
    print(f"Outputs: models in {run}/models, per-image metrics and overlays in {run}/eval,")
    print(f"logs in {work}/logs, TensorBoard logs in {run}/run. Report: {path}")
    return 0


def _time_left(durations: dict[str, list[float]], remaining: Sequence[tuple[int, str]]) -> float:
    """Seconds the ``remaining`` (seed, method) runs will take, at each method's mean duration so far (the mean of
    every finished run for a method not yet run)."""
    done = [d for ds in durations.values() for d in ds]
    overall = statistics.fmean(done) if done else 0.0
    return sum(statistics.fmean(durations[m]) if durations.get(m) else overall for _, m in remaining)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DuSSSError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds:
        raise DuSSSError("--seeds is empty")
    return list(dict.fromkeys(seeds))


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _paired_gaps(results: dict[str, dict[int, dict]], ranking: Sequence[str]) -> list[str]:
    """One line per neighbouring pair of ``ranking``: the mean Dice gap over the seeds both ran, and at how many
    of those seeds the higher-ranked method is ahead (a paired comparison: each seed draws the same labeled split
    and initialisation for every method)."""
    lines = []
    for upper, lower in zip(ranking, ranking[1:]):
        seeds = sorted(set(results[upper]) & set(results[lower]))
        if not seeds:
            continue
        gaps = [100 * (results[upper][s]["mean_dice"] - results[lower][s]["mean_dice"]) for s in seeds]
        ahead = sum(g > 0 for g in gaps)
        lines.append(
            f"- {METHOD_TITLES.get(upper, upper)} - {METHOD_TITLES.get(lower, lower)}: {statistics.fmean(gaps):+.2f} "
            f"points on average, ahead at {ahead} of {len(seeds)} seed{'s' if len(seeds) > 1 else ''}."
        )
    return lines


def _report(results: dict[str, dict[int, dict]], args: argparse.Namespace, seconds: float, work: Path) -> str:
    """``report.md``: validation Dice of every method at every stage-2 seed, with the mean ± sd over seeds.

    Args:
        results: ``{method: {seed: evaluation summary}}`` (``mean_dice``, ``mean_iou``, ``n`` as fractions).
        args: the demo's command line (ratio, epochs, data seed).
        seconds: the wall time of the whole demo.
        work: the work folder (named in the report).

    Returns:
        the report as Markdown.
    """
    seeds = sorted({seed for per_seed in results.values() for seed in per_seed})
    lines = [
        "# DuSSS demo report",
        "",
        f"Generated QaTa-COV19-like data (data and stage-1 seed {args.seed}), {int(args.labeled_ratio * 100)} % of the "
        f"training masks used, {args.pretrain_epochs} stage-1 epochs, {args.epochs} stage-2 epochs for every method, "
        f"image size {DEMO_OVERRIDES['image_size']} (CPU demo settings). Stage-2 seeds {', '.join(map(str, seeds))} "
        f"(each draws the labeled split and the initialisation, the same for every method). Total time "
        f"{seconds / 60:.1f} min.",
        "",
        "Validation Dice (%) of the student, MONAI mean Dice over the validation images:",
        "",
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd over seeds | mean IoU | images |",
        "|---|" + "---|" * len(seeds) + "---|---|---|",
    ]
    means: dict[str, float] = {}
    for method, per_seed in results.items():
        if not per_seed:
            continue
        dice = [100 * per_seed[s]["mean_dice"] for s in seeds if s in per_seed]
        iou = [100 * per_seed[s]["mean_iou"] for s in seeds if s in per_seed]
        mean, sd = _mean_sd(dice)
        means[method] = mean
        cells = [f"{100 * per_seed[s]['mean_dice']:.2f}" if s in per_seed else "–" for s in seeds]
        n = {per_seed[s].get("n", "?") for s in per_seed}
        lines.append(
            f"| {METHOD_TITLES.get(method, method)} | "
            + " | ".join(cells)
            + f" | {mean:.2f}"
            + (f" ± {sd:.2f}" if sd is not None else "")
            + f" | {_mean_sd(iou)[0]:.2f} | {'/'.join(map(str, sorted(n, key=str)))} |"
        )
    ranking = sorted(means, key=means.get, reverse=True)
    one_seed = (
        [
            "",
            "One seed ranks nothing: the methods' gaps on this data are about the size of the seed-to-seed spread. "
            "`make demo SEEDS=0,1,2` (or `--seeds 0,1,2`) runs three seeds, about three times as long.",
        ]
        if len(seeds) == 1
        else []
    )
    lines += [
        "",
        "Order of the means: " + " > ".join(f"{METHOD_TITLES.get(m, m)} ({means[m]:.2f})" for m in ranking) + ".",
        "",
        *_paired_gaps(results, ranking),
        *one_seed,
        "",
        "A gap smaller than the seed-to-seed spread (the ± above), or one that holds at only some seeds, does not "
        "rank two methods. docs/results.md has MoNuSeg and a control with rotated sentences "
        "(how much of DuSSS's gain comes from the sentence's content).",
        "",
        f"Per-image metrics: `{work}/<method>/seed<s>/eval/per_image_metrics.csv`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
