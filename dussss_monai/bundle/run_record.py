"""What a bundle run records: ``run.json`` (seed, versions, resolved config) and the per-iteration scalars of the
training log."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

import torch

from dussss_monai.bundle.cli import config_from_command_line
from dussss_monai.errors import DuSSSError
from dussss_monai.utils.io import atomic_write_json, ensure_writable_dir

__all__ = ["training_scalars", "environment_versions", "save_run_record"]

#: prefixes of the per-iteration numbers of the stage-2 trainers' output that are worth logging
TRAINING_SCALAR_PREFIXES = ("loss", "weight", "fg_fraction_")


def training_scalars(output: Any) -> dict[str, float]:
    """The losses, ``w(t)`` and target foreground shares of one training iteration, for ``StatsHandler`` /
    ``TensorBoardStatsHandler`` (``"output_transform": "$dussss_monai.bundle.training_scalars"``).

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
