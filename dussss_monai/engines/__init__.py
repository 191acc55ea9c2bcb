"""Engines: EMA updates, the stage-1 VLM pre-trainer and evaluator, the stage-2 semi-supervised trainer."""

from dussss_monai.engines.ema import ema_decay
from dussss_monai.engines.ema import ema_update
from dussss_monai.engines.vlm_pretrainer import VLMEvaluator
from dussss_monai.engines.vlm_pretrainer import VLMPretrainer
from dussss_monai.engines.schedules import ConsistencyWeight
from dussss_monai.engines.schedules import sigmoid_rampup
from dussss_monai.engines.semi_supervised_trainer import METHODS
from dussss_monai.engines.semi_supervised_trainer import SemiSupervisedTrainer
from dussss_monai.engines.semi_supervised_trainer import default_epoch_length
