"""Networks: text encoder, image encoder, stage-1 vision-language model, grounding decoder."""

from dussss_monai.networks.grounding_decoder import GroundingDecoder, UpResidualBlock
from dussss_monai.networks.image_encoder import ConvImageEncoder, ImageEncoding, ViTImageEncoder, build_image_encoder
from dussss_monai.networks.text_encoder import (
    CachedTextEncoder,
    HFTextEncoder,
    TextEncoding,
    default_text_model_path,
    sentence_transformers_pooling,
)
from dussss_monai.networks.vlm import DuSSSVisionLanguageModel, GaussianHead, ModalityFeatures

__all__ = [
    "CachedTextEncoder",
    "ConvImageEncoder",
    "DuSSSVisionLanguageModel",
    "GaussianHead",
    "GroundingDecoder",
    "HFTextEncoder",
    "ImageEncoding",
    "ModalityFeatures",
    "TextEncoding",
    "UpResidualBlock",
    "ViTImageEncoder",
    "build_image_encoder",
    "default_text_model_path",
    "sentence_transformers_pooling",
]
