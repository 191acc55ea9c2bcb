"""Ignite handlers: retrieval recall metric, safe checkpoint loading, non-finite loss guard, progress line, reports."""

from dussss_monai.handlers.checkpoint import AtomicCheckpointSaver, AtomicDiskSaver, SafeCheckpointLoader, save_atomic
from dussss_monai.handlers.mask_writer import MaskWriter
from dussss_monai.handlers.nonfinite import NonFiniteLossGuard, check_finite_losses
from dussss_monai.handlers.progress import EpochProgress
from dussss_monai.handlers.retrieval import RetrievalRecall, retrieval_chance, retrieval_recall
from dussss_monai.handlers.segmentation_report import SegmentationReport

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "EpochProgress",
    "MaskWriter",
    "NonFiniteLossGuard",
    "RetrievalRecall",
    "SafeCheckpointLoader",
    "SegmentationReport",
    "check_finite_losses",
    "retrieval_chance",
    "retrieval_recall",
    "save_atomic",
]
