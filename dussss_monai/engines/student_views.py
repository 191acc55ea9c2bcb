"""Perturbations of the student's view of an unlabeled batch: strong, varied perturbations are what makes
mean-teacher consistency help in segmentation (French et al., BMVC 2020).

Each class is a callable ``(unlabeled, labeled) -> StudentView`` for the ``student_perturbation`` argument of
:class:`~dussss_monai.engines.MeanTeacherTrainer`. The teacher (and the VLM) always see the clean unlabeled
images; every pseudo label is computed on them and carried onto the student's view by ``StudentView.carry``.

- :class:`CutMix`: each unlabeled image gets a box pasted from another unlabeled image of the batch.
- :class:`CopyPaste`: bidirectional copy-paste between labeled and unlabeled images (BCP; Bai et al., CVPR 2023):
  a box of a labeled image is pasted into an unlabeled one and the same box of the unlabeled image into the
  labeled one, so labeled and unlabeled content share every image the student learns from; inside each mixed
  image the labeled pixels are taught by the ground truth, the unlabeled ones by the pseudo label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dussss_monai.engines.batches import LabeledBatch, StudentView, UnlabeledBatch
from dussss_monai.engines.cutmix import box_mask, draw_cutmix
from dussss_monai.errors import ConfigError

__all__ = ["CutMix", "CopyPaste", "centre_boxes"]


class CutMix:
    """CutMix of the unlabeled batch (:func:`~dussss_monai.engines.cutmix.draw_cutmix`): one box per image, a
    quarter to half of its area by default, pasted from another image; a batch of one image is left unmixed.

    Args:
        area_range: ``(low, high)`` area fraction of the pasted box.
    """

    def __init__(self, area_range: Sequence[float] = (0.25, 0.5)) -> None:
        self.area_range = tuple(float(a) for a in area_range)

    def __call__(self, unlabeled: UnlabeledBatch, labeled: LabeledBatch) -> StudentView:
        images = unlabeled.student_images
        if images.shape[0] < 2:
            return StudentView(images)
        mix = draw_cutmix(images.shape[0], images.shape[2:], self.area_range, device=images.device)
        return StudentView(mix.apply(images), mix.apply)


def centre_boxes(
    batch_size: int, spatial_size: Sequence[int], side_fraction: float, device: torch.device | None = None
) -> torch.Tensor:
    """One box per image of ``side_fraction`` of each side, at a uniform position inside the image.

    Returns:
        ``(B, 1, H, W)`` float mask, 1 inside the box.
    """
    height, width = (int(s) for s in spatial_size)
    box_h, box_w = max(1, round(side_fraction * height)), max(1, round(side_fraction * width))
    top = torch.randint(0, height - box_h + 1, (batch_size,))
    left = torch.randint(0, width - box_w + 1, (batch_size,))
    mask = box_mask(torch.arange(height), torch.arange(width), top, left, box_h, box_w)
    return mask if device is None else mask.to(device)


class CopyPaste:
    """Bidirectional copy-paste between the labeled and the unlabeled batch (BCP).

    Unlabeled image ``i`` is paired with labeled image ``i mod B_l``; with a box mask ``M`` per pair the student sees
    ``x_in = M * x_l + (1 - M) * x_u`` and ``x_out = M * x_u + (1 - M) * x_l`` (``2 B_u`` images), whose targets are
    ``M * y_l + (1 - M) * p`` and ``M * p + (1 - M) * y_l`` for the unlabeled pseudo label ``p``. Labeled pixels weigh
    1 in the consistency loss, unlabeled ones ``unlabeled_weight`` (BCP's alpha). The labeled and unlabeled images
    must have the same size (patches of one size in patch training).

    Args:
        side_fraction: side of the pasted box relative to the image's (BCP: 2/3).
        unlabeled_weight: weight of the pixels taught by the pseudo label.

    Raises:
        ConfigError: on a fraction outside (0, 1) or a negative weight.
    """

    #: the consistency loss must take per-pixel weights (``mask``)
    weighs_pixels = True

    def __init__(self, side_fraction: float = 2.0 / 3.0, unlabeled_weight: float = 0.5) -> None:
        if not 0.0 < side_fraction < 1.0:
            raise ConfigError(f"CopyPaste: side_fraction must be in (0, 1), got {side_fraction}")
        if unlabeled_weight < 0:
            raise ConfigError(f"CopyPaste: unlabeled_weight must be >= 0, got {unlabeled_weight}")
        self.side_fraction = float(side_fraction)
        self.unlabeled_weight = float(unlabeled_weight)

    def __call__(self, unlabeled: UnlabeledBatch, labeled: LabeledBatch) -> StudentView:
        x_u = unlabeled.student_images
        if labeled.images.shape[1:] != x_u.shape[1:]:
            raise ConfigError(
                f"CopyPaste needs labeled and unlabeled images of one size, got {tuple(labeled.images.shape[1:])} "
                f"and {tuple(x_u.shape[1:])}"
            )
        pair = torch.arange(x_u.shape[0], device=x_u.device) % labeled.images.shape[0]
        x_l = labeled.images[pair].to(x_u.dtype)
        y_l = labeled.masks[pair].to(torch.float32)
        mask = centre_boxes(x_u.shape[0], x_u.shape[2:], self.side_fraction, device=x_u.device)
        images = torch.cat([mask * x_l + (1 - mask) * x_u, mask * x_u + (1 - mask) * x_l])
        alpha = self.unlabeled_weight
        weight = torch.cat([mask + alpha * (1 - mask), alpha * mask + (1 - mask)])

        def carry(pseudo: torch.Tensor) -> torch.Tensor:
            m = mask.to(pseudo.dtype)
            return torch.cat([m * y_l + (1 - m) * pseudo, m * pseudo + (1 - m) * y_l])

        return StudentView(images, carry, weight)
