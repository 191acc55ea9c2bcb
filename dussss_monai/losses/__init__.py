"""Losses: semantic similarity supervision, dual contrastive, text-guided, segmentation and consistency losses."""

from dussss_monai.losses.consistency import ProbabilityMSELoss
from dussss_monai.losses.dual_contrastive import DualContrastiveLoss
from dussss_monai.losses.dual_contrastive import positive_targets
from dussss_monai.losses.dual_contrastive import soft_info_nce
from dussss_monai.losses.semantic_similarity import SemanticSimilarity
from dussss_monai.losses.semantic_similarity import SemanticSimilaritySupervision
from dussss_monai.losses.semantic_similarity import semantic_similarity_supervision
from dussss_monai.losses.segmentation import SegmentationLoss
from dussss_monai.losses.segmentation import class_balanced_bce_with_logits
from dussss_monai.losses.text_guided import TextGuidedLoss
from dussss_monai.losses.text_guided import mask_pool
