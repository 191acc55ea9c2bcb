"""Metrics the engines compute: image-text retrieval recall of the stage-1 vision-language model."""

from dussss_monai.metrics.retrieval import RETRIEVAL_DIRECTIONS, RetrievalRecall, retrieval_chance, retrieval_recall

__all__ = ["RETRIEVAL_DIRECTIONS", "RetrievalRecall", "retrieval_chance", "retrieval_recall"]
