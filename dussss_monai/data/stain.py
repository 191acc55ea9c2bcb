"""Stain augmentation of H&E images: random scaling and shifting of the haematoxylin, eosin and residual stain
concentrations (HED jitter, Tellez et al., "Quantifying the effects of data augmentation and stain color
normalization in convolutional neural networks for computational pathology", Medical Image Analysis 2019).

An RGB image is converted to optical density ``OD = -ln(I)``, unmixed into three stain concentrations with the
stain matrix of Ruifrok & Johnston (Analytical and Quantitative Cytology and Histology, 2001), each concentration
``c`` becomes ``alpha * c + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)`` and ``beta ~ U(-sigma, sigma)``, and the
result is mixed back to RGB. Tiles from other hospitals and scanners differ in exactly these quantities, which is
why the augmentation helps a network trained on a few tiles read others.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

from dussss_monai.errors import ConfigError

__all__ = ["RandHEDJitterd", "STAIN_MATRIX"]

#: optical density of haematoxylin, eosin and DAB per unit concentration (rows), in R, G, B (Ruifrok & Johnston)
STAIN_MATRIX = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_EPS = 1e-6


class RandHEDJitterd(RandomizableTransform, MapTransform):
    """Random HED jitter of RGB images in ``[0, 1]`` (``(3, H, W)``), the same draw for every key of a sample.

    Args:
        keys: keys of the RGB images.
        sigma: the range of ``alpha - 1`` and of ``beta`` (Tellez et al.: 0.05 "light", 0.2 "strong").
        prob: probability of jittering a sample.
        allow_missing_keys: skip absent keys.

    Raises:
        ConfigError: on a negative ``sigma``; (when called) on an image without 3 channels.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self, keys: KeysCollection, sigma: float = 0.05, prob: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if sigma < 0:
            raise ConfigError(f"RandHEDJitterd: sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self._alpha = np.ones(3)
        self._beta = np.zeros(3)
        mix = STAIN_MATRIX / STAIN_MATRIX.norm(dim=1, keepdim=True)
        self._to_rgb = mix.float()
        self._to_stains = torch.linalg.inv(mix).float()

    def randomize(self, data: Any = None) -> None:
        """Draw whether to jitter, and ``alpha``, ``beta`` for the three stains."""
        super().randomize(None)
        self._alpha = self.R.uniform(1.0 - self.sigma, 1.0 + self.sigma, 3)
        self._beta = self.R.uniform(-self.sigma, self.sigma, 3)

    def jitter(self, image: torch.Tensor) -> torch.Tensor:
        """The jittered copy of one ``(3, H, W)`` image with the current draw, clipped to ``[0, 1]``."""
        if image.shape[0] != 3:
            raise ConfigError(f"RandHEDJitterd needs RGB images (3 channels), got shape {tuple(image.shape)}")
        x = torch.as_tensor(image, dtype=torch.float32)
        od = -torch.log(x.clamp_min(_EPS)).permute(1, 2, 0)  # (H, W, 3)
        stains = od @ self._to_stains
        alpha = torch.as_tensor(self._alpha, dtype=torch.float32)
        beta = torch.as_tensor(self._beta, dtype=torch.float32)
        rgb = torch.exp(-((stains * alpha + beta) @ self._to_rgb))
        return rgb.permute(2, 0, 1).clamp(0.0, 1.0).contiguous()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key])
        return d
