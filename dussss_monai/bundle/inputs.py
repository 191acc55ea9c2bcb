"""Cheap checks of a run's inputs before anything is loaded: a missing dataset or checkpoint fails in the first
second, with the fix, instead of after the text encoder and the dataset have been read."""

from __future__ import annotations

import os
from pathlib import Path

from dussss_monai.bundle.cli import stage1_command
from dussss_monai.errors import CheckpointError, DatasetError

__all__ = ["check_inputs", "check_stage2_inputs"]


def check_inputs(
    dataset_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    make_checkpoint: str | None = None,
    dataset_option: str = "--dataset_dir",
) -> None:
    """Check that the named inputs exist.

    Args:
        dataset_dir: a dataset folder (LViT layout), datalist file or folder of images; ``None``: not checked.
        checkpoint: a checkpoint file the run loads; ``None``: not checked.
        make_checkpoint: the command that makes ``checkpoint``, given in the message when it is missing.
        dataset_option: the command-line option that names ``dataset_dir``, given in the message.

    Raises:
        DatasetError: when ``dataset_dir`` does not exist.
        CheckpointError: when ``checkpoint`` does not exist.
    """
    if dataset_dir is not None and not Path(dataset_dir).exists():
        raise DatasetError(
            f"{dataset_dir} does not exist: pass {dataset_option} <an existing folder or datalist .json/.csv>",
            header="no input data",
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        how = f"; make it first: {make_checkpoint}" if make_checkpoint else ""
        raise CheckpointError(f"no checkpoint at {checkpoint}{how}")


def check_stage2_inputs(dataset_dir: str | os.PathLike, stage1_checkpoint: str | os.PathLike | None = None) -> None:
    """:func:`check_inputs` of a stage-2 run: the dataset and, for a method that reads the stage-1 model (DuSSS),
    its checkpoint; the message gives the stage-1 command of the same bundle and dataset."""
    check_inputs(dataset_dir, stage1_checkpoint, stage1_command(dataset_dir))
