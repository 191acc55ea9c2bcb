"""dussss-monai: semi-supervised, text-guided medical image segmentation (DuSSS, AAAI-25) for MONAI.

Sub-packages, one concept each:

- :mod:`dussss_monai.data`: LViT-layout reader, datalists and splits, dataset checks, 2D transforms,
  the demo-data generator.
- :mod:`dussss_monai.networks`: text encoder, image encoder, stage-1 vision-language model,
  grounding decoder.
- :mod:`dussss_monai.losses`: semantic similarity supervision, dual contrastive, text-guided and
  segmentation losses.
- :mod:`dussss_monai.refiner`: the VLM pseudo-label refiner.
- :mod:`dussss_monai.engines`: the stage-1 trainer and the semi-supervised (mean-teacher) trainer.
- :mod:`dussss_monai.handlers`: Ignite handlers (safe checkpoint loading, retrieval metrics, ...).
- :mod:`dussss_monai.utils`: atomic file writing and safe checkpoint loading.
"""

from dussss_monai.errors import CheckpointError, ConfigError, DatasetError, DuSSSError

__version__ = "0.4.1"

__all__ = ["__version__", "DuSSSError", "DatasetError", "CheckpointError", "ConfigError"]
