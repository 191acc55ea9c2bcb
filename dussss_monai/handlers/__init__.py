"""Ignite handlers attached to engines by the configs: checkpoints, the non-finite loss guard, the progress line,
the evaluation report and the mask writer."""

from dussss_monai.handlers.checkpoint import AtomicCheckpointSaver, AtomicDiskSaver, SafeCheckpointLoader, save_atomic
from dussss_monai.handlers.mask_writer import MaskWriter
from dussss_monai.handlers.nonfinite import NonFiniteLossGuard
from dussss_monai.handlers.progress import EpochProgress
from dussss_monai.handlers.segmentation_report import SegmentationReport

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "EpochProgress",
    "MaskWriter",
    "NonFiniteLossGuard",
    "SafeCheckpointLoader",
    "SegmentationReport",
    "save_atomic",
]
