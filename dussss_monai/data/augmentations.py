"""Colour augmentations of the images (never of the masks): H&E stain transfer and stain jitter for labeled crops,
and the student's strong view of unlabeled ones. None moves a pixel, so a mask or a pseudo label computed on the
weak view stays right for the strong one."""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    MapTransform,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    ScaleIntensityRanged,
)

from dussss_monai.data.stain import RandHEDJitterd
from dussss_monai.data.stain_transfer import HEStain, RandStainTransferd
from dussss_monai.errors import ConfigError

__all__ = ["clip_to_unit_range", "colour_augmentations", "strong_view_augmentations"]


def clip_to_unit_range(keys: list[str] | tuple[str, ...], allow_missing_keys: bool = False) -> list[MapTransform]:
    """Clip images to ``[0, 1]`` after interpolation or intensity jitter (MONAI's ``ScaleIntensityRanged``)."""
    if not keys:
        return []
    return [ScaleIntensityRanged(list(keys), 0.0, 1.0, 0.0, 1.0, clip=True, allow_missing_keys=allow_missing_keys)]


def colour_augmentations(
    key: str,
    stain_jitter: float = 0.0,
    stain_references: Sequence[HEStain] = (),
    stain_transfer_prob: float = 0.0,
) -> list[MapTransform]:
    """Colour augmentation of an H&E image: with probability ``stain_transfer_prob`` a transfer to one of
    ``stain_references`` (:class:`~dussss_monai.data.stain_transfer.RandStainTransferd`; none: no transfer), then HED
    stain jitter of ``stain_jitter`` (0: none), then clipping.

    Raises:
        ConfigError: a ``stain_transfer_prob`` outside ``[0, 1]``.
    """
    out = _stain_augmentations(key, stain_jitter, 1.0, stain_references, stain_transfer_prob, "stain_transfer_prob")
    return out + clip_to_unit_range([key]) if out else []


def _stain_augmentations(
    key: str,
    stain_jitter: float,
    jitter_prob: float,
    stain_references: Sequence[HEStain],
    stain_transfer_prob: float,
    name: str,
) -> list[MapTransform]:
    """A stain transfer (probability ``stain_transfer_prob``; no references: none), then HED stain jitter of
    ``stain_jitter`` (probability ``jitter_prob``; 0: none).

    Raises:
        ConfigError: a ``stain_transfer_prob`` outside ``[0, 1]``, named ``name`` in the message.
    """
    if not 0.0 <= float(stain_transfer_prob) <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {stain_transfer_prob}")
    out: list[MapTransform] = []
    if stain_transfer_prob > 0 and len(stain_references) > 0:
        out.append(RandStainTransferd(key, stain_references, prob=float(stain_transfer_prob)))
    if stain_jitter > 0:
        out.append(RandHEDJitterd(key, sigma=stain_jitter, prob=jitter_prob))
    return out


def strong_view_augmentations(
    key: str,
    stain_jitter: float = 0.0,
    stain_references: Sequence[HEStain] = (),
    stain_transfer_prob: float = 0.0,
) -> list[MapTransform]:
    """The student's strong view of an unlabeled image (FixMatch / UniMatch style, colour and blur only, so that the
    pixels stay where the teacher's pseudo label puts them): with probability ``stain_transfer_prob`` a transfer to
    one of ``stain_references`` (RGB H&E only; the teacher keeps the tile's own stain, so the consistency loss asks
    for the same nuclei under another tile's stain), stain jitter of ``stain_jitter`` (RGB only; 0: none),
    brightness and contrast, Gaussian blur and noise, then clipping.

    Raises:
        ConfigError: a ``stain_transfer_prob`` outside ``[0, 1]``.
    """
    name = "strong view: stain_transfer_prob"
    return _stain_augmentations(key, stain_jitter, 0.8, stain_references, stain_transfer_prob, name) + [
        RandScaleIntensityd(key, factors=0.3, prob=0.8),
        RandAdjustContrastd(key, gamma=(0.5, 2.0), prob=0.8),
        RandGaussianSmoothd(key, sigma_x=(0.25, 1.5), sigma_y=(0.25, 1.5), prob=0.5),
        RandGaussianNoised(key, std=0.03, prob=0.3),
        *clip_to_unit_range([key]),
    ]
