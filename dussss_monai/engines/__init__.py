"""Engines: the stage-1 VLM pre-trainer and evaluator, the stage-2 trainers and what they share.

Stage 2 is a family of MONAI trainers: supervised training is MONAI's ``SupervisedTrainer``;
:class:`MeanTeacherTrainer` adds the unlabeled stream, the EMA teacher and the consistency term;
:class:`DuSSSTrainer` overrides its pseudo-label hook with the VLM refiner and trains f_g.
"""

from dussss_monai.engines.batches import LabeledBatch, PseudoLabels, StudentView, UnlabeledBatch
from dussss_monai.engines.dussss_trainer import DuSSSTrainer
from dussss_monai.engines.feature_perturbation import FeatureDropout
from dussss_monai.engines.mean_teacher_trainer import MeanTeacherTrainer
from dussss_monai.engines.schedules import ConsistencyWeight, ema_decay, sigmoid_rampup
from dussss_monai.engines.student_views import CopyPaste, CutMix
from dussss_monai.engines.unlabeled_stream import UnlabeledStream
from dussss_monai.engines.vlm_pretrainer import VLMEvaluator, VLMPretrainer

__all__ = [
    "ConsistencyWeight",
    "CopyPaste",
    "CutMix",
    "DuSSSTrainer",
    "FeatureDropout",
    "LabeledBatch",
    "MeanTeacherTrainer",
    "PseudoLabels",
    "StudentView",
    "UnlabeledBatch",
    "UnlabeledStream",
    "VLMEvaluator",
    "VLMPretrainer",
    "ema_decay",
    "sigmoid_rampup",
]
