"""What a bundle run logs and records besides its models: the per-iteration scalars of the training log and the
versions of the software (``run.json`` is written by :class:`~dussss_monai.bundle.run_folder.RunFolder`)."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["training_scalars", "environment_versions"]

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
