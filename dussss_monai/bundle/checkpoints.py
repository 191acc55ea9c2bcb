"""Checkpoints of bundle runs: finding the latest training checkpoint, loading a state dict safely, the
stage-1 model for stage 2, and the objects a stage-2 checkpoint holds."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from dussss_monai.bundle.cli import stage1_command
from dussss_monai.bundle.model_record import model_record_path
from dussss_monai.errors import CheckpointError
from dussss_monai.utils.io import safe_torch_load, state_dict_mismatch

__all__ = ["latest_checkpoint", "load_state_dict_into", "load_stage1_model", "checkpoint_objects"]


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "*.pt") -> str | None:
    """Return the most recently written checkpoint in ``folder`` (by modification time), or ``None``."""
    p = Path(folder)
    if not p.is_dir():
        return None
    files = [f for f in p.glob(pattern) if f.is_file() and not f.name.startswith(".")]
    if not files:
        return None
    return str(max(files, key=lambda f: (f.stat().st_mtime, f.name)))


def load_state_dict_into(
    module: nn.Module, path: str | os.PathLike, key: str | None = None, strict: bool = True
) -> nn.Module:
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
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"checkpoint {path} is not a state dict of a network (it holds {type(state).__name__})")
    try:
        module.load_state_dict(state, strict=strict)
    except (RuntimeError, KeyError, TypeError) as e:
        record = model_record_path(path)
        hint = (
            f"its network settings are in {record}; leave the network settings out of the command to use them"
            if record.is_file()
            else f"it has no record of its network settings ({record.name}): give the settings it was trained with "
            "(--unet_channels, --unet_strides, --unet_norm, --in_channels)"
        )
        raise CheckpointError(
            f"checkpoint {path} holds another network than this config builds ({state_dict_mismatch(e)}); {hint}"
        ) from e
    return module


def load_stage1_model(vlm: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """Load the stage-1 vision-language model for stage 2.

    Args:
        vlm: the VLM built from the same settings as in stage 1.
        checkpoint: the stage-1 checkpoint (a state dict of the VLM).

    Returns:
        ``vlm`` with the checkpoint's weights (the refiner freezes it).

    Raises:
        CheckpointError: when the checkpoint is missing (with the command that makes it), unsafe or does not match.
    """
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"no stage-1 checkpoint at {checkpoint}; train stage 1 first: {stage1_command()}")
    return load_state_dict_into(vlm, checkpoint)


def checkpoint_objects(trainer: Any, **extra: Any) -> dict[str, Any]:
    """Everything a checkpoint needs to resume a stage-2 training, for ``CheckpointSaver`` / ``SafeCheckpointLoader``.

    Args:
        trainer: a ``SupervisedTrainer``, :class:`~dussss_monai.engines.MeanTeacherTrainer` or
            :class:`~dussss_monai.engines.DuSSSTrainer`.
        extra: more objects with ``state_dict`` (e.g. ``lr_scheduler=...``); ``None`` values are skipped.

    Returns:
        ``{"network", "optimizer", "trainer"}`` plus ``"teacher"``, ``"grounding_decoder"`` and
        ``"decoder_optimizer"`` where the trainer has them, plus ``extra``.
    """
    objects: dict[str, Any] = {"network": trainer.network, "optimizer": trainer.optimizer, "trainer": trainer}
    for key in ("teacher", "grounding_decoder", "decoder_optimizer"):
        if getattr(trainer, key, None) is not None:
            objects[key] = getattr(trainer, key)
    objects.update({k: v for k, v in extra.items() if v is not None})
    return objects
