"""Ignite handlers: retrieval recall metric, safe checkpoint loading, non-finite loss guard."""

from dussss_monai.handlers.retrieval import RetrievalRecall
from dussss_monai.handlers.retrieval import retrieval_chance
from dussss_monai.handlers.retrieval import retrieval_recall
from dussss_monai.handlers.checkpoint import SafeCheckpointLoader
from dussss_monai.handlers.checkpoint import save_atomic
from dussss_monai.handlers.nonfinite import NonFiniteLossGuard
from dussss_monai.handlers.nonfinite import check_finite_losses
from dussss_monai.handlers.segmentation_report import SegmentationReport
from dussss_monai.handlers.mask_writer import MaskWriter
from dussss_monai.handlers.checkpoint import AtomicCheckpointSaver
from dussss_monai.handlers.checkpoint import AtomicDiskSaver
