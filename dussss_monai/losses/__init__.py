"""Losses: semantic similarity supervision, dual contrastive, text-guided, f_g's objective, segmentation and
consistency losses."""

from dussss_monai.losses.consistency import ProbabilityMSELoss
from dussss_monai.losses.dual_contrastive import DualContrastiveLoss, positive_targets, soft_info_nce
from dussss_monai.losses.grounding import GroundingDecoderLoss
from dussss_monai.losses.segmentation import SegmentationLoss, class_balanced_bce_with_logits
from dussss_monai.losses.semantic_similarity import (
    SemanticSimilarity,
    SemanticSimilaritySupervision,
    semantic_similarity_supervision,
)
from dussss_monai.losses.text_guided import TextGuidedLoss, mask_pool

__all__ = [
    "DualContrastiveLoss",
    "GroundingDecoderLoss",
    "ProbabilityMSELoss",
    "SegmentationLoss",
    "SemanticSimilarity",
    "SemanticSimilaritySupervision",
    "TextGuidedLoss",
    "class_balanced_bce_with_logits",
    "mask_pool",
    "positive_targets",
    "semantic_similarity_supervision",
    "soft_info_nce",
]
