"""The MoNuSeg comparison of docs/results.md: the plain MONAI U-Net reference next to the MoNuSeg bundle's
supervised, mean-teacher and DuSSS runs (and DuSSS with rotated sentences), on the same splits, in one session.

For each seed ``s`` of ``--seeds``:

1. the bundle's split of ``--ratio`` and ``s`` is written (``prepare_datalist``, as the bundle itself does);
2. ``--reference`` (the plain U-Net script, when given) trains on that split's labeled tiles (``--split_json``);
3. stage 1 (``configs/pretrain.json``) runs once, at ``--stage1_seed``, for every DuSSS method: it reads all
   training image-sentence pairs and no mask, so one model serves every split;
4. each method runs ``configs/train.json`` with its layer (``configs/mean_teacher.json``, ``configs/supervised.json``)
   and then the same files with ``evaluate.json`` on the validation tiles (the student of the best validation
   epoch); ``dussss_rotated`` is DuSSS with every unlabeled image grounded with its neighbour's sentence
   (``--rotate_texts True``).

Every number is the mean Dice over the 6 validation tiles, the tiles the best epoch is chosen on (the reference
chooses its best evaluation on them too). Finished runs (``eval/summary.json``) are reused. Output in
``--workdir``: ``results.json`` (every run, with wall times) and ``results.md`` (per-seed table, mean ± sd).
``--collect DIR ...`` runs nothing: it merges the ``results.json`` of workdirs run side by side into one table
(written to ``--workdir`` when given). ``--dry_run`` prints the commands instead of running them;
``--stage1_dir`` shares one stage-1 model between workdirs (``--stage1_only`` trains it and stops).

Usage::

    python benchmarks/monuseg_table.py --dataset_dir ../shared/data/monuseg --workdir runs/monuseg_r25 \\
        --ratio 0.25 --seeds 0,1,2 --reference ../shared/reference/plain_unet_monuseg.py
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bundle_runner import parse_extra, run_bundle, training_configs  # noqa: E402

from dussss_monai.errors import DuSSSError  # noqa: E402
from dussss_monai.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

BUNDLE = REPO / "bundles" / "dussss_monuseg"
CONFIGS = BUNDLE / "configs"
DEFAULT_WORKDIR = "runs/monuseg"
#: row name -> (the bundle's method, its settings: the control grounds each image with another image's sentence)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "supervised": ("supervised", {}),
    "mean_teacher": ("mean_teacher", {}),
    "dussss": ("dussss", {}),
    "dussss_rotated": ("dussss", {"rotate_texts": True}),
}
TITLES = {
    "reference": "plain MONAI U-Net (reference)",
    "supervised": "supervised",
    "mean_teacher": "mean teacher",
    "dussss": "DuSSS",
    "dussss_rotated": "DuSSS, rotated sentences (control)",
}


def write_split(dataset_dir: Path, folder: Path, ratio: float, seed: int) -> Path:
    """The bundle's split file of ``ratio`` and ``seed`` (the one its training run writes too)."""
    from dussss_monai.data import prepare_datalist

    prepare_datalist(dataset_dir, folder, labeled_ratio=ratio, seed=seed, channels=3)
    name = f"split_ratio{ratio:g}_seed{seed}.json"
    return folder / name


def run_reference(
    script: Path, split: Path, seed: int, dataset_dir: Path, log: Path, extra: Sequence[str], dry_run: bool = False
) -> dict:
    """Run the reference script on ``split``; returns its final JSON line with the wall time."""
    done = log.with_suffix(".json")
    if done.is_file():
        return json.loads(done.read_text())
    cmd = [sys.executable, str(script), "--dataset_dir", str(dataset_dir), "--split_json", str(split),
           "--seed", str(seed), *extra]  # fmt: skip
    print("$ " + shlex.join(cmd), flush=True)
    if dry_run:
        return {"best_val_dice": float("nan"), "wall_seconds": 0.0}
    start = time.time()
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True).returncode
    lines = log.read_text(encoding="utf-8").strip().splitlines()
    if rc != 0 or not lines:
        raise DuSSSError(f"reference failed (exit {rc}); log: {log}")
    result = json.loads(lines[-1])
    result["wall_seconds"] = round(time.time() - start, 1)
    atomic_write_json(done, result)
    return result


def run_method(name: str, seed: int, args: argparse.Namespace, vlm: Path | None, env: dict[str, str]) -> dict:
    """Stage 2 and evaluation of one method and seed; returns the evaluation summary with the wall times."""
    method, method_settings = METHODS[name]
    folder = Path(args.workdir) / f"seed{seed}" / name
    summary = folder / "eval" / "summary.json"
    if summary.is_file():
        return json.loads((folder / "result.json").read_text())
    settings: dict[str, Any] = {
        "dataset_dir": str(Path(args.dataset_dir).resolve()), "bundle_root": str(folder), "seed": seed,
        "labeled_ratio": args.ratio, "ckpt_dir": str(folder / "models"), **method_settings, **parse_extra(args.extra),
    }  # fmt: skip
    if vlm is not None:
        settings["vlm_checkpoint"] = str(vlm)
    start = time.time()
    run = functools.partial(run_bundle, env=env, dry_run=args.dry_run)
    run(training_configs(CONFIGS, method), "training", {**settings, "output_dir": str(folder / "run")},
        folder / "train.log")  # fmt: skip
    train_seconds = time.time() - start
    layered = training_configs(CONFIGS, method, "evaluate.json")
    evaluation = {**settings, "split": "validation", "output_dir": str(folder / "run")}
    run(layered, "evaluating", {**evaluation, "eval_dir": str(folder / "eval_tta"), "flip_tta": True},
        folder / "evaluate_tta.log")  # fmt: skip
    run(layered, "evaluating", {**evaluation, "eval_dir": str(folder / "eval"), "flip_tta": False},
        folder / "evaluate.log")  # fmt: skip
    if args.dry_run:
        return {"mean_dice": float("nan"), "tta_dice": float("nan"), "train_seconds": 0.0}
    tta = json.loads((folder / "eval_tta" / "summary.json").read_text())
    result = {**json.loads(summary.read_text()), "tta_dice": tta["mean_dice"], "train_seconds": round(train_seconds, 1)}
    atomic_write_json(folder / "result.json", result)
    return result


def ensure_stage1(args: argparse.Namespace, env: dict[str, str]) -> Path:
    """The shared stage-1 model (trained once, in ``--stage1_dir``)."""
    folder = Path(args.stage1_dir or Path(args.workdir) / "stage1")
    vlm = folder / "models" / "vlm.pt"
    if vlm.is_file() and (folder / "stage1.json").is_file():
        return vlm
    settings = {"dataset_dir": str(Path(args.dataset_dir).resolve()), "bundle_root": str(folder),
                "seed": args.stage1_seed, "ckpt_dir": str(folder / "models"), **parse_extra(args.stage1_extra)}  # fmt: skip
    seconds = run_bundle(
        CONFIGS / "pretrain.json", "training", settings, folder / "pretrain.log", env, dry_run=args.dry_run
    )
    if not args.dry_run:
        atomic_write_json(folder / "stage1.json", {"seconds": round(seconds, 1)})
    return vlm


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def report(results: dict[str, dict[int, dict]], args: argparse.Namespace, seeds: Sequence[int]) -> str:
    """``results.md``: Dice (%) per seed, mean ± sd, and the mean wall time of training."""
    lines = [
        f"# MoNuSeg, {args.ratio:g} of the labels, validation Dice (%)",
        "",
        "Command: `python benchmarks/monuseg_table.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | with flip TTA | training time (min) |",
        "|---|" + "---|" * len(seeds) + "---|---|---|",
    ]
    for name, per_seed in results.items():
        dice = [per_seed[s]["dice"] for s in seeds if s in per_seed]
        tta = [100 * per_seed[s]["tta_dice"] for s in seeds if s in per_seed and "tta_dice" in per_seed[s]]
        cells = [f"{per_seed[s]['dice']:.2f}" if s in per_seed else "–" for s in seeds]
        minutes = [per_seed[s]["seconds"] / 60 for s in seeds if s in per_seed and per_seed[s].get("seconds")]
        time_cell = f"{statistics.fmean(minutes):.1f}" if minutes else "–"
        lines.append(
            f"| {TITLES.get(name, name)} | " + " | ".join(cells) + f" | {_cell(dice)} | {_cell(tta)} | {time_cell} |"
        )
    return "\n".join(lines) + "\n"


def collect(args: argparse.Namespace) -> int:
    """Merge the ``results.json`` of several workdirs (e.g. methods run in parallel processes) into one table.

    The table is printed; with ``--workdir`` given, the merged ``results.json`` and ``results.md`` are written
    there too (the workdir is created; the merged folders are only read).

    Returns:
        0, or 1 when one of the folders has no ``results.json`` (nothing is written then).
    """
    merged: dict[str, dict[int, dict]] = {}
    for folder in args.collect:
        path = Path(folder) / "results.json"
        if not path.is_file():
            print(
                f"monuseg_table: no {path}: run this script with --workdir {folder} first, or leave that folder out "
                "of --collect",
                file=sys.stderr,
            )
            return 1
        for name, per_seed in json.loads(path.read_text()).items():
            merged.setdefault(name, {}).update({int(k): v for k, v in per_seed.items()})
    order = ["reference", *METHODS]
    merged = {m: merged[m] for m in sorted(merged, key=lambda m: order.index(m) if m in order else len(order))}
    seeds = sorted({s for per_seed in merged.values() for s in per_seed})
    text = report(merged, args, seeds)
    if args.workdir is not None:  # the atomic writers create the folder and name it when it is not writable
        atomic_write_json(Path(args.workdir) / "results.json", merged)
        atomic_write_text(Path(args.workdir) / "results.md", text)
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "monuseg"))
    parser.add_argument("--workdir", default=None, help=f"where the runs go (default {DEFAULT_WORKDIR})")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="reference,supervised,mean_teacher,dussss,dussss_rotated")
    parser.add_argument("--reference", default=None, help="the plain U-Net script (runs when 'reference' is listed)")
    parser.add_argument("--reference_extra", action="append", default=[], help="an argument of the reference")
    parser.add_argument("--extra", action="append", default=[], help="KEY=VALUE override of stage 2 (repeatable)")
    parser.add_argument("--stage1_extra", action="append", default=[], help="KEY=VALUE override of stage 1")
    parser.add_argument("--stage1_seed", type=int, default=0)
    parser.add_argument("--stage1_dir", default=None, help="the stage-1 folder (default <workdir>/stage1)")
    parser.add_argument("--stage1_only", action="store_true", help="train stage 1 (if missing) and stop")
    parser.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
    parser.add_argument(
        "--collect", nargs="+", default=None,
        help="only merge the results.json of these workdirs (into --workdir when given)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.collect:
            return collect(args)
        args.workdir = args.workdir or DEFAULT_WORKDIR
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m != "reference" and m not in METHODS]
        if unknown:
            raise DuSSSError(f"unknown method(s) {unknown}; choose from reference, {', '.join(METHODS)}")
        if "reference" in methods and not args.reference:
            raise DuSSSError("'reference' is listed but --reference names no script")
        data = Path(args.dataset_dir).resolve()
        if not (data / "Train_Folder").is_dir():
            raise DuSSSError(f"{data} is not a MoNuSeg folder in LViT's layout (no Train_Folder)")
        work = Path(args.workdir).resolve()
        args.workdir = str(work)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        vlm = ensure_stage1(args, env) if args.stage1_only or any(m.startswith("dussss") for m in methods) else None
        if args.stage1_only:
            return 0
        results: dict[str, dict[int, dict]] = {m: {} for m in methods}
        for seed in seeds:
            split = write_split(data, work / f"seed{seed}" / "split", args.ratio, seed)  # also in a dry run: cheap
            for name in methods:
                print(f"== seed {seed}: {name}", flush=True)
                if name == "reference":
                    r = run_reference(Path(args.reference), split, seed, data, work / f"seed{seed}" / "reference.log",
                                      args.reference_extra, args.dry_run)  # fmt: skip
                    results[name][seed] = {"dice": r["best_val_dice"], "seconds": r["wall_seconds"], **r}
                else:
                    r = run_method(name, seed, args, vlm, env)
                    results[name][seed] = {"dice": 100 * r["mean_dice"], "seconds": r["train_seconds"], **r}
                if args.dry_run:
                    continue
                print(f"   {name} seed {seed}: {results[name][seed]['dice']:.2f}", flush=True)
                atomic_write_json(work / "results.json", results)
        if args.dry_run:
            return 0
        text = report(results, args, seeds)
        atomic_write_text(work / "results.md", text)
        print(text)
        return 0
    except DuSSSError as e:
        print(f"monuseg_table: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
