"""The pixel-wise segmentation loss ``l`` of DuSSS stage 2 (``docs/method.md``, "Pseudo labels and losses").

The paper names cross-entropy; the authors' code (as LViT) uses 0.5 soft Dice + 0.5 class-balanced binary
cross-entropy. We use the latter, with targets allowed to be soft (the pseudo labels ``sigmoid(...)`` of
stage 2 are probabilities, not hard masks). ``l`` is ``L_sup``, and by default (the paper) also the loss of
``L_merged``, ``L_text`` and the mean-teacher consistency term; the bundles use
:class:`~dussss_monai.losses.ProbabilityMSELoss` for those unlabeled terms instead (measured in docs/notebook/2026-11-27_benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["SegmentationLoss", "class_balanced_bce_with_logits"]


def class_balanced_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Class-balanced binary cross-entropy on logits with soft targets.

    ``0.5 * sum(-t log p) / sum(t) + 0.5 * sum(-(1-t) log(1-p)) / sum(1-t)``, ``p = sigmoid(logits)``, sums over the
    whole batch. The foreground term is averaged over the (soft) foreground mass and the background term over the
    background mass, so a small lesion weighs as much as the large background. For hard targets this is the
    usual class-balanced BCE (mean over foreground pixels and mean over background pixels, weighted 0.5 each);
    a batch without foreground contributes only the background half.

    Args:
        logits: ``(B, 1, H, W)`` (any shape equal to ``target``'s).
        target: values in ``[0, 1]``.
        eps: added to the masses to keep empty classes finite.
        mask: optional pixel weights in ``[0, 1]`` (same shape); pixels of weight 0 are left out of both
            sums and both masses (e.g. uncertain pseudo-label pixels).

    Returns:
        scalar loss.
    """
    pos = target
    neg = 1.0 - target
    if mask is not None:
        pos, neg = pos * mask, neg * mask
    # log(sigmoid(x)) and log(1 - sigmoid(x)) computed stably.
    loss_pos = -(pos * F.logsigmoid(logits)).sum() / (pos.sum() + eps)
    loss_neg = -(neg * F.logsigmoid(-logits)).sum() / (neg.sum() + eps)
    return 0.5 * (loss_pos + loss_neg)


class SegmentationLoss(nn.Module):
    """``l = dice_weight * soft Dice + bce_weight * (class-balanced) BCE`` on logits (``docs/method.md``, "Pseudo labels and losses").

    Defaults reproduce the research code's ``0.5 Dice + 0.5 class-balanced BCE``. Targets may be soft
    (values in ``[0, 1]``); both terms are defined for soft targets. The Dice term is
    :class:`monai.losses.DiceLoss` with ``sigmoid=True`` (so it receives logits, no double sigmoid) and
    ``batch=True`` by default: intersection and sums are taken over the whole batch, so an image without
    foreground (common in chest X-rays and CT slices) does not produce a maximal loss on its own.

    Args:
        dice_weight: weight of the soft Dice term.
        bce_weight: weight of the BCE term.
        class_balanced: use :func:`class_balanced_bce_with_logits`; otherwise plain mean BCE with logits.
        dice_batch: passed to ``DiceLoss(batch=...)``.
        smooth: ``smooth_nr`` and ``smooth_dr`` of the Dice term.

    Raises:
        ValueError: when a weight is negative or both are zero.
    """

    def __init__(
        self,
        dice_weight: float = 0.5,
        bce_weight: float = 0.5,
        class_balanced: bool = True,
        dice_batch: bool = True,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight <= 0:
            raise ValueError(
                f"SegmentationLoss: weights must be >= 0 and not both 0, got dice_weight={dice_weight}, bce_weight={bce_weight}"
            )
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.class_balanced = bool(class_balanced)
        self.dice = DiceLoss(sigmoid=True, batch=dice_batch, smooth_nr=smooth, smooth_dr=smooth, reduction="mean")
        # the same Dice on probabilities, for masked pixels (their probability and target are zeroed first)
        self.dice_on_probabilities = DiceLoss(
            sigmoid=False, batch=dice_batch, smooth_nr=smooth, smooth_dr=smooth, reduction="mean"
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute ``l(logits, target)``, optionally on the pixels of ``mask`` only.

        Args:
            logits: network output before the sigmoid, ``(B, 1, H, W)``.
            target: mask or soft pseudo label in ``[0, 1]``, same shape.
            mask: optional pixel weights in ``[0, 1]``, same shape; a pixel of weight 0 is ignored by both
                terms (its probability and target are zeroed in the Dice sums and it is left out of the BCE
                averages). Used for confidence-masked pseudo labels.

        Returns:
            scalar loss (0 when ``mask`` is all zero).

        Raises:
            ValueError: when the shapes differ.
        """
        if logits.shape != target.shape:
            raise ValueError(
                f"SegmentationLoss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape"
            )
        if mask is not None and mask.shape != logits.shape:
            raise ValueError(
                f"SegmentationLoss: mask {tuple(mask.shape)} and logits {tuple(logits.shape)} differ in shape"
            )
        target = target.to(logits.dtype)
        loss = logits.new_zeros(())
        if self.dice_weight > 0:
            if mask is None:
                loss = loss + self.dice_weight * self.dice(logits, target)
            else:
                m = mask.to(logits.dtype)
                loss = loss + self.dice_weight * self.dice_on_probabilities(torch.sigmoid(logits) * m, target * m)
        if self.bce_weight > 0:
            m32 = None if mask is None else mask.float()
            if self.class_balanced:
                bce = class_balanced_bce_with_logits(logits.float(), target.float(), mask=m32)
            elif m32 is None:
                bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
            else:
                per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
                bce = (per_pixel * m32).sum() / m32.sum().clamp_min(1e-6)
            loss = loss + self.bce_weight * bce
        return loss
