"""Text-guided loss L_tg of DuSSS stage 2 (``docs/method.md``, "Text-guided loss L_tg").

The per-pixel features ``v_f`` of the grounding decoder are pooled with the text-guided mask as weights;
the pooled, L2-normalised image embedding of each sample should match its own text embedding better than
the other texts of the batch (symmetric InfoNCE, the other samples are the negatives). A mask that covers
the wrong region pools features that do not match the text, so the loss pushes the decoder to suppress
masks for irrelevant text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dussss_monai.losses.dual_contrastive import positive_targets, soft_info_nce

__all__ = ["TextGuidedLoss", "mask_pool"]


def mask_pool(pixel_features: torch.Tensor, mask_logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mask-weighted average of per-pixel features, L2-normalised.

    Args:
        pixel_features: ``(B, D, h, w)``.
        mask_logits: ``(B, 1, h', w')`` text-guided mask logits; resized bilinearly to ``(h, w)`` if needed.
        eps: keeps an all-zero mask finite.

    Returns:
        ``(B, D)`` unit vectors ``normalise(sum_p sigmoid(m_p) v_p / sum_p sigmoid(m_p))``.
    """
    if mask_logits.shape[-2:] != pixel_features.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=pixel_features.shape[-2:], mode="bilinear", align_corners=False)
    weights = torch.sigmoid(mask_logits.float())
    pooled = (pixel_features.float() * weights).sum(dim=(2, 3)) / (weights.sum(dim=(2, 3)) + eps)
    return F.normalize(pooled, dim=1)


class TextGuidedLoss(nn.Module):
    """L_tg: symmetric InfoNCE between mask-pooled image embeddings and text embeddings (``docs/method.md``, "Text-guided loss L_tg").

    ``logits[i, j] = <pool_i, t_j> / temperature``; ``L_tg = (CE(logits, Y) + CE(logits^T, Y^T)) / 2``.

    Duplicate texts: templated reports repeat (e.g. many QaTa-COV19 images share one sentence). Two samples
    with the same text are not negatives of each other; the target ``Y`` is soft: row ``i`` spreads its mass
    uniformly over every ``j`` whose text equals text ``i`` (compared as strings when ``texts`` is given,
    otherwise as identical embeddings). Without duplicates ``Y`` is the identity (plain InfoNCE). A batch of
    one sample gives a loss of 0 (no negatives), finite.

    The temperature is fixed (paper: no value for L_tg; 0.07 as the stage-1 initial temperature).

    Args:
        temperature: softmax temperature ``> 0``.

    Raises:
        ValueError: when ``temperature <= 0``.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"TextGuidedLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @staticmethod
    def positive_mask(text_embed: torch.Tensor, texts: Sequence[str] | None = None) -> torch.Tensor:
        """``(B, B)`` boolean matrix, ``True`` where samples ``i`` and ``j`` carry the same text.

        Raises:
            ValueError: when ``len(texts)`` differs from the batch size.
        """
        b = text_embed.shape[0]
        if texts is not None:
            if len(texts) != b:
                raise ValueError(f"TextGuidedLoss: {len(texts)} texts for a batch of {b}")
            return positive_targets(b, texts, text_embed.device) > 0
        t = text_embed.detach()
        return (t[:, None, :] == t[None, :, :]).all(dim=-1)

    def forward(
        self,
        pixel_features: torch.Tensor,
        mask_logits: torch.Tensor,
        text_embed: torch.Tensor,
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Compute L_tg.

        Args:
            pixel_features: L2-normalised per-pixel features ``v_f`` ``(B, D, h, w)`` of the grounding decoder.
            mask_logits: text-guided mask logits ``(B, 1, h', w')`` (any resolution; pooled at ``(h, w)``).
            text_embed: text embeddings ``(B, D)`` (normalised here).
            texts: the sentences, used to find duplicates; ``None`` compares the embeddings instead.

        Returns:
            scalar loss.

        Raises:
            ValueError: on inconsistent batch sizes.
        """
        b = pixel_features.shape[0]
        if mask_logits.shape[0] != b or text_embed.shape[0] != b:
            raise ValueError(
                f"TextGuidedLoss: batch sizes differ: features {b}, mask {mask_logits.shape[0]}, text {text_embed.shape[0]}"
            )
        image_embed = mask_pool(pixel_features, mask_logits)
        text = F.normalize(text_embed.float(), dim=1)
        logits = image_embed @ text.t() / self.temperature
        positives = self.positive_mask(text_embed, texts).to(logits.dtype)
        targets = positives / positives.sum(dim=1, keepdim=True)  # symmetric, so targets.t() is the T2I target
        return 0.5 * (soft_info_nce(logits, targets) + soft_info_nce(logits.t(), targets.t()))
