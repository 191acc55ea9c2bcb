"""CutMix of a batch for semi-supervised segmentation (French et al., "Semi-supervised semantic segmentation
needs strong, varied perturbations", BMVC 2020).

The student sees ``x_mix = M * x[pair] + (1 - M) * x``: each image gets one rectangle pasted from another image
of the batch. Its consistency target is mixed the same way from the pseudo labels of the CLEAN images, so the
student must predict, for every pixel, what the teacher predicts for that pixel in its own image. French et
al. show that mean-teacher consistency on segmentation needs such a perturbation to help.

``monai.transforms.CutMix`` is not used: it places every box of a batch at one shared corner and clips the box
at the image border (so boxes gather in the lower right and are mostly smaller than drawn), and it indexes with
a list, which torch deprecates. Here every image gets its own box, inside the image, with its own area and
aspect ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dussss_monai.errors import ConfigError

__all__ = ["BatchCutMix", "box_mask", "draw_cutmix"]


@dataclass(frozen=True)
class BatchCutMix:
    """One draw of CutMix for a batch: the boxes and the pairing, applicable to any tensor of the batch.

    Attributes:
        mask: ``(B, 1, H, W)`` float, 1 inside image ``i``'s box (the pasted region), 0 elsewhere.
        partner: ``(B,)`` long, the image whose content is pasted into image ``i``; never ``i`` itself.
    """

    mask: torch.Tensor
    partner: torch.Tensor

    def apply(self, data: torch.Tensor) -> torch.Tensor:
        """``mask * data[partner] + (1 - mask) * data`` for ``data`` of shape ``(B, C, H, W)``.

        Raises:
            ValueError: when ``data``'s batch size or spatial shape differs from the draw's.
        """
        if data.shape[0] != self.mask.shape[0] or tuple(data.shape[2:]) != tuple(self.mask.shape[2:]):
            raise ValueError(
                f"CutMix was drawn for a batch of shape {tuple(self.mask.shape)} (B, 1, H, W); got {tuple(data.shape)}"
            )
        mask = self.mask.to(device=data.device, dtype=data.dtype)
        return mask * data[self.partner.to(data.device)] + (1 - mask) * data


def box_mask(
    rows: torch.Tensor,
    cols: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    box_h: torch.Tensor | int,
    box_w: torch.Tensor | int,
) -> torch.Tensor:
    """One box per image as a mask: ``(B, 1, H, W)`` float, 1 where ``top <= row < top + box_h`` and
    ``left <= col < left + box_w`` (``rows``, ``cols``: the ``H`` and ``W`` coordinates, in the boxes' units)."""
    inside_y = (rows[None] >= top[:, None]) & (rows[None] < (top + box_h)[:, None])
    inside_x = (cols[None] >= left[:, None]) & (cols[None] < (left + box_w)[:, None])
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]


def draw_cutmix(
    batch_size: int,
    spatial_size: Sequence[int],
    area_range: Sequence[float] = (0.25, 0.5),
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> BatchCutMix:
    """Draw one rectangle per image and a pairing without fixed points.

    Each box has an area fraction ``a ~ U(area_range)`` of the image and an aspect ratio ``r`` with
    ``log r ~ U(log(a), -log(a))`` (so that both sides fit), and lies wholly inside the image at a uniform
    position. The pairing is a random cyclic order of the batch, so no image is mixed with itself.

    Args:
        batch_size: number of images, at least 2.
        spatial_size: ``(H, W)``.
        area_range: ``(low, high)`` area fraction of the pasted box, ``0 < low <= high < 1``. French et al.
            use a box of about half the image.
        device: where the mask and pairing are created.
        generator: torch generator for the draws; default torch's global one (seeded by ``set_determinism``).

    Returns:
        a :class:`BatchCutMix`.

    Raises:
        ConfigError: on a batch of fewer than 2 images, a spatial size that is not 2-D, or a bad ``area_range``.
    """
    if batch_size < 2:
        raise ConfigError(f"CutMix needs at least 2 images in a batch, got {batch_size}")
    if len(spatial_size) != 2:
        raise ConfigError(f"CutMix supports 2-D images (H, W), got spatial size {tuple(spatial_size)}")
    low, high = (float(v) for v in area_range)
    if not 0.0 < low <= high < 1.0:
        raise ConfigError(f"cutmix area_range must satisfy 0 < low <= high < 1, got {tuple(area_range)}")
    height, width = (int(v) for v in spatial_size)
    u = torch.rand(batch_size, 4, generator=generator)
    area = low + (high - low) * u[:, 0]
    log_ratio = torch.log(area) * (1.0 - 2.0 * u[:, 1])  # in [log a, -log a]: both sides stay <= 1
    box_h = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    box_w = (area / box_h).clamp(max=1.0)
    top = (1.0 - box_h) * u[:, 2]
    left = (1.0 - box_w) * u[:, 3]
    rows = (torch.arange(height) + 0.5) / height
    cols = (torch.arange(width) + 0.5) / width
    mask = box_mask(rows, cols, top, left, box_h, box_w)
    order = torch.randperm(batch_size, generator=generator)
    partner = torch.empty(batch_size, dtype=torch.long)
    partner[order] = torch.roll(order, -1)
    return BatchCutMix(
        mask.to(device) if device is not None else mask, partner.to(device) if device is not None else partner
    )
