"""VLM pseudo-label refiner of DuSSS stage 2 (method.md, "Stage 2").

The frozen stage-1 vision-language model encodes an image (patch tokens) and its description (global text
embedding); the trainable grounding decoder f_g turns both into text-guided mask logits. The refiner merges
them with the teacher's logits into the pseudo label ``sigmoid(teacher_logits + text_logits)``: the *logits*
are summed (the research code summed probabilities, so its merged target never fell below 0.5, and applied a
second sigmoid; neither is reproduced).

The refiner is a plain ``nn.Module`` so that a bundle config can build it on its own, e.g. as an
inference-time tool that shows the text-guided mask of an image and a sentence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from dussss_monai.networks.grounding_decoder import GroundingDecoder

__all__ = ["VLMPseudoLabelRefiner", "RefinedPseudoLabel", "GroundingResult"]


class RefinedPseudoLabel(NamedTuple):
    """Output of :class:`VLMPseudoLabelRefiner`; all tensors ``(B, 1, H, W)``, detached.

    Attributes:
        merged: ``sigmoid(teacher_logits + text_logits)``, the target of ``L_merged``.
        text_mask: ``y_text = sigmoid(text_logits)``, the target of ``L_text``.
        text_logits: the text-guided mask logits.
    """

    merged: torch.Tensor
    text_mask: torch.Tensor
    text_logits: torch.Tensor


class GroundingResult(NamedTuple):
    """Everything one grounding forward produces (gradients flow into f_g when grad mode is on).

    Attributes:
        pixel_features: L2-normalised per-pixel features ``v_f`` ``(B, D, h', w')`` (``h', w' = H, W`` when f_g
            has the image skip).
        feature_logits: text-guided mask logits at feature resolution ``(B, 1, h', w')`` (pooled by L_tg).
        text_logits: the same logits upsampled to the image size ``(B, 1, H, W)``.
        text_embed: the frozen VLM's text embeddings ``(B, D)``.
    """

    pixel_features: torch.Tensor
    feature_logits: torch.Tensor
    text_logits: torch.Tensor
    text_embed: torch.Tensor


class VLMPseudoLabelRefiner(nn.Module):
    """Frozen VLM + trainable grounding decoder f_g -> text-guided masks and merged pseudo labels.

    The VLM is frozen at construction (``requires_grad_(False)``) and kept in eval mode whatever ``train()``
    is called with; its encodings are computed under ``torch.no_grad``. Text embeddings are cached per
    sentence (reports repeat), the cache lives on the instance and is cleared by :meth:`clear_cache` and
    whenever a state dict is loaded.

    Args:
        vlm: stage-1 model with ``encode_image(x) -> .patches (B, h*w, H_v), .grid (h, w)`` and
            ``encode_text(list[str]) -> .embed (B, D)`` (architecture.md, network contract).
        grounding_decoder: f_g.
        vlm_image_size: ``(H, W)`` the image encoder expects; images of another size are resized
            bilinearly before encoding (the masks are returned at the input size). ``None``: no resize.
        cache_text_embeddings: cache text embeddings per sentence.
        max_cached_texts: the cache is emptied when it would grow beyond this many sentences.
    """

    def __init__(
        self,
        vlm: nn.Module,
        grounding_decoder: GroundingDecoder,
        vlm_image_size: Sequence[int] | None = None,
        cache_text_embeddings: bool = True,
        max_cached_texts: int = 100_000,
    ) -> None:
        super().__init__()
        self.vlm = vlm
        self.grounding_decoder = grounding_decoder
        self.vlm_image_size = None if vlm_image_size is None else tuple(int(s) for s in vlm_image_size)
        self.cache_text_embeddings = bool(cache_text_embeddings)
        self.max_cached_texts = int(max_cached_texts)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        self.vlm.requires_grad_(False)
        self.vlm.eval()

    def train(self, mode: bool = True) -> VLMPseudoLabelRefiner:
        """Set f_g's mode; the frozen VLM always stays in eval mode."""
        super().train(mode)
        self.vlm.eval()
        return self

    def clear_cache(self) -> None:
        """Forget the cached text embeddings (call after changing the VLM's weights by hand)."""
        self._text_cache.clear()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """``nn.Module.load_state_dict``, then clear the text cache (the VLM may have changed)."""
        self.clear_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """Frozen text embeddings ``(B, D)``, cached per sentence.

        Args:
            texts: one sentence per image.
            device: where the result lives (default: the device the VLM returns).

        Raises:
            TypeError: when ``texts`` is a single string instead of a sequence.
        """
        if isinstance(texts, str):
            raise TypeError("VLMPseudoLabelRefiner: texts must be a sequence of strings, one per image, not a str")
        texts = [str(t) for t in texts]
        if not self.cache_text_embeddings:
            embed = self.vlm.encode_text(texts).embed.detach()
            return embed if device is None else embed.to(device)
        dev_key = str(device)
        missing = list(dict.fromkeys(t for t in texts if (t, dev_key) not in self._text_cache))
        if missing:
            if len(self._text_cache) + len(missing) > self.max_cached_texts:
                self._text_cache.clear()
            embed = self.vlm.encode_text(missing).embed.detach()
            if device is not None:
                embed = embed.to(device)
            for t, e in zip(missing, embed):
                self._text_cache[(t, dev_key)] = e
        return torch.stack([self._text_cache[(t, dev_key)] for t in texts])

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

    def ground(self, images: torch.Tensor, texts: Sequence[str]) -> GroundingResult:
        """One grounding forward: frozen VLM encodings, then f_g (with gradients into f_g if grad mode is on).

        Args:
            images: ``(B, C, H, W)``.
            texts: ``B`` sentences.

        Returns:
            :class:`GroundingResult`; ``text_logits`` at the input image size ``(H, W)``.

        Raises:
            ValueError: when the number of texts differs from the batch size.
        """
        if len(texts) != images.shape[0]:
            raise ValueError(f"VLMPseudoLabelRefiner: {len(texts)} texts for {images.shape[0]} images")
        patches, grid = self.encode_patches(images)
        text_embed = self.encode_texts(texts, device=images.device)
        # f_g's optional image skip reads the image at the size the mask is wanted (not the VLM's input size)
        image = images if getattr(self.grounding_decoder, "uses_image", False) else None
        features = self.grounding_decoder.pixel_features(patches, grid, image)
        feature_logits = self.grounding_decoder.text_logits(features, text_embed, out_size=None)
        text_logits = feature_logits  # already at the image size when f_g reads the image
        if tuple(feature_logits.shape[-2:]) != tuple(images.shape[-2:]):
            text_logits = F.interpolate(feature_logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return GroundingResult(features, feature_logits, text_logits, text_embed)

    @staticmethod
    def crop_to_boxes(maps: torch.Tensor, boxes: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        """Crop each map to its box and resample it to ``out_size`` (bilinear).

        Used in patch training: the text-guided mask is computed on the whole image the sentence describes
        and cropped to the training patch (``crop_box`` of :mod:`dussss_monai.data.transforms`).

        Args:
            maps: ``(B, C, h, w)``, e.g. text logits at feature resolution of the whole images.
            boxes: ``(B, 4)`` ``[top, left, height, width]`` as fractions of the whole image.
            out_size: ``(H, W)`` of the patches.

        Returns:
            ``(B, C, H, W)``.

        Raises:
            ValueError: on a batch-size or box-shape mismatch.
        """
        if boxes.ndim != 2 or boxes.shape != (maps.shape[0], 4):
            raise ValueError(f"VLMPseudoLabelRefiner: boxes must be (B, 4) with B = {maps.shape[0]}, got {tuple(boxes.shape)}")
        b = boxes.to(device=maps.device, dtype=maps.dtype)
        top, left, height, width = b.unbind(1)
        zero = torch.zeros_like(top)
        # affine_grid maps the output's normalised coordinates [-1, 1] onto the box in the input's
        theta = torch.stack(
            [torch.stack([width, zero, 2 * left + width - 1], 1), torch.stack([zero, height, 2 * top + height - 1], 1)], 1
        )
        size = (maps.shape[0], maps.shape[1], int(out_size[0]), int(out_size[1]))
        grid = F.affine_grid(theta, list(size), align_corners=False)
        return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def text_logits(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Text-guided mask logits ``(B, 1, H, W)`` (gradients reach f_g when grad mode is on, for L_tg)."""
        return self.ground(images, texts).text_logits

    @staticmethod
    def merge(teacher_logits: torch.Tensor, text_logits: torch.Tensor) -> RefinedPseudoLabel:
        """Merge teacher and text logits into detached pseudo labels.

        ``merged = sigmoid(teacher_logits + text_logits)`` (logits summed, one sigmoid), ``text_mask =
        sigmoid(text_logits)``.

        Raises:
            ValueError: when the shapes differ.
        """
        if teacher_logits.shape != text_logits.shape:
            raise ValueError(
                f"VLMPseudoLabelRefiner: teacher logits {tuple(teacher_logits.shape)} and text logits "
                f"{tuple(text_logits.shape)} differ in shape"
            )
        t = teacher_logits.detach().float()
        x = text_logits.detach().float()
        return RefinedPseudoLabel(merged=torch.sigmoid(t + x), text_mask=torch.sigmoid(x), text_logits=x)

    def forward(self, images: torch.Tensor, texts: Sequence[str], teacher_logits: torch.Tensor) -> RefinedPseudoLabel:
        """Refine the teacher's pseudo label of ``images`` with their texts (method.md, Stage 2, L_merged / L_text).

        Args:
            images: ``(B, C, H, W)``.
            texts: ``B`` sentences.
            teacher_logits: teacher output before the sigmoid, ``(B, 1, H, W)``.

        Returns:
            :class:`RefinedPseudoLabel` (detached targets for the student).
        """
        return self.merge(teacher_logits, self.text_logits(images, texts))
