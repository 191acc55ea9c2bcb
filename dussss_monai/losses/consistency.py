"""Consistency loss of the mean teacher (Tarvainen & Valpola, NeurIPS 2017): the squared difference between the
student's probabilities and the (soft) pseudo label.

Used for the unlabeled terms of stage 2 (``L_merged``, ``L_text`` and the mean teacher's consistency) when the
pseudo labels are kept soft: unlike the class-balanced segmentation loss it is minimised by the target itself,
so a teacher fed back its own outputs does not drift toward the rarer class, and unlike cross-entropy it stays
bounded when the teacher is confidently wrong.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProbabilityMSELoss"]


class ProbabilityMSELoss(nn.Module):
    """``mean((sigmoid(logits) - target) ** 2)``, optionally over the pixels of a mask. It has no parameters.

    Raises:
        ValueError: (in ``forward``) when the shapes of ``logits``, ``target`` and ``mask`` differ.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: student output before the sigmoid, ``(B, 1, H, W)``.
            target: pseudo label in ``[0, 1]`` (soft or hard), same shape.
            mask: optional pixel weights in ``[0, 1]``, same shape; the loss is then the weighted mean over the
                pixels (0 when every weight is 0).

        Returns:
            scalar loss.

        Raises:
            ValueError: when the shapes differ.
        """
        if logits.shape != target.shape:
            raise ValueError(
                f"ProbabilityMSELoss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape"
            )
        squared = (torch.sigmoid(logits.float()) - target.float()) ** 2
        if mask is None:
            return squared.mean()
        if mask.shape != logits.shape:
            raise ValueError(
                f"ProbabilityMSELoss: mask {tuple(mask.shape)} and logits {tuple(logits.shape)} differ in shape"
            )
        m = mask.float()
        return (squared * m).sum() / m.sum().clamp_min(1e-6)
