"""The text benchmark of issue 40: generated QaTa-COV19-like chest X-rays at a realistic scale, with distractors
that the sentence, and not the image alone, tells from infections (docs/notebook/2026-12-06_text_benchmark.md).

1. The data (``DATA``): 600 training, 100 validation and 200 test images of 224 px at the ``text_benchmark``
   difficulty of ``dussss_monai.data.demo``, generated once (skipped when ``--dataset_dir`` holds them).
2. Stage 1 of the QaTa-COV19 bundle once (``configs/pretrain.json``, ``--stage1_seed``): it reads every training
   image with its sentence and no mask, so one model serves every seed.
3. For each seed of ``--seeds``: stage 2 of each method on 25 % of the training masks (the seed draws the labeled
   split and the initialisation, the same for every method), then ``evaluate.json`` on the validation and the test
   images (the student of the best validation epoch). ``dussss_rotated`` is DuSSS with every unlabeled image
   grounded with its neighbour's sentence (``--rotate_texts True``).
4. ``results.json`` (every run, with wall times) and ``results.md`` (Dice per seed, mean ± sd, paired gaps) in
   ``--workdir``; with ``--diagnose``, ``diagnostic.json`` and a table of each DuSSS run's pseudo labels on its
   unlabeled images (teacher, f_g's text mask, merged, merged with another image's sentence): Dice, the share of
   lesion pixels found and of distractor and background pixels marked. Finished runs (``result.json``) are reused, so a stopped benchmark continues where it stopped.

The CPU settings (``COMMON``, ``STAGE1``, ``STAGE2``) are the demo's recipe (``scripts/demo.py``) at 96 px with 20
epochs of 29 steps. Estimated from one-epoch runs with one thread (docs/notebook/2026-12-06_text_benchmark.md): a
DuSSS run, or its control, 23 min with one thread and 13-16 min on two cores; the mean teacher 6 (3-4), supervised
training 3 (2), stage 1 6 (3-4); a seed of all four methods about 55 min with one thread. ``--dry_run`` prints
every command and runs nothing.

Usage::

    python benchmarks/text_benchmark.py --workdir runs/text_benchmark --seeds 0,1,2 [--dry_run]
        [--methods supervised,mean_teacher,dussss,dussss_rotated] [--extra KEY=VALUE] [--stage1_extra KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bundle_runner import bundle_command, parse_extra, run_bundle, training_configs  # noqa: E402

from dussss_monai.errors import DuSSSError  # noqa: E402
from dussss_monai.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

BUNDLE = REPO / "bundles" / "dussss_qata_cov19"
CONFIGS = BUNDLE / "configs"
SPLITS = ("validation", "test")

#: the benchmark's data: fixed, so that every run of the benchmark scores the same images
DATA: dict[str, Any] = {
    "n_train": 600, "n_val": 100, "n_test": 200, "image_size": 224, "seed": 0, "difficulty": "text_benchmark",
}  # fmt: skip
LABELED_RATIO = 0.25
#: settings of both stages on a CPU: the demo's (scripts/demo.py) at 96 px
COMMON: dict[str, Any] = {
    "image_size": 96, "batch_size": 16, "num_workers": 0, "image_encoder": "conv", "conv_channels": [16, 32, 64],
    "conv_hidden_size": 64, "embed_dim": 64, "text_max_length": 32,
}  # fmt: skip
STAGE1: dict[str, Any] = {"batch_size": 32, "learning_rate": 0.001, "max_epochs": 30}
STAGE2: dict[str, Any] = {
    "max_epochs": 20, "decoder_channels": 32, "unet_channels": [16, 32, 64, 128], "unet_strides": [2, 2, 2],
    "learning_rate": 0.003, "min_learning_rate": 0.0003, "ema_decay": 0.9, "decoder_image_skip_channels": 16,
    "text_logit_scale_init": 10.0, "text_logit_scale_max": 10.0,
}  # fmt: skip
METHODS = ("supervised", "mean_teacher", "dussss", "dussss_rotated")
TITLES = {
    "supervised": "supervised",
    "mean_teacher": "mean teacher",
    "dussss": "DuSSS",
    "dussss_rotated": "DuSSS, rotated sentences (control)",
}
#: the paired comparisons of the table: (method, against)
GAPS = (("dussss", "mean_teacher"), ("dussss", "dussss_rotated"), ("mean_teacher", "supervised"))


@dataclass(frozen=True)
class MethodRun:
    """How the bundle trains one method.

    Attributes:
        configs: the training config files, merged in order: ``train.json`` and the method's layer (evaluation
            appends ``evaluate.json``).
        overrides: settings the method adds (the control's ``rotate_texts``).
        reads_text: whether the method needs the stage-1 model.
    """

    configs: tuple[Path, ...]
    overrides: dict[str, Any]
    reads_text: bool = False


def method_run(name: str) -> MethodRun:
    """The bundle's way of running method ``name``: its config layer over ``train.json`` (DuSSS has none).

    Raises:
        DuSSSError: an unknown method.
    """
    if name not in METHODS:
        raise DuSSSError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if name == "dussss_rotated":
        return MethodRun(tuple(training_configs(CONFIGS, "dussss")), {"rotate_texts": True}, reads_text=True)
    return MethodRun(tuple(training_configs(CONFIGS, name)), {}, reads_text=name == "dussss")


class Runner:
    """Runs bundle commands, or only prints them (``dry_run``)."""

    def __init__(self, env: dict[str, str], dry_run: bool) -> None:
        self.env = env
        self.dry_run = dry_run

    def __call__(self, configs: Sequence[Path], run_id: str, overrides: dict[str, Any], log: Path) -> float:
        """Run one workflow; returns its wall time in seconds (0 in a dry run)."""
        config: Path | list[Path] = configs[0] if len(configs) == 1 else list(configs)
        if self.dry_run:
            print("$ python " + shlex.join(bundle_command(config, run_id, overrides)[1:]), flush=True)
            return 0.0
        return run_bundle(config, run_id, overrides, log, self.env, echo=False)


def ensure_data(dataset_dir: Path, dry_run: bool) -> None:
    """Generate the benchmark's data unless ``dataset_dir`` holds it (a dry run only says what it would do)."""
    if dry_run:
        print(f"# data: generate_demo_dataset({str(dataset_dir)!r}, **{DATA}) unless already there", flush=True)
        return
    from dussss_monai.data.demo import generate_demo_dataset

    start = time.time()
    generate_demo_dataset(dataset_dir, **DATA)
    print(f"data ready in {dataset_dir} ({time.time() - start:.0f} s)", flush=True)


def ensure_stage1(args: argparse.Namespace, run: Runner) -> Path:
    """The shared stage-1 model (trained once)."""
    folder = Path(args.workdir) / "stage1"
    vlm = folder / "models" / "vlm.pt"
    if vlm.is_file() and (folder / "stage1.json").is_file():
        return vlm
    settings = {**COMMON, **STAGE1, "dataset_dir": str(args.dataset_dir), "bundle_root": str(folder),
                "seed": args.stage1_seed, "ckpt_dir": str(folder / "models"), "log_iterations": False,
                **parse_extra(args.stage1_extra)}  # fmt: skip
    seconds = run((CONFIGS / "pretrain.json",), "training", settings, folder / "pretrain.log")
    if not run.dry_run:
        atomic_write_json(folder / "stage1.json", {"seconds": round(seconds, 1)})
    return vlm


def run_method(name: str, seed: int, args: argparse.Namespace, vlm: Path | None, run: Runner) -> dict[str, Any] | None:
    """Stage 2 of one method and seed, then its evaluation on the validation and test images.

    Returns:
        ``{"validation": summary, "test": summary, "train_seconds": ...}``, or ``None`` in a dry run.
    """
    folder = Path(args.workdir) / f"seed{seed}" / name
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    how = method_run(name)
    settings = {**COMMON, **STAGE2, **how.overrides, "dataset_dir": str(args.dataset_dir), "seed": seed,
                "labeled_ratio": LABELED_RATIO, "bundle_root": str(folder), "ckpt_dir": str(folder / "models"),
                "output_dir": str(folder / "run"), **parse_extra(args.extra)}  # fmt: skip
    if how.reads_text:
        if vlm is None:
            raise DuSSSError(f"{name} needs the stage-1 model")
        settings["vlm_checkpoint"] = str(vlm)
    seconds = run(how.configs, "training", {**settings, "log_iterations": False}, folder / "train.log")
    evaluate = (*how.configs, CONFIGS / "evaluate.json")
    for split in SPLITS:
        overrides = {**settings, "split": split, "eval_dir": str(folder / f"eval_{split}")}
        run(evaluate, "evaluating", overrides, folder / f"evaluate_{split}.log")
    if run.dry_run:
        return None
    result: dict[str, Any] = {"train_seconds": round(seconds, 1)}
    for split in SPLITS:
        result[split] = json.loads((folder / f"eval_{split}" / "summary.json").read_text(encoding="utf-8"))
    atomic_write_json(done, result)
    return result


def diagnose(folder: Path, dataset_dir: Path) -> dict[str, dict[str, float]]:
    """The pseudo-label diagnostic of one DuSSS run: each target of the text check on the run's unlabeled images
    (whose masks the generator wrote), split by region with the distractor masks rendered again.

    Returns:
        ``{target: {"dice", "lesion_found_pct", "distractor_marked_pct", "background_marked_pct"}}`` (%), pooled
        over the unlabeled images at the network's size; ``target`` as in ``text_check.TARGETS``.
    """
    import torch
    import torch.nn.functional as F

    from dussss_monai.bundle import text_check
    from dussss_monai.data.demo import regenerate_sample

    parser = text_check.load_run(folder / "run")
    checkpoint = Path(parser.get_parsed_content("checkpoint_dir")) / "training_final.pt"
    teacher, refiner = text_check.load_trained(parser, checkpoint)
    samples = text_check.check_samples(parser, "unlabeled", 1, 0)
    masks = text_check.pseudo_label_masks(teacher, refiner, samples)
    counts = {
        name: dict.fromkeys(("tp", "p", "lesion", "distractor", "background"), 0.0) for name in text_check.TARGETS
    }
    totals = dict.fromkeys(("truth", "distractor", "background"), 0.0)
    for sample, m in zip(samples, masks):
        rendered = torch.from_numpy(regenerate_sample(dataset_dir, str(sample["name"])).distractor_mask)
        distractor = F.interpolate(rendered[None, None].float(), size=m.truth.shape[-2:], mode="nearest")[0] > 0.5
        distractor &= ~m.truth
        background = ~(m.truth | distractor)
        totals["truth"] += float(m.truth.sum())
        totals["distractor"] += float(distractor.sum())
        totals["background"] += float(background.sum())
        for name in text_check.TARGETS:
            marked = getattr(m, name)
            c = counts[name]
            c["tp"] += float((marked & m.truth).sum())
            c["p"] += float(marked.sum())
            c["distractor"] += float((marked & distractor).sum())
            c["background"] += float((marked & background).sum())
    return {
        name: {
            "dice": 200.0 * c["tp"] / max(c["p"] + totals["truth"], 1.0),
            "lesion_found_pct": 100.0 * c["tp"] / max(totals["truth"], 1.0),
            "distractor_marked_pct": 100.0 * c["distractor"] / max(totals["distractor"], 1.0),
            "background_marked_pct": 100.0 * c["background"] / max(totals["background"], 1.0),
        }
        for name, c in counts.items()
    }


def diagnostic_report(figures: dict[int, dict[str, dict[str, dict[str, float]]]]) -> str:
    """The diagnostic's table: one row per run and target (``figures[seed][method][target]``)."""
    lines = [
        "| seed | run | target | Dice | lesion pixels found | distractor pixels marked | background marked |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, runs in sorted(figures.items()):
        for method, targets in runs.items():
            for target, f in targets.items():
                lines.append(
                    f"| {seed} | {TITLES[method]} | {target} | {f['dice']:.2f} | {f['lesion_found_pct']:.1f} % | "
                    f"{f['distractor_marked_pct']:.1f} % | {f['background_marked_pct']:.2f} % |"
                )
    return "\n".join(lines) + "\n"


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def report(results: dict[str, dict[int, dict]], seeds: Sequence[int], command: str) -> str:
    """``results.md``: Dice (%) per seed on validation and test, mean ± sd, training time, paired gaps."""
    lines = [
        "# Text benchmark: generated chest X-rays with distractors, 25 % of the masks, Dice (%)",
        "",
        f"Command: `{command}`. Data: {DATA}. Validation chooses the best epoch; test is scored once.",
        "",
        "| method | " + " | ".join(f"val {s}" for s in seeds) + " | val mean ± sd | "
        + " | ".join(f"test {s}" for s in seeds) + " | test mean ± sd | training min |",
        "|---|" + "---|" * (2 * len(seeds) + 3),
    ]  # fmt: skip
    for name, per_seed in results.items():
        cells = []
        for split in SPLITS:
            dice = [100 * per_seed[s][split]["mean_dice"] for s in seeds if s in per_seed]
            cells += [f"{100 * per_seed[s][split]['mean_dice']:.2f}" if s in per_seed else "–" for s in seeds]
            cells.append(_mean_sd(dice))
        minutes = [per_seed[s]["train_seconds"] / 60 for s in seeds if s in per_seed]
        cells.append(f"{statistics.fmean(minutes):.1f}" if minutes else "–")
        lines.append(f"| {TITLES[name]} | " + " | ".join(cells) + " |")
    lines += ["", "Paired gaps (points of Dice; each seed draws the same split and initialisation for both):", ""]
    for upper, lower in GAPS:
        common = [s for s in seeds if s in results.get(upper, {}) and s in results.get(lower, {})]
        if not common:
            continue
        for split in SPLITS:
            gaps = [
                100 * (results[upper][s][split]["mean_dice"] - results[lower][s][split]["mean_dice"]) for s in common
            ]
            lines.append(
                f"- {TITLES[upper]} - {TITLES[lower]}, {split}: {statistics.fmean(gaps):+.2f} "
                f"({', '.join(f'{g:+.2f}' for g in gaps)}), ahead at {sum(g > 0 for g in gaps)} of {len(common)} seed{'s' if len(common) > 1 else ''}"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/text_benchmark", help="where the runs and the table go")
    parser.add_argument("--dataset_dir", default="demo_data/text_benchmark", help="where the data is generated")
    parser.add_argument("--seeds", default="0,1,2", help="stage-2 seeds, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--stage1_seed", type=int, default=0)
    parser.add_argument("--extra", action="append", default=[], help="KEY=VALUE override of stage 2 (repeatable)")
    parser.add_argument("--stage1_extra", action="append", default=[], help="KEY=VALUE override of stage 1")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run and write nothing")
    parser.add_argument(
        "--diagnose", action="store_true", help="after the runs: the pseudo-label diagnostic of every DuSSS run"
    )
    args = parser.parse_args(argv)
    try:
        try:
            seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()))
        except ValueError:
            raise DuSSSError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for name in methods:
            method_run(name)  # an unknown name fails before any work
        parse_extra(args.extra + args.stage1_extra)
        if not seeds or not methods:
            raise DuSSSError("--seeds and --methods must each name at least one")
        args.workdir = str(Path(args.workdir).resolve())
        args.dataset_dir = Path(args.dataset_dir).resolve()
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        run = Runner(env, args.dry_run)
        ensure_data(args.dataset_dir, args.dry_run)
        vlm = ensure_stage1(args, run) if any(method_run(m).reads_text for m in methods) else None
        results: dict[str, dict[int, dict]] = {m: {} for m in methods}
        for seed in seeds:
            for name in methods:
                print(f"== seed {seed}: {name}", flush=True)
                result = run_method(name, seed, args, vlm, run)
                if result is None:
                    continue
                results[name][seed] = result
                print(
                    f"   validation {100 * result['validation']['mean_dice']:.2f}, "
                    f"test {100 * result['test']['mean_dice']:.2f} ({result['train_seconds'] / 60:.1f} min)",
                    flush=True,
                )
                atomic_write_json(Path(args.workdir) / "results.json", results)
        if args.dry_run:
            return 0
        command = "python benchmarks/text_benchmark.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        text = report(results, seeds, command)
        if args.diagnose:
            figures = {
                seed: {m: diagnose(Path(args.workdir) / f"seed{seed}" / m, args.dataset_dir) for m in methods
                       if method_run(m).reads_text and seed in results[m]}
                for seed in seeds
            }  # fmt: skip
            atomic_write_json(Path(args.workdir) / "diagnostic.json", figures)
            text += "\n## Pseudo labels of the unlabeled training images\n\n" + diagnostic_report(figures)
        atomic_write_text(Path(args.workdir) / "results.md", text)
        print(text)
        return 0
    except DuSSSError as e:
        print(f"text_benchmark: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
