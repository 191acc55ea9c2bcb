"""Stain transfer of H&E images toward the stains of other tiles (Macenko et al., "A method for normalizing
histology slides for quantitative analysis", ISBI 2009), as augmentation of the labeled crops.

A few labeled tiles carry a few stains; the unlabeled tiles of a semi-supervised split usually carry others (other
organs, hospitals, scanners). :func:`he_stain_references` estimates each unlabeled tile's H&E stain matrix (the
optical density of haematoxylin and eosin per unit concentration, MONAI's ``ExtractHEStains``) and its maximal
concentrations (99th percentile); :class:`RandStainTransferd` re-stains a labeled crop with one of those references
(:func:`restain`: unmix the crop with the stain of the tile it was cut from, :class:`EstimateHEStaind`, scale its
concentrations by the ratio of the reference's maxima to the tile's, mix back with the reference's matrix and add
what the two stains did not explain). Both stains are estimated on whole tiles, so a crop with few nuclei keeps few
nuclei: a crop's own maxima depend on what it shows, a tile's much less. The mask stays right, since no pixel
moves, and the student learns the labeled nuclei in the unlabeled tiles' colours: the stain variation of the
unlabeled set is used with ground truth, not only through pseudo labels. ``docs/method.md``, "What the paper leaves
open, and what we chose".
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.apps.pathology.transforms.stain.array import ExtractHEStains
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

from dussss_monai.data.image_io import read_image_2d
from dussss_monai.errors import ConfigError, DatasetError

__all__ = [
    "HEStain",
    "estimate_he_stain",
    "he_stain_references",
    "restain",
    "EstimateHEStaind",
    "RandStainTransferd",
    "STAIN_KEY",
]

#: transmitted light intensity of the 8-bit images (MONAI's ``tli``): a white pixel has no absorbance
LIGHT_INTENSITY = 255.0
#: percentile of the stain concentrations taken as their maximum (Macenko et al.)
MAX_PERCENTILE = 99.0
#: where :class:`EstimateHEStaind` leaves a tile's stain for :class:`RandStainTransferd`
STAIN_KEY = "image_stain"


@dataclass(frozen=True)
class HEStain:
    """The stain of one H&E image.

    Attributes:
        matrix: ``(3, 2)`` optical density of the two stains per unit concentration (columns) in R, G, B, in
            the order MONAI's ``ExtractHEStains`` gives them (the same rule for every image, so a transfer maps each
            stain onto its counterpart).
        max_concentration: ``(2,)`` the 99th percentile of each stain's concentration over the image.
    """

    matrix: np.ndarray
    max_concentration: np.ndarray


def _to_uint8_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in ``[0, 1]`` to the ``(H, W, 3)`` ``uint8`` array MONAI's stain transforms read."""
    arr = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ConfigError(f"stain transfer needs RGB images (3, H, W), got shape {tuple(arr.shape)}")
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)


def _optical_density(pixels: np.ndarray) -> np.ndarray:
    """``-ln(I / I_0)`` of ``(3, H, W)`` 8-bit intensities, as MONAI's stain transforms compute it."""
    return -np.log((pixels.astype(np.float32) + 1.0).clip(max=LIGHT_INTENSITY) / LIGHT_INTENSITY)


def estimate_he_stain(image: np.ndarray | torch.Tensor, alpha: float = 1.0, beta: float = 0.15) -> HEStain:
    """The H&E stain matrix (Macenko, MONAI's ``ExtractHEStains``) and maximal concentrations of one image.

    Args:
        image: RGB image ``(3, H, W)`` in ``[0, 1]``.
        alpha: percentile tolerance of the extreme stain angles (Macenko's alpha).
        beta: optical density below which a pixel counts as background (Macenko's beta).

    Returns:
        the image's :class:`HEStain`.

    Raises:
        ConfigError: an image without 3 channels.
        ValueError: an image without stained pixels (every optical density below ``beta``).
    """
    pixels = _to_uint8_hwc(image)
    matrix = np.asarray(ExtractHEStains(tli=LIGHT_INTENSITY, alpha=alpha, beta=beta)(pixels), dtype=np.float32)
    concentration = np.linalg.pinv(matrix) @ _optical_density(pixels.transpose(2, 0, 1)).reshape(3, -1)
    maxima = np.percentile(concentration, MAX_PERCENTILE, axis=1).astype(np.float32)
    return HEStain(matrix=matrix, max_concentration=maxima)


def he_stain_references(
    images: Sequence[str | os.PathLike | Mapping[str, Any]], transfer_prob: float = 1.0
) -> list[HEStain]:
    """The stain of every image of ``images`` (e.g. the unlabeled training tiles), for :class:`RandStainTransferd`.

    Args:
        images: RGB H&E image files, or datalist items (their ``image``).
        transfer_prob: the probability the stains will be transferred with; 0 computes none (the transfer is off).

    Returns:
        one :class:`HEStain` per file, in order (empty for no files, or a ``transfer_prob`` of 0).

    Raises:
        DatasetError: a file that cannot be read, or whose stain cannot be estimated (no stained pixels), named
            with the fix.
    """
    if transfer_prob == 0:
        return []
    references = []
    for image in images:
        path = image["image"] if isinstance(image, Mapping) else image
        try:
            references.append(estimate_he_stain(read_image_2d(path, channels=3)))
        except (ValueError, np.linalg.LinAlgError) as e:
            raise DatasetError(
                f"{path}: cannot estimate its H&E stain for stain transfer ({e}); remove the image from the unlabeled "
                "list or set stain_transfer_prob to 0"
            ) from e
    return references


def restain(image: np.ndarray | torch.Tensor, source: HEStain, target: HEStain) -> torch.Tensor:
    """``image``, stained as ``source``, re-stained as ``target``.

    With the optical density ``OD`` of each pixel, ``c = pinv(M_s) OD`` (the two concentrations),
    ``OD' = M_t (c * m_t / m_s) + (OD - M_s c)`` for the stain matrices ``M`` and maximal concentrations ``m`` of
    the two stains (the last term keeps what ``M_s`` does not explain), and ``I' = I_0 exp(-OD')``.

    Args:
        image: RGB image ``(3, H, W)`` in ``[0, 1]``.
        source: the stain of ``image`` (or of the tile it was cut from).
        target: the stain to give it.

    Returns:
        the re-stained image, ``float32`` ``(3, H, W)`` in ``[0, 1]``.

    Raises:
        ConfigError: an image without 3 channels.
    """
    pixels = _to_uint8_hwc(image).transpose(2, 0, 1)
    density = _optical_density(pixels).reshape(3, -1)
    concentration = np.linalg.pinv(source.matrix) @ density
    residual = density - source.matrix @ concentration
    scale = (target.max_concentration / np.maximum(source.max_concentration, 1e-6))[:, None]
    restained = target.matrix @ (concentration * scale) + residual
    intensity = (LIGHT_INTENSITY * np.exp(-restained) - 1.0) / 255.0
    out = np.clip(intensity, 0.0, 1.0).reshape(pixels.shape).astype(np.float32)
    return torch.from_numpy(out)


class EstimateHEStaind(MapTransform):
    """Write the stain of the whole image ``key`` (:func:`estimate_he_stain`) to ``stain_key``, before cropping,
    for :class:`RandStainTransferd`; ``None`` where it cannot be estimated. Deterministic, so a ``CacheDataset``
    computes it once per image.

    Args:
        key: the RGB image.
        stain_key: where to write its :class:`HEStain`.
    """

    def __init__(self, key: str = "image", stain_key: str = STAIN_KEY) -> None:
        super().__init__([key])
        self.stain_key = stain_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[self.stain_key] = estimate_he_stain(d[key])
            except (ValueError, np.linalg.LinAlgError):
                d[self.stain_key] = None
        return d


class RandStainTransferd(RandomizableTransform, MapTransform):
    """Re-stain RGB images in ``[0, 1]`` (``(3, H, W)``) with a random reference stain (module docstring).

    Each call draws one reference for every key of the sample. The source stain is the sample's ``stain_key``
    (:class:`EstimateHEStaind` on the whole tile), which this transform removes from the sample so that it never
    reaches the batch; without it the image's own stain is estimated. An image whose stain is unknown and cannot be
    estimated (background only) is left as it is.

    Args:
        keys: keys of the RGB images.
        references: the stains to transfer to (:func:`he_stain_references`); none: the transform does nothing.
        prob: probability of re-staining a sample.
        stain_key: the key of the source stain.
        allow_missing_keys: skip absent keys.

    Raises:
        ConfigError: (when called) on an image without 3 channels.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection,
        references: Sequence[HEStain],
        prob: float = 0.5,
        stain_key: str = STAIN_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.references = list(references)
        self.stain_key = stain_key
        self._index = 0

    def randomize(self, data: Any = None) -> None:
        """Draw whether to re-stain, and which reference."""
        super().randomize(None)
        self._index = int(self.R.randint(len(self.references))) if self.references else 0

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        has_source = self.stain_key in d
        source = d.pop(self.stain_key, None)
        self.randomize()
        if not self._do_transform or not self.references:
            return d
        reference = self.references[self._index]
        for key in self.key_iterator(d):
            stain = source
            if stain is None and not has_source:
                try:
                    stain = estimate_he_stain(d[key])
                except (ValueError, np.linalg.LinAlgError):
                    stain = None
            if stain is not None:
                d[key] = restain(d[key], stain, reference)
        return d
