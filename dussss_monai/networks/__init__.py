"""Networks: text encoder, image encoder, stage-1 vision-language model, grounding decoder."""

from dussss_monai.networks.image_encoder import ImageEncoding
from dussss_monai.networks.image_encoder import ConvImageEncoder
from dussss_monai.networks.image_encoder import build_image_encoder
from dussss_monai.networks.image_encoder import ViTImageEncoder
from dussss_monai.networks.text_encoder import CachedTextEncoder
from dussss_monai.networks.text_encoder import HFTextEncoder
from dussss_monai.networks.text_encoder import TextEncoding
from dussss_monai.networks.text_encoder import default_text_model_path
from dussss_monai.networks.text_encoder import sentence_transformers_pooling
from dussss_monai.networks.vlm import DuSSSVisionLanguageModel
from dussss_monai.networks.vlm import GaussianHead
from dussss_monai.networks.vlm import ModalityFeatures
from dussss_monai.networks.grounding_decoder import GroundingDecoder
from dussss_monai.networks.grounding_decoder import UpResidualBlock
