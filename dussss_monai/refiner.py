"""VLM pseudo-label refiner of DuSSS stage 2 (``docs/method.md``, "Grounding decoder f_g" and "Pseudo labels
and losses").

The frozen stage-1 vision-language model encodes an image (patch tokens) and its description (text embedding);
the trainable grounding decoder f_g turns both into text-guided mask logits. The refiner merges them with the
teacher's logits into the pseudo label ``sigmoid(teacher_logits + text_logits)``: the *logits* are summed (the
research code summed probabilities, so its merged target never fell below 0.5, and applied a second sigmoid;
neither is reproduced).

:meth:`VLMPseudoLabelRefiner.forward` makes the targets and returns, with them, the grounding it computed (with
gradients into f_g in train mode), from which :class:`~dussss_monai.losses.GroundingDecoderLoss` computes f_g's
objective; outside training, :meth:`VLMPseudoLabelRefiner.text_logits` shows the text-guided mask of an image and
a sentence. ``rotate_texts`` grounds every image with the sentence of the next image of its batch: the control of
whether the sentence's content matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dussss_monai.networks.grounding_decoder import crop_to_boxes

if TYPE_CHECKING:
    from dussss_monai.networks.grounding_decoder import GroundingDecoder

__all__ = ["VLMPseudoLabelRefiner", "Refinement", "GroundingTargets", "GroundingResult", "rotate"]


def rotate(texts: Sequence[str]) -> list[str]:
    """``texts[1:] + texts[:1]``: each image gets its neighbour's sentence (the control of whether the sentence's
    content matters; unchanged for 0 or 1 sentences)."""
    texts = list(texts)
    return texts[1:] + texts[:1]


class GroundingTargets(NamedTuple):
    """Labeled images with their masks and sentences: the supervision ``L_ground`` of f_g.

    Attributes:
        images: ``(B, C, H, W)``.
        masks: ``(B, 1, H, W)`` in ``{0, 1}``.
        texts: ``B`` sentences.
        boxes: ``(B, 4)`` regions of the images f_g is trained on (patch training), or ``None``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    texts: Sequence[str]
    boxes: torch.Tensor | None = None


class GroundingResult(NamedTuple):
    """Everything one grounding forward produces (gradients flow into f_g when grad mode is on).

    Attributes:
        pixel_features: L2-normalised per-pixel features ``v_f`` ``(B, D, h', w')`` (``h', w' = H, W`` when f_g
            has the image skip, the crop size with boxes).
        feature_logits: text-guided mask logits at feature resolution ``(B, 1, h', w')`` (pooled by L_tg).
        text_logits: the same logits at the image size ``(B, 1, H, W)``, or at the crop size with boxes.
        text_embed: the frozen VLM's text embeddings ``(B, D)``.
    """

    pixel_features: torch.Tensor
    feature_logits: torch.Tensor
    text_logits: torch.Tensor
    text_embed: torch.Tensor


class Refinement(NamedTuple):
    """Output of :meth:`VLMPseudoLabelRefiner.forward`.

    Attributes:
        merged: ``sigmoid(teacher_logits + text_logits)`` ``(B, 1, H, W)``, detached: the target of ``L_merged``.
        text_mask: ``y_text = sigmoid(text_logits)``, detached: the target of ``L_text``.
        grounding: the grounding of the images (what ``L_tg`` reads), with gradients into f_g in train mode.
        texts: the sentences the images were grounded with (their own, or the neighbours' with ``rotate_texts``).
        labeled_logits: f_g's text logits of the labeled images (what ``L_ground`` reads), or ``None``.
        labeled_masks: their masks over the same region and size, or ``None``.
    """

    merged: torch.Tensor
    text_mask: torch.Tensor
    grounding: GroundingResult
    texts: list[str]
    labeled_logits: torch.Tensor | None = None
    labeled_masks: torch.Tensor | None = None


class VLMPseudoLabelRefiner(nn.Module):
    """Frozen VLM + trainable grounding decoder f_g -> text-guided masks and merged pseudo labels.

    The VLM is frozen at construction (``requires_grad_(False)``) and kept in eval mode whatever ``train()`` is
    called with; its encodings are computed under ``torch.no_grad``. Sentences are encoded by the VLM's text
    encoder, whose own cache serves repeated sentences when it is frozen. ``train()`` sets f_g's mode: in train
    mode :meth:`forward` grounds with gradients into f_g, for its loss.

    Args:
        vlm: stage-1 model with ``encode_image(x) -> .patches (B, h*w, H_v), .grid (h, w)`` and
            ``encode_text(list[str]) -> .embed (B, D)``.
        grounding_decoder: f_g.
        vlm_image_size: ``(H, W)`` the image encoder expects; images of another size are resized bilinearly
            before encoding (the masks are returned at the input size). ``None``: no resize.
        crop_size: ``(H', W')`` f_g decodes the regions of patch training at (the image's boxes); default the box's
            size at the whole image's resolution. Smaller crops cost f_g less (its image skip and projection work
            at full resolution).
        bfloat16: run the VLM and f_g under bfloat16 autocast (e.g. on a CPU with bfloat16 matrix units); the
            targets are computed in float32.
        rotate_texts: ground every image with the sentence of the next image of its batch (``texts[1:] +
            texts[:1]``): the control of whether DuSSS uses the sentence's content. Labeled images keep theirs.
    """

    vlm: Any  # an nn.Module with the stage-1 contract: encode_image(x), encode_text(texts)

    def __init__(
        self,
        vlm: nn.Module,
        grounding_decoder: GroundingDecoder,
        vlm_image_size: int | Sequence[int] | None = None,
        crop_size: int | Sequence[int] | None = None,
        bfloat16: bool = False,
        rotate_texts: bool = False,
    ) -> None:
        super().__init__()
        self.vlm = vlm
        self.grounding_decoder = grounding_decoder
        if isinstance(vlm_image_size, int):
            vlm_image_size = (vlm_image_size, vlm_image_size)
        self.vlm_image_size = None if vlm_image_size is None else tuple(int(s) for s in vlm_image_size)
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
        self.use_bfloat16 = bool(bfloat16)
        self.rotate_texts = bool(rotate_texts)
        self.vlm.requires_grad_(False)
        self.vlm.eval()

    def train(self, mode: bool = True) -> VLMPseudoLabelRefiner:
        """Set f_g's mode; the frozen VLM always stays in eval mode."""
        super().train(mode)
        self.vlm.eval()
        return self

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """Frozen text embeddings ``(B, D)``.

        Raises:
            TypeError: when ``texts`` is a single string instead of a sequence.
        """
        if isinstance(texts, str):
            raise TypeError("VLMPseudoLabelRefiner: texts must be a sequence of strings, one per image, not a str")
        embed = self.vlm.encode_text([str(t) for t in texts]).embed.detach()
        return embed if device is None else embed.to(device)

    @torch.no_grad()
    def encode_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Frozen patch tokens of ``images`` ``(B, C, H, W)``: ``((B, h*w, H_v), (h, w))``.

        Raises:
            ValueError: when the VLM returns no patch tokens.
        """
        x = images
        if self.vlm_image_size is not None and tuple(x.shape[-2:]) != self.vlm_image_size:
            x = F.interpolate(x, size=self.vlm_image_size, mode="bilinear", align_corners=False)
        features = self.vlm.encode_image(x)
        if getattr(features, "patches", None) is None:
            raise ValueError("VLMPseudoLabelRefiner: the VLM's encode_image returned no patch tokens")
        h, w = (int(g) for g in features.grid)
        return features.patches.detach(), (h, w)

    def _crop_size(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[int, int]:
        if self.crop_size is not None:
            return int(self.crop_size[0]), int(self.crop_size[1])
        h, w = images.shape[-2:]
        return max(1, round(float(boxes[0, 2]) * h)), max(1, round(float(boxes[0, 3]) * w))

    def ground(self, images: torch.Tensor, texts: Sequence[str], boxes: torch.Tensor | None = None) -> GroundingResult:
        """One grounding forward: frozen VLM encodings, then f_g (with gradients into f_g if grad mode is on).

        Args:
            images: ``(B, C, H, W)``.
            texts: ``B`` sentences.
            boxes: ``(B, 4)`` regions of the images to decode (patch training), or ``None`` for the whole images.

        Returns:
            :class:`GroundingResult`; ``text_logits`` at the input image size ``(H, W)``, or at the crop size.

        Raises:
            ValueError: when the number of texts differs from the batch size.
        """
        if len(texts) != images.shape[0]:
            raise ValueError(f"VLMPseudoLabelRefiner: {len(texts)} texts for {images.shape[0]} images")
        patches, grid = self.encode_patches(images)
        text_embed = self.encode_texts(texts, device=images.device)
        # f_g's optional image skip reads the image at the size the mask is wanted (not the VLM's input size)
        image = images if getattr(self.grounding_decoder, "uses_image", False) else None
        size = None if boxes is None else self._crop_size(images, boxes)
        features = self.grounding_decoder.pixel_features(patches, grid, image, boxes, size)
        feature_logits = self.grounding_decoder.text_logits(features, text_embed, out_size=None, boxes=boxes)
        out_size = tuple(images.shape[-2:]) if size is None else size
        text_logits = feature_logits  # already at that size when f_g reads the image
        if tuple(feature_logits.shape[-2:]) != out_size:
            text_logits = F.interpolate(feature_logits, size=out_size, mode="bilinear", align_corners=False)
        return GroundingResult(features, feature_logits, text_logits, text_embed)

    def text_logits(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Text-guided mask logits ``(B, 1, H, W)`` of ``images`` and their sentences."""
        return self.ground(images, texts).text_logits

    def _ground_both(
        self, images: torch.Tensor, texts: Sequence[str], boxes: torch.Tensor | None, labeled: GroundingTargets | None
    ) -> tuple[GroundingResult, GroundingResult | None]:
        """Ground the unlabeled images and, for ``L_ground``, the labeled ones: in ONE batched forward when their
        sizes (and boxes) agree (the VLM in eval mode and f_g's instance norms are per sample), which keeps the
        supervision cheap on a GPU."""
        if labeled is None:
            return self.ground(images, texts, boxes), None
        if labeled.images.shape[1:] != images.shape[1:] or (boxes is None) != (labeled.boxes is None):
            return self.ground(images, texts, boxes), self.ground(labeled.images, labeled.texts, labeled.boxes)
        n = images.shape[0]
        both_boxes = None if boxes is None else torch.cat([boxes, labeled.boxes.to(boxes)])  # type: ignore[union-attr]
        all_texts = list(texts) + list(labeled.texts)
        both = self.ground(torch.cat([images, labeled.images.to(images.dtype)]), all_texts, both_boxes)
        return GroundingResult(*(t[:n] for t in both)), GroundingResult(*(t[n:] for t in both))

    def forward(
        self,
        images: torch.Tensor,
        texts: Sequence[str],
        teacher_logits: torch.Tensor,
        crop_boxes: torch.Tensor | None = None,
        labeled: GroundingTargets | None = None,
    ) -> Refinement:
        """Refine the teacher's pseudo labels with the sentences (``docs/method.md``, "Pseudo labels and losses").

        Args:
            images: the images the sentences describe ``(B, C, H, W)``: the training images themselves, or in
                patch training the whole images the patches were cut from.
            texts: ``B`` sentences.
            teacher_logits: the teacher's logits of the training images ``(B, 1, h, w)``.
            crop_boxes: ``(B, 4)`` where each training patch lies in its whole image (``crop_box``), or ``None``
                when ``images`` are the training images.
            labeled: labeled images to ground as well, for f_g's supervision ``L_ground`` (with their boxes in patch
                training); in the same batched forward when their size allows.

        Returns:
            :class:`Refinement`: the detached targets and the grounding (with gradients into f_g in train mode).

        Raises:
            ValueError: when the shapes of teacher and text logits differ.
        """
        texts = rotate(texts) if self.rotate_texts else list(texts)
        autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.use_bfloat16)
        with torch.set_grad_enabled(self.training), autocast:
            grounding, grounding_l = self._ground_both(images, texts, crop_boxes, labeled)
        text_logits = grounding.text_logits
        if crop_boxes is not None:  # decoded at the crop size: bring the patches' text masks to the patch size
            size = teacher_logits.shape[-2:]
            text_logits = F.interpolate(text_logits.detach(), size=size, mode="bilinear", align_corners=False)
        if teacher_logits.shape != text_logits.shape:
            raise ValueError(
                f"VLMPseudoLabelRefiner: teacher logits {tuple(teacher_logits.shape)} and text logits "
                f"{tuple(text_logits.shape)} differ in shape"
            )
        teacher, text = teacher_logits.detach().float(), text_logits.detach().float()
        labeled_logits = labeled_masks = None
        if grounding_l is not None and labeled is not None:
            labeled_logits, labeled_masks = grounding_l.text_logits, labeled.masks
            if labeled.boxes is not None:  # f_g decoded the patches' regions: the masks of the same regions
                labeled_masks = crop_to_boxes(
                    labeled_masks.float(), labeled.boxes, labeled_logits.shape[-2:], "nearest"
                )
        return Refinement(
            torch.sigmoid(teacher + text), torch.sigmoid(text), grounding, texts, labeled_logits, labeled_masks
        )
