"""The objective of the grounding decoder f_g in stage 2 (``docs/method.md``, "Grounding decoder f_g" and
"Text-guided loss L_tg").

``gamma * L_tg + beta * L_ground``: ``L_tg`` pools f_g's pixel features of each unlabeled image with its text mask
and contrasts them with the sentences of the batch (:class:`~dussss_monai.losses.TextGuidedLoss`); ``L_ground``, our
addition (0 in the paper), supervises f_g's text logits of labeled images with their masks. The refiner
(:class:`~dussss_monai.refiner.VLMPseudoLabelRefiner`) produces what this loss reads; the stage-2 trainer computes it
and steps f_g's optimiser with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dussss_monai.losses.text_guided import TextGuidedLoss

__all__ = ["GroundingDecoderLoss"]


class GroundingDecoderLoss(nn.Module):
    """``gamma * L_tg + beta * L_ground``, the stage-2 objective of f_g.

    Args:
        text_guided_loss: ``L_tg(pixel_features, mask_logits, text_embed, texts)``; default
            :class:`~dussss_monai.losses.TextGuidedLoss`.
        text_guided_weight: ``gamma`` (1 in the paper).
        grounding_loss: ``l(text_logits, masks)`` of ``L_ground``; needed when ``grounding_weight > 0``.
        grounding_weight: ``beta``; 0 (the paper) trains f_g by ``L_tg`` alone.

    Raises:
        ValueError: on a negative weight, ``grounding_weight > 0`` without a ``grounding_loss``, or both weights 0
            (f_g would have no objective).
    """

    def __init__(
        self,
        text_guided_loss: Callable | None = None,
        text_guided_weight: float = 1.0,
        grounding_loss: Callable | None = None,
        grounding_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if text_guided_weight < 0 or grounding_weight < 0:
            raise ValueError(
                f"f_g's loss weights must be >= 0, got text_guided_weight={text_guided_weight}, "
                f"grounding_weight={grounding_weight}"
            )
        if text_guided_weight == 0 and grounding_weight == 0:
            raise ValueError(
                "text_guided_weight and grounding_supervision_weight are both 0: f_g would have no objective "
                "(set use_text_guided_loss to False to keep f_g as loaded)"
            )
        if grounding_weight > 0 and grounding_loss is None:
            raise ValueError("grounding_weight > 0 needs a grounding_loss (the pixel loss of L_ground)")
        self.text_guided_loss = text_guided_loss if text_guided_loss is not None else TextGuidedLoss()
        self.text_guided_weight = float(text_guided_weight)
        self.grounding_loss = grounding_loss
        self.grounding_weight = float(grounding_weight)

    @property
    def supervised(self) -> bool:
        """Whether f_g learns from the labeled masks too (``L_ground``, ``beta > 0``)."""
        return self.grounding_weight > 0

    def forward(
        self,
        pixel_features: torch.Tensor,
        feature_logits: torch.Tensor,
        text_embed: torch.Tensor,
        texts: Sequence[str],
        labeled_logits: torch.Tensor | None = None,
        labeled_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """f_g's objective on one grounding of the unlabeled images (and of the labeled ones).

        Args:
            pixel_features: f_g's per-pixel features of the unlabeled images ``(B, D, h, w)``.
            feature_logits: their text-mask logits at feature resolution ``(B, 1, h, w)``.
            text_embed: the sentences' embeddings ``(B, D)``.
            texts: the ``B`` sentences (identical ones share the positive of ``L_tg``).
            labeled_logits: f_g's text-mask logits of the labeled images ``(B_l, 1, H, W)``, or ``None``.
            labeled_masks: their masks at the same size, in ``{0, 1}``.

        Returns:
            ``(loss, terms)``: the weighted objective and its parts by name (``loss_tg`` and, with labeled logits,
            ``loss_ground``), for the training log.
        """
        terms = {"loss_tg": self.text_guided_loss(pixel_features, feature_logits, text_embed, texts)}
        loss = self.text_guided_weight * terms["loss_tg"]
        if self.supervised and labeled_logits is not None and labeled_masks is not None:
            terms["loss_ground"] = self.grounding_loss(labeled_logits.float(), labeled_masks).mean()  # type: ignore[misc]
            loss = loss + self.grounding_weight * terms["loss_ground"]
        return loss, terms
