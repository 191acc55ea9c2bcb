"""MoNuSeg accuracy sweep (issue "Evidence on real data"): DuSSS, its ablations and the baselines over
labeled ratios and seeds, with mean and sample standard deviation, next to the paper's numbers.

Not the script of the current results: ``benchmarks/monuseg_table.py`` runs the bundle's own recipe next to the
plain U-Net reference (docs/results.md). Both budgets below override that recipe with earlier settings (the
demo's small networks at 128 px on CPU; the paper's 224-pixel resize on GPU), which score several points lower
on MoNuSeg (docs/notebook/2026-11-27_benchmarks.md). The script is kept for ``benchmarks/gpu.sh`` and for the
stage-1 ablations (``dussss_no_sss``, ``dussss_no_dcl``); with the current recipe those are
``monuseg_table.py --methods dussss --stage1_extra use_sss=False`` (or ``intra_modal=False``) in a workdir of
their own.

For every labeled ratio ``r`` (``--ratios``), seed ``s`` (``--seeds``) and method (``--methods``) the
MoNuSeg bundle ``bundles/dussss_monuseg`` is run exactly as a user would run it, one
``python -m monai.bundle`` subprocess per step (command printed, output kept in a log file):

1. stage 1, ``configs/pretrain.json`` (run id ``training``): the vision-language model, once per seed and
   per stage-1 variant: ``full`` (used by ``dussss`` and ``dussss_no_tg``), ``no_sss`` (``--use_sss False``,
   used by ``dussss_no_sss``) and ``no_dcl`` (``--intra_modal False``: cross-modal contrast only, i.e.
   without the *dual* part of Dual Contrastive Learning, used by ``dussss_no_dcl``). Stage 1 reads all
   training image-text pairs (no masks), so it does not depend on ``r``; the baselines do not need it;
2. stage 2, ``configs/train.json`` (run id ``training``) with ``--method``, ``--labeled_ratio``, ``--seed``;
   the bundle keeps the student of the epoch with the best *validation* Dice (``models/model.pt``);
3. ``configs/evaluate.json`` (run id ``evaluating``, ``--split validation``): ``summary.json``,
   ``per_image_metrics.csv`` and overlays. The MoNuSeg test tiles are not available, so every number of
   this sweep is on the 6 validation tiles, the same ones used for model selection (optimistic; the paper
   reports the test set).

Methods: ``supervised`` (labeled images only), ``mean_teacher``, ``dussss``, ``dussss_no_sss`` (stage-1
VLM without SSS), ``dussss_no_dcl`` (stage-1 VLM without intra-modal contrast), ``dussss_no_tg``
(``--use_text_guided_loss False``: the grounding decoder gets no L_tg; it still learns from the labeled
masks when the bundle's ``grounding_supervision_weight`` is above 0), ``supervised_full`` (supervised
with ``--labeled_ratio 1.0``; run once per seed, shown in every ratio's table).

Budgets (``--budget``):

- ``cpu`` (default): 128 px and otherwise the settings of ``make demo`` (``scripts/demo.py``): the small
  convolutional image encoder (conv 16-32-64, 64-d embeddings, f_g 32 channels), U-Net 16-128, its
  learning rates and teacher EMA 0.9; ``num_workers 0``; 30 stage-1 and 30 stage-2 epochs.
  Measured on the project's 2-core CPU while another job used it (2-epoch runs; the times varied 2-3x with
  that job's load): stage 1 about 4 s/epoch + 10 s start-up, i.e. ~2 min per stage-1 run; stage 2 at 25 %
  labels (5 iterations/epoch) 4-8 s/epoch supervised-only, 8-26 s mean teacher, 16-40 s DuSSS, i.e. per
  30-epoch run ~2-4 min / ~4-13 min / ~8-20 min; about 60 % of that at 50 % labels (3 iterations/epoch);
  evaluation ~8 s. The default grid (2 ratios x 3 seeds x 7 methods = 39 stage-2 runs, 9 stage-1 runs)
  therefore takes about 4-8 hours there; on an idle 2-core machine, the lower end.
- ``gpu``: the bundle defaults: the paper's sizes and epochs (224 px, ViT-B/16, U-Net 32-512, 50 stage-1
  epochs, 100 stage-2 epochs with early stopping, patience 20), 4 loader workers, AMP on CUDA; the
  pseudo-label threshold and the grounding-decoder losses are the bundle's (see its ``train.json``).

``--pretrain_epochs`` / ``--epochs`` override the epochs of either budget; ``--extra [STAGE:]KEY=VALUE``
(repeatable) passes any further bundle override (VALUE is parsed as JSON when it can be, e.g.
``--extra image_size=64``, ``--extra train:batch_size=8``; without ``STAGE`` (``pretrain``, ``train``,
``evaluate``) it goes to every stage whose config has ``KEY``).

The sweep is resume-friendly: a (ratio, seed, method) whose ``eval/summary.json`` exists is skipped, a
stage-1 run that finished (``stage1_done.json``) is reused, a stage-2 run that finished is only
re-evaluated. Failed runs are reported and the sweep goes on; the exit status is then 1.

Outputs in ``--workdir`` (default ``runs/benchmarks/monuseg``):

- ``results.csv``: one row per run (``ratio, seed, method, dice, iou, n, seconds``; ``seconds`` = stage 2 +
  evaluation wall time; ``supervised_full`` rows have ratio 1.0);
- ``results.md``: per ratio, mean +- sample std over seeds of Dice and IoU (%), next to the paper's
  MoNuSeg numbers, the stage-1 runs, and the exact command line;
- ``learning_curves_ratio<r>.png``: validation Dice per epoch of every method (first seed), read from the
  stage-2 logs (``Epoch[e] Metrics -- val_mean_dice: ...``);
- ``overlays_ratio<r>.png``: a few validation tiles; columns image, ground truth, the DuSSS student's
  prediction and the text-guided mask ``sigmoid(f_g)`` of DuSSS's frozen VLM + trained grounding decoder
  (weights of the last stage-2 epoch), with each tile's sentence as the row title;
- per run: ``ratio<r>/seed<s>/<method>/{models,run,eval,train.log,evaluate.log,overrides.json}`` and
  ``pretrain/<variant>_seed<s>/{models/vlm.pt,run,pretrain.log}``.

Usage (from the repository root)::

    # the full default grid on CPU (4-8 hours on 2 busy cores)
    python benchmarks/monuseg_accuracy.py --dataset_dir ../shared/data/monuseg
    # print the commands only
    python benchmarks/monuseg_accuracy.py --dry_run
    # tables and figures of the finished runs only (e.g. after runs in parallel processes, or a stopped sweep)
    python benchmarks/monuseg_accuracy.py --workdir runs/benchmarks/monuseg --report_only
    # the paper's setting on a GPU
    python benchmarks/monuseg_accuracy.py --budget gpu --workdir runs/benchmarks/monuseg_gpu
    # native-resolution 256-pixel patches, U-Net 32-512, scored at 224 (docs/notebook/2026-11-27_benchmarks.md; ~4 h on 2 cores)
    python benchmarks/monuseg_accuracy.py --workdir runs/benchmarks/monuseg_cpu_patch --ratios 0.25 \
        --methods supervised,mean_teacher,dussss,supervised_full --epochs 60 --extra patch_size=256 \
        --extra score_size=224 --extra train:val_interval=2 --extra unet_channels=[32,64,128,256,512] \
        --extra unet_strides=[2,2,2,2] --extra train:learning_rate=0.001 --extra train:min_learning_rate=0.0001
    # a smoke test (a few minutes on CPU)
    python benchmarks/monuseg_accuracy.py --ratios 0.25 --seeds 0 --methods supervised,mean_teacher,dussss \\
        --pretrain_epochs 1 --epochs 1 --extra image_size=64 --workdir /tmp/bench_try
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import the project from this checkout
    sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "scripts"))
from bundle_runner import bundle_command, run_bundle  # noqa: E402
from demo import DEMO_OVERRIDES  # noqa: E402
from demo import PRETRAIN_OVERRIDES as DEMO_PRETRAIN_OVERRIDES  # noqa: E402
from demo import TRAIN_OVERRIDES as DEMO_TRAIN_OVERRIDES  # noqa: E402

from dussss_monai.errors import ConfigError, DuSSSError  # noqa: E402
from dussss_monai.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

DEFAULT_BUNDLE = REPO / "bundles" / "dussss_monuseg"
STAGES = ("pretrain", "train", "evaluate")
CONFIG_FILES = {"pretrain": "pretrain.json", "train": "train.json", "evaluate": "evaluate.json"}
RUN_IDS = {"pretrain": "training", "train": "training", "evaluate": "evaluating"}
FULL_RATIO = 1.0


@dataclass(frozen=True)
class MethodSpec:
    """One column of the comparison.

    Attributes:
        name: the name used on the command line, in folders and in ``results.csv``.
        title: the name shown in tables and figures.
        bundle_method: the bundle's ``method`` switch.
        stage1: the stage-1 variant the method needs (a key of :data:`STAGE1_VARIANTS`), ``None`` for none.
        overrides: further stage-2 overrides.
        fixed_ratio: labeled ratio used whatever ``--ratios`` says (``supervised_full``), else ``None``.
    """

    name: str
    title: str
    bundle_method: str
    stage1: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    fixed_ratio: float | None = None


#: Stage-1 variants: the pretrain.json switches of the loss ``DualContrastiveLoss`` each one sets.
STAGE1_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_sss": {"use_sss": False},
    "no_dcl": {"intra_modal": False},
}

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("supervised", "Supervised only (U-Net)", "supervised"),
        MethodSpec("mean_teacher", "Mean teacher", "mean_teacher"),
        MethodSpec("dussss", "DuSSS", "dussss", stage1="full"),
        MethodSpec("dussss_no_sss", "DuSSS w/o SSS", "dussss", stage1="no_sss"),
        MethodSpec("dussss_no_dcl", "DuSSS w/o DCL (no intra-modal)", "dussss", stage1="no_dcl"),
        MethodSpec(
            "dussss_no_tg", "DuSSS w/o L_tg", "dussss", stage1="full", overrides={"use_text_guided_loss": False}
        ),
        MethodSpec("supervised_full", "U-Net, 100 % labels", "supervised", fixed_ratio=FULL_RATIO),
    )
}

#: MoNuSeg Dice (%) reported in the paper (test set), by labeled ratio and method.
PAPER_DICE: dict[float, dict[str, float]] = {
    0.25: {"dussss": 76.51, "mean_teacher": 72.80, "supervised_full": 78.66},
    0.5: {"dussss": 78.03, "mean_teacher": 75.15, "supervised_full": 78.66},
}


@dataclass(frozen=True)
class Budget:
    """Overrides of one ``--budget`` preset, by stage, and its default epochs (``None``: the bundle's)."""

    common: Mapping[str, Any]
    pretrain: Mapping[str, Any]
    train: Mapping[str, Any]
    evaluate: Mapping[str, Any]
    pretrain_epochs: int | None
    epochs: int | None


#: The CPU preset reuses the ``make demo`` settings (small conv image encoder, small U-Net, learning rates, the
#: faster teacher EMA of short runs), except the demo's 64 px and stage-2 batch of 16: MoNuSeg runs at 128 px and
#: keeps the bundle's batch of 4 (6 labeled tiles at 25 %).
BUDGETS: dict[str, Budget] = {
    "cpu": Budget(
        common={
            **{k: v for k, v in DEMO_OVERRIDES.items() if k not in ("image_size", "batch_size")},
            "image_size": 128,
        },
        pretrain=dict(DEMO_PRETRAIN_OVERRIDES),
        train=dict(DEMO_TRAIN_OVERRIDES),
        evaluate={"num_workers": 0},
        pretrain_epochs=30,
        epochs=30,
    ),
    "gpu": Budget(common={}, pretrain={}, train={}, evaluate={}, pretrain_epochs=None, epochs=None),
}

_VAL_DICE_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- .*?\bval_mean_dice: ([-+0-9.eE]+|nan)")
_RECALL_LINE = re.compile(r"Metrics -- .*?\brecall_at_1: ([-+0-9.eE]+|nan)")


# ----------------------------------------------------------------------------------------------- helpers
def ratio_tag(ratio: float) -> str:
    """Folder/file tag of a labeled ratio, e.g. ``0.25`` -> ``"0.25"``, ``1`` -> ``"1"``.

    Args:
        ratio: the labeled ratio.

    Returns:
        the shortest decimal representation (``"%g"``).
    """
    return f"{ratio:g}"


def parse_value(text: str) -> Any:
    """Parse an override value: JSON when possible (numbers, booleans, lists, ``null``), else the string.

    Args:
        text: the value as typed.

    Returns:
        the parsed value.
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_extras(items: Sequence[str], config_keys: Mapping[str, set[str]]) -> dict[str, dict[str, Any]]:
    """Sort ``--extra [STAGE:]KEY=VALUE`` items into per-stage override dicts.

    Args:
        items: the raw ``--extra`` values.
        config_keys: top-level keys of each stage's config, to route un-prefixed keys.

    Returns:
        ``{stage: {key: value}}`` for the stages in :data:`STAGES`.

    Raises:
        ConfigError: on a malformed item, an unknown stage, or a key that no config has.
    """
    out: dict[str, dict[str, Any]] = {s: {} for s in STAGES}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--extra expects [STAGE:]KEY=VALUE, got {item!r}")
        stage, colon, bare = key.partition(":")
        if colon:
            if stage not in STAGES:
                raise ConfigError(f"--extra {item!r}: unknown stage {stage!r} (one of {', '.join(STAGES)})")
            out[stage][bare] = parse_value(value)
            continue
        top = key.split("#")[0]
        targets = [s for s in STAGES if top in config_keys[s]]
        if not targets:
            raise ConfigError(f"--extra {item!r}: no bundle config has the key {top!r} (check the spelling)")
        for s in targets:
            out[s][key] = parse_value(value)
    return out


def format_command(config: Path | list[Path], run_id: str, overrides: Mapping[str, Any]) -> str:
    """The shell command that ``scripts/bundle_runner.run_bundle`` runs, quoted so that it can be pasted.

    Args:
        config: the bundle config file.
        run_id: ``training`` or ``evaluating``.
        overrides: the command-line overrides.

    Returns:
        the command line.
    """
    return shlex.join(["python", *bundle_command(config, run_id, overrides)[1:]])


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON file, ``None`` when it is missing or unreadable.

    Args:
        path: the file.

    Returns:
        the parsed object or ``None``.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_val_dice_curve(log_file: Path) -> list[tuple[int, float]]:
    """Validation Dice per epoch from a stage-2 log (``Epoch[e] Metrics -- val_mean_dice: x``).

    Args:
        log_file: the log written by :func:`run_bundle`.

    Returns:
        ``[(epoch, dice), ...]`` in epoch order (the last value wins for a repeated epoch); empty when the
        log is missing.
    """
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    values: dict[int, float] = {}
    for m in _VAL_DICE_LINE.finditer(text):
        values[int(m.group(1))] = float(m.group(2))
    return sorted(values.items())


def best_recall_at_1(log_file: Path) -> float | None:
    """Best validation retrieval recall@1 of a stage-1 log, ``None`` when none is logged.

    Args:
        log_file: the stage-1 log.

    Returns:
        the maximum recall@1 or ``None``.
    """
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    values = [float(m.group(1)) for m in _RECALL_LINE.finditer(text)]
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else None


def config_keys(bundle: Path) -> dict[str, set[str]]:
    """Top-level keys of each stage's config.

    Args:
        bundle: the bundle folder.

    Returns:
        ``{stage: keys}``.

    Raises:
        DuSSSError: when a config file is missing or not JSON.
    """
    out = {}
    for stage, name in CONFIG_FILES.items():
        path = bundle / "configs" / name
        content = read_json(path)
        if not isinstance(content, dict):
            raise DuSSSError(f"bundle config {path} is missing or not a JSON object")
        out[stage] = set(content)
    out["evaluate"] |= out["train"]  # evaluate.json is layered on train.json
    return out


def bundle_default(bundle: Path, stage: str, key: str) -> Any:
    """A default value of a bundle config (e.g. ``max_epochs``).

    Args:
        bundle: the bundle folder.
        stage: one of :data:`STAGES`.
        key: the top-level key.

    Returns:
        the value, ``None`` when absent.
    """
    content = read_json(bundle / "configs" / CONFIG_FILES[stage]) or {}
    return content.get(key)


def check_dataset_dir(dataset_dir: Path) -> None:
    """Fail early and clearly when the dataset folder is not an LViT-layout MoNuSeg folder.

    Args:
        dataset_dir: the ``--dataset_dir`` folder.

    Raises:
        DuSSSError: naming the folder, when it or its ``Train_Folder`` is missing.
    """
    if not dataset_dir.is_dir():
        raise DuSSSError(
            f"MoNuSeg dataset folder {dataset_dir} does not exist; pass --dataset_dir <folder with "
            "Train_Folder/ and Val_Folder/ (img, labelcol, *_text.xlsx)> (see docs/data_format.md)"
        )
    if not (dataset_dir / "Train_Folder").is_dir():
        raise DuSSSError(
            f"{dataset_dir} is not an LViT-layout dataset folder: {dataset_dir / 'Train_Folder'} is missing "
            "(expected Train_Folder/ and Val_Folder/ with img/, labelcol/ and *_text.xlsx)"
        )


# ----------------------------------------------------------------------------------------------- the sweep
@dataclass
class RunResult:
    """One finished (ratio, seed, method) run: a row of ``results.csv``."""

    ratio: float
    seed: int
    method: str
    dice: float
    iou: float
    n: int
    seconds: float | None


class Sweep:
    """Runs the grid, resumes finished runs, and collects results.

    Args:
        args: the parsed command line.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bundle = Path(args.bundle).resolve()
        self.configs: dict[str, Any] = {s: self.bundle / "configs" / CONFIG_FILES[s] for s in STAGES}
        self.configs["evaluate"] = [self.configs["train"], self.configs["evaluate"]]  # layered on train.json
        self.work = Path(args.workdir).resolve()
        self.data = Path(args.dataset_dir).resolve()
        self.budget = BUDGETS[args.budget]
        keys = config_keys(self.bundle)
        self.extras = parse_extras(args.extra or [], keys)
        self.pretrain_epochs = (
            args.pretrain_epochs or self.budget.pretrain_epochs or bundle_default(self.bundle, "pretrain", "max_epochs")
        )
        self.epochs = args.epochs or self.budget.epochs or bundle_default(self.bundle, "train", "max_epochs")
        self.env = dict(os.environ)
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p)
        self.results: list[RunResult] = []
        self.failures: list[str] = []
        self._stage1_state: dict[tuple[str, int], bool] = {}

    # -------------------------------------------------------------- overrides per stage
    def _common(self, seed: int) -> dict[str, Any]:
        return {
            **self.budget.common,
            "dataset_dir": str(self.data),
            "bundle_root": str(self.bundle),
            "seed": seed,
            "log_iterations": False,
        }

    def stage1_dir(self, variant: str, seed: int) -> Path:
        """Folder of one stage-1 run."""
        return self.work / "pretrain" / f"{variant}_seed{seed}"

    def run_dir(self, ratio: float, seed: int, method: str) -> Path:
        """Folder of one stage-2 run (``supervised_full`` lives under ``ratio1``)."""
        return self.work / f"ratio{ratio_tag(ratio)}" / f"seed{seed}" / method

    def stage1_overrides(self, variant: str, seed: int) -> dict[str, Any]:
        """Overrides of the stage-1 command of ``variant`` and ``seed``."""
        folder = self.stage1_dir(variant, seed)
        return {
            **self._common(seed),
            **self.budget.pretrain,
            **STAGE1_VARIANTS[variant],
            "max_epochs": self.pretrain_epochs,
            "ckpt_dir": str(folder / "models"),
            "output_dir": str(folder / "run"),
            **self.extras["pretrain"],
        }

    def train_overrides(self, spec: MethodSpec, ratio: float, seed: int) -> dict[str, Any]:
        """Overrides of the stage-2 command of one run."""
        folder = self.run_dir(ratio, seed, spec.name)
        out = {
            **self._common(seed),
            **self.budget.train,
            "method": spec.bundle_method,
            "labeled_ratio": ratio,
            "max_epochs": self.epochs,
            "ckpt_dir": str(folder / "models"),
            "output_dir": str(folder / "run"),
            **dict(spec.overrides),
        }
        if spec.stage1 is not None:
            out["vlm_checkpoint"] = str(self.stage1_dir(spec.stage1, seed) / "models" / "vlm.pt")
        out.update(self.extras["train"])
        return out

    def evaluate_overrides(self, spec: MethodSpec, ratio: float, seed: int, train: Mapping[str, Any]) -> dict[str, Any]:
        """Overrides of the evaluation command of one run (same student network and size as stage 2)."""
        folder = self.run_dir(ratio, seed, spec.name)
        out = dict(train)  # evaluate.json is layered on train.json: the same settings
        out.update(
            {
                "dataset_dir": str(self.data),
                "bundle_root": str(self.bundle),
                **self.budget.evaluate,
                "ckpt_dir": str(folder / "models"),
                "output_dir": str(folder / "eval"),
                "split": "validation",
                **self.extras["evaluate"],
            }
        )
        return out

    # -------------------------------------------------------------- the runs
    def plan(self) -> list[tuple[float, int, MethodSpec]]:
        """The (ratio, seed, method) runs to do, ``supervised_full`` once per seed, in execution order."""
        runs: list[tuple[float, int, MethodSpec]] = []
        seen: set[tuple[float, int, str]] = set()
        for seed in self.args.seed_list:
            for ratio in self.args.ratio_list:
                for name in self.args.method_list:
                    spec = METHODS[name]
                    r = spec.fixed_ratio if spec.fixed_ratio is not None else ratio
                    if (r, seed, name) not in seen:
                        seen.add((r, seed, name))
                        runs.append((r, seed, spec))
        return runs

    def ensure_stage1(self, variant: str, seed: int) -> bool:
        """Run (or reuse) the stage-1 model of ``variant`` / ``seed``.

        Args:
            variant: a key of :data:`STAGE1_VARIANTS`.
            seed: the seed.

        Returns:
            whether the VLM checkpoint is ready (always ``True`` in a dry run).
        """
        key = (variant, seed)
        if key in self._stage1_state:
            return self._stage1_state[key]
        folder = self.stage1_dir(variant, seed)
        done = folder / "stage1_done.json"
        overrides = self.stage1_overrides(variant, seed)
        log = folder / "pretrain.log"
        ok = True
        if done.is_file() and (folder / "models" / "vlm.pt").is_file():
            print(f"[stage 1 {variant} seed {seed}] done before, reusing {folder / 'models' / 'vlm.pt'}", flush=True)
        elif self.args.dry_run:
            print(format_command(self.configs["pretrain"], RUN_IDS["pretrain"], overrides))
        else:
            print(f"[stage 1 {variant} seed {seed}]", flush=True)
            try:
                seconds = run_bundle(self.configs["pretrain"], RUN_IDS["pretrain"], overrides, log, self.env)
            except DuSSSError as e:
                self.failures.append(f"stage 1 {variant} seed {seed}: {str(e).splitlines()[0]}")
                print(f"FAILED: {e}", file=sys.stderr, flush=True)
                ok = False
            else:
                if not (folder / "models" / "vlm.pt").is_file():
                    self.failures.append(f"stage 1 {variant} seed {seed}: no vlm.pt written (see {log})")
                    ok = False
                else:
                    atomic_write_json(done, {"seconds": seconds, "overrides": overrides})
        self._stage1_state[key] = ok
        return ok

    def run_one(self, ratio: float, seed: int, spec: MethodSpec) -> None:
        """Stage 1 if needed, stage 2 and evaluation of one run; skipped when its summary exists."""
        folder = self.run_dir(ratio, seed, spec.name)
        label = f"[ratio {ratio_tag(ratio)} seed {seed} {spec.name}]"
        summary_path = folder / "eval" / "summary.json"
        timing_path = folder / "timing.json"
        if summary_path.is_file():
            print(f"{label} done before ({summary_path}), skipped", flush=True)
            self._warn_if_settings_differ(label, folder, self.train_overrides(spec, ratio, seed))
            self._collect(ratio, seed, spec, summary_path, timing_path)
            return
        if self.args.report_only:
            self.failures.append(f"{label} not finished (no {summary_path}); --report_only runs nothing")
            return
        if spec.stage1 is not None and not self.ensure_stage1(spec.stage1, seed):
            self.failures.append(f"{label} not run: its stage-1 model ({spec.stage1}, seed {seed}) failed")
            return
        train = self.train_overrides(spec, ratio, seed)
        evaluate = self.evaluate_overrides(spec, ratio, seed, train)
        if self.args.dry_run:
            print(format_command(self.configs["train"], RUN_IDS["train"], train))
            print(format_command(self.configs["evaluate"], RUN_IDS["evaluate"], evaluate))
            return
        print(label, flush=True)
        trained = folder / "train_done.json"
        try:
            if trained.is_file() and (folder / "models" / "model.pt").is_file():
                train_seconds = float((read_json(trained) or {}).get("seconds", float("nan")))
                print(f"{label} stage 2 done before, evaluating only", flush=True)
            else:
                atomic_write_json(folder / "overrides.json", {"train": train, "evaluate": evaluate})
                train_seconds = run_bundle(
                    self.configs["train"], RUN_IDS["train"], train, folder / "train.log", self.env
                )
                atomic_write_json(trained, {"seconds": train_seconds})
            eval_seconds = run_bundle(
                self.configs["evaluate"], RUN_IDS["evaluate"], evaluate, folder / "evaluate.log", self.env
            )
        except DuSSSError as e:
            self.failures.append(f"{label}: {str(e).splitlines()[0]}")
            print(f"FAILED: {e}", file=sys.stderr, flush=True)
            return
        atomic_write_json(timing_path, {"train_seconds": train_seconds, "evaluate_seconds": eval_seconds})
        self._collect(ratio, seed, spec, summary_path, timing_path)
        r = self.results[-1] if self.results else None
        if r is not None and r.method == spec.name:
            print(f"{label} validation Dice {100 * r.dice:.2f} %, IoU {100 * r.iou:.2f} %", flush=True)

    @staticmethod
    def _warn_if_settings_differ(label: str, folder: Path, train: Mapping[str, Any]) -> None:
        """Warn when a finished run was made with other stage-2 settings than this invocation asks for."""
        recorded = (read_json(folder / "overrides.json") or {}).get("train")
        if not isinstance(recorded, dict):
            return
        current = json.loads(json.dumps(dict(train)))
        keys = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        if keys:
            print(
                f"WARNING {label}: reused, but it was run with other settings ({', '.join(keys)}); "
                "use another --workdir to run it again with these",
                file=sys.stderr,
                flush=True,
            )

    def _collect(self, ratio: float, seed: int, spec: MethodSpec, summary_path: Path, timing_path: Path) -> None:
        summary = read_json(summary_path)
        if not summary or "mean_dice" not in summary:
            self.failures.append(f"ratio {ratio_tag(ratio)} seed {seed} {spec.name}: unreadable {summary_path}")
            return
        timing = read_json(timing_path) or {}
        parts = [timing.get("train_seconds"), timing.get("evaluate_seconds")]
        seconds = sum(float(p) for p in parts) if all(isinstance(p, (int, float)) for p in parts) else None
        self.results.append(
            RunResult(
                ratio=ratio,
                seed=seed,
                method=spec.name,
                dice=float(summary["mean_dice"]),
                iou=float(summary.get("mean_iou", float("nan"))),
                n=int(summary.get("n", 0)),
                seconds=None if seconds is None or math.isnan(seconds) else seconds,
            )
        )

    def run(self) -> None:
        """Run the whole plan (or print it with ``--dry_run``)."""
        for ratio, seed, spec in self.plan():
            self.run_one(ratio, seed, spec)

    def stage1_records(self) -> list[dict[str, Any]]:
        """The finished stage-1 runs the planned methods use: variant, seed, wall time and best recall@1.

        Returns:
            one dict per finished run (``seconds`` / ``recall_at_1`` ``None`` when unknown).
        """
        records = []
        variants = [v for v in STAGE1_VARIANTS if any(METHODS[m].stage1 == v for m in self.args.method_list)]
        for variant in variants:
            for seed in self.args.seed_list:
                folder = self.stage1_dir(variant, seed)
                done = read_json(folder / "stage1_done.json")
                if done is None:
                    continue
                records.append(
                    {
                        "variant": variant,
                        "seed": seed,
                        "seconds": done.get("seconds"),
                        "recall_at_1": best_recall_at_1(folder / "pretrain.log"),
                    }
                )
        return records


# ----------------------------------------------------------------------------------------------- reports
def results_csv(results: Sequence[RunResult]) -> str:
    """``results.csv`` content: one row per run.

    Args:
        results: the finished runs.

    Returns:
        CSV text with header ``ratio,seed,method,dice,iou,n,seconds``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["ratio", "seed", "method", "dice", "iou", "n", "seconds"])
    for r in sorted(results, key=lambda r: (r.ratio, list(METHODS).index(r.method), r.seed)):
        writer.writerow(
            [
                ratio_tag(r.ratio),
                r.seed,
                r.method,
                f"{r.dice:.6f}",
                f"{r.iou:.6f}",
                r.n,
                "" if r.seconds is None else f"{r.seconds:.1f}",
            ]
        )
    return buf.getvalue()


def mean_std(values: Sequence[float]) -> str:
    """``"mean ± sample std"`` in percent (``± –`` with one value).

    Args:
        values: fractions in ``[0, 1]``.

    Returns:
        the formatted cell.
    """
    pct = [100.0 * v for v in values]
    if not pct:
        return "–"
    if len(pct) == 1:
        return f"{pct[0]:.2f} ± –"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def results_markdown(sweep: Sweep, command: str) -> str:
    """``results.md``: per ratio, mean ± sample std over seeds next to the paper, then stage 1 and the command.

    Args:
        sweep: the finished sweep.
        command: the exact command line of this invocation.

    Returns:
        the markdown text.
    """
    args = sweep.args
    image_size = sweep.extras["train"].get(
        "image_size", sweep.budget.common.get("image_size", bundle_default(sweep.bundle, "train", "image_size"))
    )
    lines = [
        "# MoNuSeg accuracy sweep",
        "",
        f"Budget `{args.budget}`: image size {image_size}, {sweep.pretrain_epochs} stage-1 epochs, {sweep.epochs} stage-2 "
        f"epochs (best validation Dice kept), seeds {', '.join(map(str, args.seed_list))}. Dataset: `{sweep.data}`.",
        "",
        "Scores are MONAI mean Dice / IoU (%) on the **validation** tiles (the ones used for model selection; the test",
        "tiles are not available), mean ± sample standard deviation over seeds. The paper's numbers are on the test set",
        "with its full-size setting; they are shown for orientation, not as a like-for-like comparison.",
        "",
    ]
    full_rows = [r for r in sweep.results if r.method == "supervised_full"]
    for ratio in args.ratio_list:
        lines += [
            f"## {100 * ratio:g} % labeled",
            "",
            "| method | Dice (%) | IoU (%) | seeds | images | paper Dice (%) |",
            "|---|---|---|---|---|---|",
        ]
        for name in args.method_list:
            rows = (
                full_rows
                if name == "supervised_full"
                else [r for r in sweep.results if r.method == name and r.ratio == ratio]
            )
            paper = PAPER_DICE.get(ratio, {}).get(name)
            n_images = sorted({r.n for r in rows})
            lines.append(
                f"| {METHODS[name].title} | {mean_std([r.dice for r in rows])} | {mean_std([r.iou for r in rows])} "
                f"| {len(rows)} | {'/'.join(map(str, n_images)) or '–'} | {'–' if paper is None else f'{paper:.2f}'} |"
            )
        lines.append("")
    stage1 = sweep.stage1_records()
    if stage1:
        lines += ["## Stage 1 runs", "", "| variant | seed | best val recall@1 | seconds |", "|---|---|---|---|"]
        for rec in stage1:
            r1 = rec.get("recall_at_1")
            sec = rec.get("seconds")
            switches = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in STAGE1_VARIANTS[rec["variant"]].items())
            lines.append(
                f"| {rec['variant']}{' (' + switches + ')' if switches else ''} | {rec['seed']} "
                f"| {'–' if r1 is None else f'{r1:.3f}'} | {'–' if sec is None else f'{sec:.0f}'} |"
            )
        lines.append("")
    if sweep.failures:
        lines += ["## Failed runs", ""] + [f"- {f}" for f in sweep.failures] + [""]
    lines += [
        "Per-run scores: `results.csv`; per-image metrics and overlays: `ratio<r>/seed<s>/<method>/eval/`.",
        "",
        "Command:",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- figures
def plot_learning_curves(sweep: Sweep, ratio: float, path: Path) -> Path | None:
    """Validation Dice per epoch of each method at ``ratio`` (first seed), from the stage-2 logs.

    Args:
        sweep: the sweep (for folders and the method list).
        ratio: the labeled ratio.
        path: the PNG to write.

    Returns:
        ``path``, or ``None`` when no log had any validation Dice.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = sweep.args.seed_list[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for name in sweep.args.method_list:
        spec = METHODS[name]
        r = spec.fixed_ratio if spec.fixed_ratio is not None else ratio
        curve = read_val_dice_curve(sweep.run_dir(r, seed, name) / "train.log")
        if not curve:
            continue
        epochs, dice = zip(*curve)
        ax.plot(
            epochs,
            [100 * d for d in dice],
            marker="o" if len(curve) < 15 else None,
            markersize=3,
            linestyle="--" if spec.fixed_ratio is not None else "-",
            label=spec.title,
        )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max(ax.get_xlim()[1], 1.5))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice (%)")
    ax.set_title(f"MoNuSeg, {100 * ratio:g} % labeled, seed {seed} ({sweep.args.budget} budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from dussss_monai.utils.io import atomic_write_bytes

    return atomic_write_bytes(path, buf.getvalue())


def _build_from_train_config(sweep: Sweep, overrides: Mapping[str, Any], with_vlm: bool) -> tuple[Any, Any]:
    """Build the student U-Net (and, with ``with_vlm``, the refiner) exactly as the stage-2 config did.

    Args:
        sweep: the sweep (for the bundle's train.json).
        overrides: the stage-2 overrides recorded in the run's ``overrides.json``.
        with_vlm: also build the frozen stage-1 VLM and the grounding decoder.

    Returns:
        ``(unet, refiner_or_None)``, both on the CPU, weights not loaded yet.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(sweep.configs["train"]))
    for key, value in overrides.items():
        parser[key.replace("#", "::")] = value
    parser["device"] = "$torch.device('cpu')"
    unet = parser.get_parsed_content("network_def")
    if not with_vlm:
        return unet, None
    from dussss_monai.refiner import VLMPseudoLabelRefiner

    vlm = parser.get_parsed_content("vlm_def")
    decoder = parser.get_parsed_content("grounding_decoder")
    return unet, (vlm, decoder, VLMPseudoLabelRefiner)


def plot_overlays(sweep: Sweep, ratio: float, path: Path, n_images: int = 4) -> tuple[Path | None, str]:
    """Image, ground truth, prediction and text-guided mask for a few validation tiles.

    The prediction is the DuSSS student's (best validation epoch, ``models/model.pt``) of the first seed; the
    text mask is ``sigmoid(f_g(VLM(image), VLM(sentence)))`` with the frozen stage-1 VLM and the grounding
    decoder of the last stage-2 epoch (``run/checkpoints``). Without a DuSSS run, the first method's
    student is shown and the text-mask column is left out.

    Args:
        sweep: the sweep.
        ratio: the labeled ratio.
        path: the PNG to write.
        n_images: number of validation tiles (rows).

    Returns:
        ``(path or None, note)``: ``None`` when no finished run exists at ``ratio``; ``note`` says what was drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dussss_monai.bundle import latest_checkpoint, load_stage1_model, load_state_dict_into, make_inferer
    from dussss_monai.data import eval_transforms, read_lvit_dataset
    from dussss_monai.utils.io import atomic_write_bytes

    seed = sweep.args.seed_list[0]
    candidates = [m for m in sweep.args.method_list if METHODS[m].fixed_ratio is None]
    candidates.sort(key=lambda m: m != "dussss")
    chosen = None
    for name in candidates:
        folder = sweep.run_dir(ratio, seed, name)
        if (folder / "models" / "model.pt").is_file() and (folder / "overrides.json").is_file():
            chosen = name
            break
    if chosen is None:
        return None, "no finished run"
    folder = sweep.run_dir(ratio, seed, chosen)
    recorded = read_json(folder / "overrides.json") or {}
    train = recorded.get("train", {})
    spec = METHODS[chosen]
    with_text = spec.bundle_method == "dussss"
    image_size = train.get("image_size", bundle_default(sweep.bundle, "train", "image_size"))
    unet, parts = _build_from_train_config(sweep, train, with_vlm=with_text)
    load_state_dict_into(unet, folder / "models" / "model.pt")
    unet.eval()
    refiner = None
    note = f"{spec.title} student"
    if with_text and parts is not None:
        vlm, decoder, refiner_cls = parts
        ckpt = latest_checkpoint(folder / "run" / "checkpoints")
        if ckpt is None:
            note += "; no stage-2 training checkpoint, text mask left out"
        else:
            load_stage1_model(vlm, train["vlm_checkpoint"], str(sweep.configs["pretrain"]))
            load_state_dict_into(decoder, ckpt, key="grounding_decoder")
            refiner = refiner_cls(vlm=vlm, grounding_decoder=decoder, vlm_image_size=(image_size, image_size)).eval()
            note += f" + text mask (f_g from {Path(ckpt).name})"

    channels = train.get("in_channels", bundle_default(sweep.bundle, "train", "in_channels"))
    items = read_lvit_dataset(sweep.data, check=False, channels=channels)["validation"][:n_images]
    if not items:
        return None, "no validation images"
    # a patch-trained student predicts the native tile by sliding window; shown (and scored) on the score grid
    patch_size = train.get("patch_size")
    score_size = train.get("score_size", image_size) if patch_size else None
    pipeline = eval_transforms(image_size=image_size, channels=channels, patch_size=patch_size)
    inferer = make_inferer(patch_size)

    def on_score_grid(x: torch.Tensor, mode: str) -> torch.Tensor:
        if score_size is None:
            return x
        return torch.nn.functional.interpolate(x, size=(score_size, score_size), mode=mode)

    cols = 4 if refiner is not None else 3
    fig = plt.figure(figsize=(2.6 * cols, 2.9 * len(items)), layout="constrained")
    rows = fig.subfigures(len(items), 1) if len(items) > 1 else [fig]
    for row, item in zip(rows, items):
        data = pipeline(dict(item))
        native = data["image"].float()[None]
        image = on_score_grid(native, "bilinear")
        label = on_score_grid(data["label"].float()[None], "nearest-exact")[0, 0].numpy() > 0.5
        with torch.no_grad():
            prob = torch.sigmoid(inferer(native, unet))
            text_prob = None
            if refiner is not None:
                text_prob = on_score_grid(torch.sigmoid(refiner.text_logits(native, [item["text"]])), "bilinear")[
                    0, 0
                ].numpy()
        # the evaluation's convention: foreground = probability >= 0.5, then resized like the ground truth
        pred = on_score_grid((prob >= 0.5).float(), "nearest-exact")[0, 0].numpy() > 0.5
        inter = float((pred & label).sum())
        dice = 2 * inter / max(float(pred.sum() + label.sum()), 1.0)
        shown = image[0].permute(1, 2, 0).numpy()
        shown = (shown - shown.min()) / max(float(shown.max() - shown.min()), 1e-8)
        if shown.shape[-1] == 1:
            shown = shown[..., 0]
        panels = [
            (shown, "image", None),
            (label, "ground truth", "gray"),
            (pred, f"prediction (Dice {100 * dice:.1f})", "gray"),
        ]
        if text_prob is not None:
            panels.append((text_prob, "text mask sigmoid(f_g)", "magma"))
        axes = row.subplots(1, cols)
        for ax, (img, title, cmap) in zip(axes, panels):
            shown_im = ax.imshow(img, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        if text_prob is not None:
            row.colorbar(shown_im, ax=axes[-1], fraction=0.046, pad=0.02)
        row.suptitle(f'{item.get("name", "")}: "{item["text"]}"', fontsize=9)
    fig.suptitle(f"MoNuSeg validation, {100 * ratio:g} % labeled, seed {seed}: {note}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue()), note


# ----------------------------------------------------------------------------------------------- main
def _split_list(text: str, kind: type, what: str) -> list[Any]:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"--{what}: cannot parse {text!r}: {e}") from e
    if not values:
        raise ConfigError(f"--{what} is empty")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser.

    Returns:
        the parser.
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", default="0.25,0.5", help="labeled ratios, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--dataset_dir", default="../shared/data/monuseg", help="LViT-layout MoNuSeg folder")
    p.add_argument("--workdir", default="runs/benchmarks/monuseg", help="where runs, results and figures go")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="the MoNuSeg bundle folder")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="preset of sizes and epochs")
    p.add_argument("--pretrain_epochs", type=int, default=None, help="stage-1 epochs (default: the budget's)")
    p.add_argument("--epochs", type=int, default=None, help="stage-2 epochs, every method (default: the budget's)")
    p.add_argument("--extra", action="append", metavar="[STAGE:]KEY=VALUE", help="further bundle override (repeatable)")
    p.add_argument("--overlay_images", type=int, default=4, help="validation tiles in overlays_ratio<r>.png")
    p.add_argument("--dry_run", action="store_true", help="print the commands only")
    p.add_argument(
        "--report_only",
        action="store_true",
        help="run nothing: write results.md / results.csv and the figures from the runs already finished",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; returns the exit status (1 when a run or a figure failed).

    Args:
        argv: the command line (``sys.argv[1:]`` when ``None``).

    Returns:
        the exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "benchmarks/monuseg_accuracy.py", *argv])
    try:
        args.ratio_list = _split_list(args.ratios, float, "ratios")
        args.seed_list = _split_list(args.seeds, int, "seeds")
        args.method_list = _split_list(args.methods, str, "methods")
        unknown = [m for m in args.method_list if m not in METHODS]
        if unknown:
            raise ConfigError(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})")
        if any(not 0 < r <= 1 for r in args.ratio_list):
            raise ConfigError(f"--ratios must lie in (0, 1], got {args.ratios}")
        check_dataset_dir(Path(args.dataset_dir).resolve())
        sweep = Sweep(args)
        t0 = time.time()
        sweep.run()
    except DuSSSError as e:
        print(f"monuseg_accuracy: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0

    status = 1 if sweep.failures else 0
    print(f"writing results ({len(sweep.results)} runs, {time.time() - t0:.0f} s)", flush=True)
    csv_path = atomic_write_text(sweep.work / "results.csv", results_csv(sweep.results))
    md_path = atomic_write_text(sweep.work / "results.md", results_markdown(sweep, command))
    print(f"  {csv_path}\n  {md_path}")
    for ratio in args.ratio_list:
        tag = ratio_tag(ratio)
        try:
            lc = plot_learning_curves(sweep, ratio, sweep.work / f"learning_curves_ratio{tag}.png")
            print(f"  {lc}" if lc else f"  learning curves at ratio {tag}: no stage-2 log with validation Dice")
            ov, note = plot_overlays(sweep, ratio, sweep.work / f"overlays_ratio{tag}.png", args.overlay_images)
            print(f"  {ov} ({note})" if ov else f"  overlays at ratio {tag}: {note}")
        except Exception as e:  # a figure must not hide the numbers written above
            print(f"figure at ratio {tag} failed: {type(e).__name__}: {e}", file=sys.stderr)
            status = 1
    if sweep.failures:
        print("failed:\n  " + "\n  ".join(sweep.failures), file=sys.stderr)
    print("\n" + (md_path.read_text(encoding="utf-8") if md_path.is_file() else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
