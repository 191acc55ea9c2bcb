"""The settings that build a trained network travel with its weights.

Training writes ``model.json`` beside ``model.pt``: the settings its network and its input pipeline were built with
(:data:`MODEL_SETTINGS`: channels, sizes, the U-Net's shape, the intensity window and slice axis of volumes). The file
is a MONAI config layer, so it can be added to any command
(``--config_file "['configs/inference.json','runs/x/models/model.json']"``, e.g. for ``ckpt_export``), and
evaluation and inference read it by themselves (:func:`apply_model_record`): a model trained with other network
settings than a config's defaults is used without repeating them. A setting given on the command line that differs
from the record is refused, naming each difference, instead of failing later on a page of tensor-shape mismatches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dussss_monai.errors import CheckpointError, ConfigError
from dussss_monai.utils.io import atomic_write_json

__all__ = ["MODEL_SETTINGS", "model_record_path", "write_model_record", "read_model_record", "apply_model_record"]

#: the settings a student network and its input pipeline are built from
MODEL_SETTINGS = (
    "in_channels",
    "image_size",
    "patch_size",
    "score_size",
    "unet_channels",
    "unet_strides",
    "unet_norm",
    "intensity_window",
    "slice_axis",
)


def model_record_path(checkpoint: str | os.PathLike) -> Path:
    """The record of a checkpoint: ``model.pt`` -> ``model.json`` in the same folder."""
    return Path(checkpoint).with_suffix(".json")


def write_model_record(checkpoint: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """Write the record of the network that ``checkpoint`` will hold (atomically).

    Args:
        checkpoint: the model file (it need not exist yet).
        settings: the values of :data:`MODEL_SETTINGS` (other keys are ignored).

    Returns:
        the record's path.
    """
    record = {k: settings[k] for k in MODEL_SETTINGS if k in settings}
    return atomic_write_json(model_record_path(checkpoint), record)


def read_model_record(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The settings recorded beside ``checkpoint``; ``{}`` where there is no record (a model from elsewhere).

    Raises:
        CheckpointError: the record exists but is not a JSON object.
    """
    path = model_record_path(checkpoint)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: the model's record is unreadable ({e}); delete it or restore it") from e
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: the model's record must be a JSON object of settings")
    return {k: v for k, v in record.items() if k in MODEL_SETTINGS}


def apply_model_record(
    checkpoint: str | os.PathLike, parser: Any = None, overridden: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Set a config's network settings to those recorded beside ``checkpoint`` (a step of ``initialize`` in the
    evaluation and inference configs, right after :func:`~dussss_monai.bundle.cli.prepare_run`).

    Args:
        checkpoint: the model file the run loads.
        parser: the run's ``monai.bundle.ConfigParser`` (default: the running workflow's); each recorded setting the
            config has is set to the record's value.
        overridden: the settings given on the command line or in the Python call (default: those of the running
            command); each must agree with the record.

    Returns:
        the settings applied.

    Raises:
        ConfigError: an overridden setting differs from the record (each difference named, with the fix).
    """
    from dussss_monai.bundle.cli import run_arguments, running_workflow

    if parser is None:
        workflow = running_workflow()
        parser = workflow.parser if workflow is not None else None
    if overridden is None:
        arguments = run_arguments()
        overridden = arguments[1] if arguments is not None else {}
    record = read_model_record(checkpoint)
    differ = [
        f"{k}={json.dumps(overridden[k])} (the model was trained with {json.dumps(v)})"
        for k, v in record.items()
        if k in overridden and json.dumps(overridden[k]) != json.dumps(v)
    ]
    if differ:
        raise ConfigError(
            f"{checkpoint} was trained with other network settings than this command gives: {'; '.join(differ)}. "
            f"Leave these settings out: they are read from {model_record_path(checkpoint)}"
        )
    applied: dict[str, Any] = {}
    if parser is None:
        return applied
    for key, value in record.items():
        if key in parser:
            parser[key] = value
            applied[key] = value
    return applied
