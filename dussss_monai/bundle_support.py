"""Small functions that MONAI bundle configs call, so that configs hold no logic a test cannot reach.

Bundle configs evaluate Python expressions (``"$..."``) and import whatever ``_target_`` names: only run
configs from sources you trust, exactly as you would only run scripts you trust.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dussss_monai.errors import CheckpointError, ConfigError, DuSSSError
from dussss_monai.utils.io import atomic_write_json, ensure_writable_dir, safe_torch_load

__all__ = [
    "bundle_root",
    "latest_checkpoint",
    "load_state_dict_into",
    "load_frozen_vlm",
    "make_refiner",
    "make_inferer",
    "scoring_postprocessing",
    "training_scalars",
    "freeze",
    "check_method",
    "matched_epoch_length",
    "save_run_record",
    "config_from_command_line",
    "check_command_line",
    "environment_versions",
    "METHODS",
]

logger = logging.getLogger(__name__)

METHODS = ("dussss", "mean_teacher", "supervised")


def bundle_root(default: str = ".", argv: Sequence[str] | None = None) -> str:
    """Return the bundle folder of the config file given on the command line.

    ``python -m monai.bundle run training --config_file bundles/x/configs/train.json`` yields
    ``bundles/x``, so a bundle can be run from any working directory. Where no ``--config_file`` is on
    the command line (e.g. a bundle run from Python), ``default`` is returned; override ``bundle_root``
    explicitly in that case.

    Args:
        default: returned when the command line names no config file.
        argv: the command line to read, ``sys.argv`` when ``None``.

    Returns:
        the bundle root folder as a string.
    """
    args = list(sys.argv if argv is None else argv)
    config = None
    for i, a in enumerate(args):
        if a == "--config_file" and i + 1 < len(args):
            config = args[i + 1]
        elif a.startswith("--config_file="):
            config = a.split("=", 1)[1]
    if not config:
        return default
    config = config.strip()
    if config.startswith("["):  # a list of config files: take the first
        try:
            config = json.loads(config.replace("'", '"'))[0]
        except (ValueError, IndexError):
            return default
    else:
        config = config.split(",")[0]
    folder = Path(config).resolve().parent
    return str(folder.parent if folder.name == "configs" else folder)


def check_method(method: str) -> str:
    """Validate the stage-2 ``method`` switch of a bundle config.

    Raises:
        ConfigError: when ``method`` is not one of :data:`METHODS`.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return method


def matched_epoch_length(
    datalist: Mapping[str, Sequence[Any]],
    batch_size: int,
    unlabeled_batch_size: int | None = None,
    world_size: int | None = None,
) -> int:
    """Iterations per epoch shared by every method of a comparison: one pass over the larger of the labeled and
    unlabeled streams, ``max(ceil(n_l / (W * b)), ceil(n_u / (W * b_u)))`` with ``W`` ranks (each rank holds
    ``ceil(n / W)`` items, as ``DistributedSampler(even_divisible=True)``).

    The supervised-only baseline uses it too, although it reads no unlabeled data, so that "30 epochs" means
    the same number of optimiser steps and the same learning-rate schedule for supervised-only, mean teacher
    and DuSSS (otherwise the baseline would get ``n_l / n_u`` times fewer steps).

    Args:
        datalist: output of :func:`dussss_monai.data.prepare_datalist` (keys ``labeled`` and ``unlabeled``).
        batch_size: labeled batch size.
        unlabeled_batch_size: unlabeled batch size (default ``batch_size``).
        world_size: number of ranks; default the initialised process group's size, else 1.

    Returns:
        the epoch length (at least 1).

    Raises:
        ConfigError: when a batch size is not positive or ``datalist`` lacks the ``labeled`` list.
    """
    ub = batch_size if unlabeled_batch_size is None else unlabeled_batch_size
    if int(batch_size) < 1 or int(ub) < 1:
        raise ConfigError(f"batch sizes must be positive, got batch_size={batch_size}, unlabeled_batch_size={ub}")
    if "labeled" not in datalist:
        raise ConfigError("matched_epoch_length: the datalist has no 'labeled' list (see dussss_monai.data.prepare_datalist)")
    if world_size is None:
        dist = torch.distributed
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    w = max(int(world_size), 1)

    def steps(n: int, b: int) -> int:
        per_rank = -(-n // w)
        return -(-per_rank // b)

    n_l = len(datalist["labeled"])
    n_u = len(datalist.get("unlabeled", []))
    return max(steps(n_l, int(batch_size)), steps(n_u, int(ub)), 1)


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "*.pt") -> str | None:
    """Return the most recently written checkpoint in ``folder`` (by modification time), or ``None``."""
    p = Path(folder)
    if not p.is_dir():
        return None
    files = [f for f in p.glob(pattern) if f.is_file() and not f.name.startswith(".")]
    if not files:
        return None
    return str(max(files, key=lambda f: (f.stat().st_mtime, f.name)))


def load_state_dict_into(module: nn.Module, path: str | os.PathLike, key: str | None = None, strict: bool = True) -> nn.Module:
    """Load a state dict from ``path`` (safely, ``weights_only=True``) into ``module``.

    Args:
        module: the network to fill.
        path: checkpoint file holding a state dict, or a dict of state dicts when ``key`` is given.
        key: entry of the checkpoint to load; ``None`` when the file is the state dict itself.
        strict: passed to :meth:`torch.nn.Module.load_state_dict`.

    Returns:
        ``module``.

    Raises:
        CheckpointError: when the file is missing, unsafe, or does not match the network.
    """
    state = safe_torch_load(path)
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            raise CheckpointError(f"checkpoint {path} has no entry {key!r}")
        state = state[key]
    try:
        module.load_state_dict(state, strict=strict)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} does not match the network in this config ({first}); "
            "were both made with the same network settings?"
        ) from e
    return module


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode and stop gradients to all of its parameters."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_frozen_vlm(vlm: nn.Module, checkpoint: str | os.PathLike, pretrain_config: str = "configs/pretrain.json") -> nn.Module:
    """Load the stage-1 vision-language model for stage 2 and freeze it.

    Args:
        vlm: the VLM built from the same settings as in stage 1.
        checkpoint: the stage-1 checkpoint (a state dict of the VLM).
        pretrain_config: the stage-1 config, named in the error message when the checkpoint is missing.

    Returns:
        the frozen VLM (eval mode, no gradients).

    Raises:
        CheckpointError: when the checkpoint is missing (with the exact command that makes it), unsafe
            or does not match.
    """
    if not Path(checkpoint).is_file():
        raise CheckpointError(
            f"no stage-1 checkpoint at {checkpoint}; train stage 1 first: "
            f"python -m monai.bundle run training --config_file {pretrain_config} --dataset_dir <same dataset>"
        )
    load_state_dict_into(vlm, checkpoint)
    return freeze(vlm)


def make_refiner(
    method: str,
    vlm: nn.Module,
    grounding_decoder: nn.Module,
    vlm_checkpoint: str | os.PathLike,
    pretrain_config: str = "configs/pretrain.json",
    device: str | torch.device = "cpu",
    vlm_image_size: int | Sequence[int] | None = None,
) -> nn.Module | None:
    """Build the VLM pseudo-label refiner for ``method == "dussss"``; ``None`` for the other methods.

    The stage-1 VLM is loaded from ``vlm_checkpoint`` and frozen; the grounding decoder stays trainable
    (it is trained by the text-guided loss in stage 2). ``vlm_image_size`` is the input size the stage-1
    image encoder was trained at: images of another size (native-resolution patches) are resized to it
    before encoding, and their text masks come back at the images' size.

    Raises:
        ConfigError: when ``method`` is unknown.
        CheckpointError: when the stage-1 checkpoint is missing (the message gives the command that makes it).
    """
    if check_method(method) != "dussss":
        return None
    from dussss_monai.refiner import VLMPseudoLabelRefiner

    load_frozen_vlm(vlm, vlm_checkpoint, pretrain_config)
    if isinstance(vlm_image_size, int):
        vlm_image_size = (vlm_image_size, vlm_image_size)
    return VLMPseudoLabelRefiner(vlm=vlm, grounding_decoder=grounding_decoder, vlm_image_size=vlm_image_size).to(device)


def make_inferer(patch_size: int | Sequence[int] | None = None, sw_batch_size: int = 4, overlap: float = 0.25):
    """The inferer that matches how a network was trained.

    Args:
        patch_size: ``None`` for a network trained on resized whole images (MONAI ``SimpleInferer``); the
            training patch size for one trained on native-resolution patches: a Gaussian-weighted
            ``SlidingWindowInferer`` with windows of that size (the nnU-Net way of predicting a large image).
        sw_batch_size: windows per forward pass.
        overlap: fraction of overlap between neighbouring windows.

    Returns:
        a :class:`monai.inferers.Inferer`.

    Raises:
        ConfigError: a patch size that is not a positive int or pair, or an overlap outside ``[0, 1)``.
    """
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    if patch_size is None:
        return SimpleInferer()
    roi = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if len(roi) != 2 or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in roi):
        raise ConfigError(f"patch_size must be a positive int or a pair of them, got {patch_size!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ConfigError(f"sliding-window overlap must be in [0, 1), got {overlap!r}")
    return SlidingWindowInferer(roi_size=roi, sw_batch_size=int(sw_batch_size), overlap=float(overlap), mode="gaussian")


def scoring_postprocessing(score_size: int | Sequence[int] | None = None, threshold: float = 0.5):
    """Validation post-processing: sigmoid, threshold, then (optionally) prediction and mask on one grid.

    The DuSSS/LViT protocol scores per-image Dice on 224 x 224 (method.md). A network trained on resized
    images already predicts on that grid; one trained on native-resolution patches predicts at native size,
    so its binary prediction and the ground-truth mask are both resized to ``score_size`` with
    nearest-neighbour interpolation (the same way for both, as method.md asks) before the metric.

    Args:
        score_size: the scoring grid, or ``None`` to score at the size the prediction has.
        threshold: foreground threshold on the sigmoid.

    Returns:
        a :class:`monai.transforms.Compose` over the ``pred`` and ``label`` keys (and ``image``, resized with them).
    """
    from monai.transforms import Activationsd, AsDiscreted, Compose

    from dussss_monai.data.transforms import Resize2Dd

    xforms = [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=float(threshold))]
    if score_size is not None:
        # the image too (bilinear), for reports that draw prediction and mask over it
        keys = ["image", "pred", "label"]
        xforms.append(Resize2Dd(keys, score_size, mask_keys=["pred", "label"], allow_missing_keys=True))
    return Compose(xforms)


#: prefixes of the per-iteration numbers of SemiSupervisedTrainer's output that are worth logging
TRAINING_SCALAR_PREFIXES = ("loss", "weight", "fg_fraction_")


def training_scalars(output: Any) -> dict[str, float]:
    """The losses, ``w(t)`` and target foreground shares of one training iteration, for ``StatsHandler`` /
    ``TensorBoardStatsHandler`` (``"output_transform": "$dussss_monai.bundle_support.training_scalars"``).

    MONAI's trainers decollate ``engine.state.output`` into one dict per image with the scalars copied into
    each, so the first dict is read; a plain dict is read as it is.

    Args:
        output: ``engine.state.output`` of :class:`~dussss_monai.engines.SemiSupervisedTrainer`.

    Returns:
        ``{name: value}`` for every scalar whose name starts with ``loss``, ``weight`` or ``fg_fraction_``
        (e.g. ``loss``, ``loss_sup``, ``loss_semi``, ``loss_merged``, ``loss_text``, ``loss_tg``,
        ``fg_fraction_text``); empty when there is no output.
    """
    if isinstance(output, (list, tuple)):
        output = output[0] if output else None
    if not isinstance(output, Mapping):
        return {}
    scalars: dict[str, float] = {}
    for name, value in output.items():
        if not isinstance(name, str) or not name.startswith(TRAINING_SCALAR_PREFIXES):
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[name] = float(value)
    return scalars


def environment_versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "monai", "numpy", "transformers", "ignite", "dussss_monai"):
        try:
            mod = __import__(name)
            versions[name] = str(getattr(mod, "__version__", "unknown"))
        except ImportError:  # pragma: no cover - optional
            continue
    versions["cuda"] = str(torch.version.cuda) if torch.cuda.is_available() else "none"
    return versions


def _command_line_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, value as typed)`` of every ``--key value`` / ``--key=value`` of a ``monai.bundle`` command line."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            key, has_eq, value = a[2:].partition("=")
            if not has_eq:
                value = argv[i + 1] if i + 1 < len(argv) else "True"
                i += 1
            pairs.append((key, value))
        i += 1
    return pairs


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse overrides that ``python -m monai.bundle`` would drop or misread without a word.

    Two spellings look right and are not:

    - ``--key None``: python-fire turns it into Python ``None``, and ``monai.bundle`` ignores every override
      whose value is ``None`` (``update_kwargs(ignore_none=True)``), so the config's own value would be used
      while the user believes it was replaced (``--pseudo_label_threshold None`` would train on hard labels).
    - ``--key false`` / ``true`` / ``null`` (JSON's spelling, as in the config files): python-fire reads them as
      the *strings* ``"false"``, ``"true"``, ``"null"``, and the string ``"false"`` is true in Python, so
      ``--use_text_loss false`` would leave L_text on.

    The bundle configs call this first in ``initialize``. A command line without ``--config_file`` (a bundle
    run from Python) is not checked.

    Args:
        argv: the command line, ``sys.argv`` when ``None``.

    Raises:
        ConfigError: naming each such override and the spelling that works: ``--key '$None'`` (a config
            expression that evaluates to ``None``), ``--key False`` / ``--key True``.
    """
    from fire.parser import DefaultParseValue

    pairs = _command_line_overrides(list(sys.argv if argv is None else argv))
    if not any(key == "config_file" for key, _ in pairs):  # not a monai.bundle command line (e.g. Python use)
        return
    problems: list[str] = []
    dropped = [key for key, value in pairs if DefaultParseValue(value) is None]
    if dropped:
        listed = ", ".join(f"--{k} None" for k in dropped)
        fixes = " ".join(f"--{k} '$None'" for k in dropped)
        problems.append(
            f"{listed}: python -m monai.bundle ignores overrides whose value is None, so the config's value would "
            f"be used instead. To set None, write {fixes}"
        )
    json_words = {"true": "True", "false": "False", "null": "'$None'"}
    misread = [
        (key, value) for key, value in pairs if value.strip().lower() in json_words and value.strip() not in ("True", "False")
    ]
    if misread:
        listed = ", ".join(f"--{k} {v}" for k, v in misread)
        fixes = " ".join(f"--{k} {json_words[v.strip().lower()]}" for k, v in misread)
        problems.append(
            f"{listed}: python-fire passes this as a string (the string 'false' counts as true), not as the JSON "
            f"value. Write {fixes} (or --key \"'text'\" if you meant the word)"
        )
    if problems:
        raise ConfigError("; ".join(problems))


def config_from_command_line(argv: Sequence[str] | None = None) -> dict | None:
    """The config a ``python -m monai.bundle run ...`` command executes: its config files merged, with the
    command-line overrides applied (expressions are kept as written, so the record can be re-run).

    Args:
        argv: the command line, ``sys.argv`` when ``None``.

    Returns:
        the merged config, or ``None`` when the command line names no config file.
    """
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    args = list(sys.argv if argv is None else argv)
    files: list[str] = []
    overrides: dict[str, Any] = {}
    skip = {"config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id"}
    for key, value in _command_line_overrides(args):
        if key == "config_file":
            v = value.strip()
            files = list(DefaultParseValue(v)) if v.startswith("[") else v.split(",")
        elif key not in skip:
            parsed = DefaultParseValue(value)
            if parsed is not None:  # monai.bundle drops None overrides; the record shows what ran
                overrides[key] = parsed
    if not files:
        return None
    try:
        parser = ConfigParser()
        parser.read_config(files)
        for key, value in overrides.items():
            parser[key.replace("#", "::")] = value
        return parser.get()
    except Exception as e:  # the run itself reports a broken config; the record must not mask that
        logger.warning("could not reconstruct the config for the run record: %s", e)
        return {"config_files": files, "overrides": overrides}


def save_run_record(output_dir: str | os.PathLike, config: Any = None, seed: int | None = None, **extra: Any) -> str:
    """Write ``run.json`` next to a run's outputs: the seed, the versions and the full resolved config.

    Args:
        output_dir: the run folder.
        config: the config (a dict, or a MONAI ``ConfigParser`` whose raw content is written).
        seed: the random seed of the run.
        extra: other JSON-serialisable facts to record.

    Returns:
        the path of the record.

    Raises:
        DuSSSError: when the folder is not writable.
    """
    folder = ensure_writable_dir(output_dir)
    content = config.get() if hasattr(config, "get") and not isinstance(config, Mapping) else config
    if content is None:
        content = config_from_command_line()
    record = {
        "seed": seed,
        "versions": environment_versions(),
        "argv": list(sys.argv),
        "config": json.loads(json.dumps(content, default=str)) if content is not None else None,
        **{k: json.loads(json.dumps(v, default=str)) for k, v in extra.items()},
    }
    try:
        return str(atomic_write_json(folder / "run.json", record))
    except DuSSSError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - defensive
        raise DuSSSError(f"could not record the run in {folder}: {e}") from e
