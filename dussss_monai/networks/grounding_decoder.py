"""The grounding decoder f_g of DuSSS stage 2 (``docs/method.md``, "Grounding decoder f_g").

The frozen stage-1 image encoder gives a grid of patch tokens (paper: 14 x 14 for a 224 x 224 ViT-B/16).
f_g upsamples them to per-pixel features ``v_f`` (two upsampling residual conv blocks: 14 -> 28 -> 56),
projects them to the joint embedding size ``D`` and L2-normalises them. The text-guided mask is the
per-pixel similarity of ``v_f`` with the L2-normalised text embedding ``t_f``, upsampled to the image.

Optional (not in the paper, off by default): an *image skip*. The patch grid is coarse (8 x 8 for the
demo's encoder at 64 px; 16 x 16 pixels per token for ViT-B/16), so the paper's f_g can place a sentence's
zone but not a lesion's border. With ``image_skip_channels > 0`` two 3x3 convolutions read the image itself at
full resolution, their features are concatenated with the upsampled patch features and fused before the
projection to ``D``, as the input skip of UNETR's decoder (Hatamizadeh et al., WACV 2022) does.
``v_f`` and the mask are then at the image's resolution. docs/notebook/2026-11-27_benchmarks.md ("A grounding decoder that
sees the image") has the measurements behind it.

Optional (not in the paper, off by default): a *spatial prior* of the sentence. Reports say where a finding is
("lower left lung"), and the cosine ``t_f . v_f`` can only weigh a place where the pixel's features happen to encode
it. With ``prior_grid = g > 0`` a linear map of the sentence embedding gives a ``g x g`` map of logits over the
whole image, upsampled bilinearly (cropped to the region in patch training) and added to the text logits: the
sentence moves the mask towards the places it names and away from the others (``docs/method.md``, "Grounding
decoder f_g"). The map starts at zero, so f_g starts as without it. It suits images whose anatomy sits in roughly
the same place (chest X-rays, registered scans), not tiles cut anywhere from a slide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["GroundingDecoder", "UpResidualBlock", "crop_to_boxes"]


def crop_to_boxes(
    maps: torch.Tensor, boxes: torch.Tensor, out_size: Sequence[int], mode: str = "bilinear"
) -> torch.Tensor:
    """Crop each map to its box and resample it to ``out_size``.

    Used in patch training: the sentence describes the whole image, so f_g reads the whole image's patch tokens
    and the region of each training patch is cut out of its maps (``crop_box`` of :mod:`dussss_monai.data.pipelines`).

    Args:
        maps: ``(B, C, h, w)`` maps of the whole images (any resolution).
        boxes: ``(B, 4)`` ``[top, left, height, width]`` as fractions of the whole image.
        out_size: ``(H, W)`` of the crops.
        mode: ``grid_sample`` interpolation (``"bilinear"``, or ``"nearest"`` for masks).

    Returns:
        ``(B, C, H, W)``.

    Raises:
        ValueError: on a batch-size or box-shape mismatch.
    """
    if boxes.ndim != 2 or boxes.shape != (maps.shape[0], 4):
        raise ValueError(f"crop_to_boxes: boxes must be (B, 4) with B = {maps.shape[0]}, got {tuple(boxes.shape)}")
    b = boxes.to(device=maps.device, dtype=maps.dtype)
    top, left, height, width = b.unbind(1)
    zero = torch.zeros_like(top)
    # affine_grid maps the output's normalised coordinates [-1, 1] onto the box in the input's
    theta = torch.stack(
        [torch.stack([width, zero, 2 * left + width - 1], 1), torch.stack([zero, height, 2 * top + height - 1], 1)], 1
    )
    size = (maps.shape[0], maps.shape[1], int(out_size[0]), int(out_size[1]))
    grid = F.affine_grid(theta, list(size), align_corners=False)
    return F.grid_sample(maps, grid, mode=mode, padding_mode="border", align_corners=False)


class UpResidualBlock(nn.Module):
    """Bilinear x2 upsampling followed by a residual block of two 3x3 convolutions.

    ``y = relu(norm(conv_b(relu(norm(conv_a(up(x)))))) + skip(up(x)))``, ``skip`` a 1x1 convolution when the
    channel count changes, identity otherwise.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: MONAI norm name/tuple used after each 3x3 convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str | tuple = ("instance", {"affine": True}),
    ) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv_a = Convolution(2, in_channels, out_channels, kernel_size=3, norm=norm, act="relu")
        # no activation here: the activation is applied after the residual sum.
        self.conv_b = Convolution(2, out_channels, out_channels, kernel_size=3, norm=norm, act=None)
        self.skip: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.act(self.conv_b(self.conv_a(x)) + self.skip(x))


class GroundingDecoder(nn.Module):
    """Grounding decoder f_g: patch tokens -> L2-normalised per-pixel features -> text-guided mask logits.

    Implements the "text-guided mask" of ``docs/method.md``, "Grounding decoder f_g": ``y_text = sigmoid(t_f . v_f)`` with ``t_f`` the
    text embedding and ``v_f`` the per-pixel features, both L2-normalised.

    Documented choice where the paper is silent: a dot product of two unit vectors lies in ``[-1, 1]``, so
    ``sigmoid(t_f . v_f)`` alone lies in ``[0.27, 0.73]`` and can never express a confident mask (nor a
    confident background). The decoder therefore returns the logits ``scale * (t_f . v_f) + bias`` with a
    learnable positive ``scale`` (stored as its logarithm, clamped to ``max_logit_scale``) and a learnable
    ``bias``, as CLIP-style models do for their similarity logits. ``y_text = sigmoid(logits)``.

    Args:
        in_channels: width ``H_v`` of the image encoder's patch tokens.
        embed_dim: size ``D`` of the joint (text) embedding.
        hidden_channels: channels of the upsampling blocks.
        num_upsamples: number of x2 upsampling residual blocks (2: 14 x 14 -> 56 x 56, as in the paper).
        init_logit_scale: initial value of the logit scale.
        init_logit_bias: initial value of the logit bias.
        max_logit_scale: upper clamp of the logit scale (keeps the logits, hence the losses, finite).
        norm: MONAI norm used in the residual blocks (instance norm: independent of the batch size).
        image_skip_channels: width of the image skip (module docstring); ``0`` (default) turns it off, as in
            the paper. When on, :meth:`pixel_features` needs the image.
        image_channels: channels of the image the skip reads (1 for grey X-rays, 3 for RGB).
        prior_grid: side ``g`` of the sentence's spatial prior (module docstring); ``0`` (default) turns it off.
        prior_gain: scale of the unit text embedding the prior's linear map reads. Under Adam a weight moves by
            about the learning rate per step whatever its gradient, so the gain sets how fast the prior can grow.
            Default ``8 * sqrt(D)``: ``sqrt(D)`` gives the embedding's entries unit scale, 8 was chosen on the
            text benchmark's validation images (docs/notebook/2026-12-06_text_benchmark.md).

    Raises:
        ValueError: when a size argument is not positive (``image_skip_channels``, ``prior_grid``: negative;
            ``prior_gain``: not positive).
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        hidden_channels: int = 128,
        num_upsamples: int = 2,
        init_logit_scale: float = 10.0,
        init_logit_bias: float = 0.0,
        max_logit_scale: float = 100.0,
        norm: str | tuple = ("instance", {"affine": True}),
        image_skip_channels: int = 0,
        image_channels: int = 1,
        prior_grid: int = 0,
        prior_gain: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("embed_dim", embed_dim),
            ("hidden_channels", hidden_channels),
            ("image_channels", image_channels),
        ):
            if int(value) < 1:
                raise ValueError(f"GroundingDecoder: {name} must be positive, got {value}")
        if int(num_upsamples) < 0:
            raise ValueError(f"GroundingDecoder: num_upsamples must be >= 0, got {num_upsamples}")
        if int(image_skip_channels) < 0:
            raise ValueError(f"GroundingDecoder: image_skip_channels must be >= 0, got {image_skip_channels}")
        if int(prior_grid) < 0:
            raise ValueError(f"GroundingDecoder: prior_grid must be >= 0, got {prior_grid}")
        if prior_gain is not None and not prior_gain > 0:
            raise ValueError(f"GroundingDecoder: prior_gain must be positive, got {prior_gain}")
        if not 0 < init_logit_scale <= max_logit_scale:
            raise ValueError(
                f"GroundingDecoder: need 0 < init_logit_scale <= max_logit_scale, got {init_logit_scale}, {max_logit_scale}"
            )
        self.in_channels = int(in_channels)
        self.embed_dim = int(embed_dim)
        self.num_upsamples = int(num_upsamples)
        self.max_logit_scale = float(max_logit_scale)
        self.input_proj = Convolution(2, self.in_channels, hidden_channels, kernel_size=1, norm=norm, act="relu")
        self.blocks = nn.Sequential(
            *[UpResidualBlock(hidden_channels, hidden_channels, norm=norm) for _ in range(self.num_upsamples)]
        )
        self.image_skip_channels = int(image_skip_channels)
        self.image_channels = int(image_channels)
        self.image_skip: nn.Module | None = None
        self.fuse: nn.Module | None = None
        if self.image_skip_channels > 0:
            k = self.image_skip_channels
            self.image_skip = nn.Sequential(
                Convolution(2, self.image_channels, k, kernel_size=3, norm=norm, act="relu"),
                Convolution(2, k, k, kernel_size=3, norm=norm, act="relu"),
            )
            self.fuse = Convolution(2, hidden_channels + k, hidden_channels, kernel_size=3, norm=norm, act="relu")
        self.output_proj = nn.Conv2d(hidden_channels, self.embed_dim, kernel_size=1)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
        self.prior_grid = int(prior_grid)
        self.prior_gain = float(prior_gain) if prior_gain is not None else 8.0 * math.sqrt(self.embed_dim)
        self.spatial_prior: nn.Linear | None = None
        if self.prior_grid > 0:
            self.spatial_prior = nn.Linear(self.embed_dim, self.prior_grid**2)
            nn.init.zeros_(self.spatial_prior.weight)
            nn.init.zeros_(self.spatial_prior.bias)

    @property
    def upsample_factor(self) -> int:
        """Ratio of the pixel-feature grid to the patch grid (``2 ** num_upsamples``) without the image skip;
        with it the features are at the image's resolution."""
        return 2**self.num_upsamples

    @property
    def uses_image(self) -> bool:
        """Whether :meth:`pixel_features` reads the image (``image_skip_channels > 0``)."""
        return self.image_skip is not None

    @property
    def logit_scale(self) -> torch.Tensor:
        """The positive scale applied to the cosine similarities, clamped to ``max_logit_scale``."""
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def pixel_features(
        self,
        patches: torch.Tensor,
        grid: Sequence[int],
        image: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        crop_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Per-pixel features ``v_f``.

        Args:
            patches: patch tokens ``(B, h*w, H_v)`` in row-major grid order.
            grid: ``(h, w)``.
            image: ``(B, image_channels, H, W)``, the image the tokens were computed from; needed (and only
                read) when the image skip is on.
            boxes: ``(B, 4)`` regions of the image to decode (:func:`crop_to_boxes`), e.g. the training patches;
                the upsampled token features and the image are cropped to them before the image skip, so f_g's
                full-resolution work is done on the regions only. ``None``: the whole image.
            crop_size: ``(H', W')`` the regions are decoded at (required with ``boxes``).

        Returns:
            L2-normalised (over channels) features ``(B, D, h * 2**num_upsamples, w * 2**num_upsamples)``,
            or ``(B, D, H, W)`` with the image skip, or ``(B, D, H', W')`` with ``boxes``.

        Raises:
            ValueError: when the token count or width does not match ``grid`` / ``in_channels``, or when the
                image skip is on and ``image`` is missing or has the wrong batch size or channel count.
        """
        if patches.ndim != 3:
            raise ValueError(f"GroundingDecoder: patches must be (B, h*w, H_v), got shape {tuple(patches.shape)}")
        h, w = (int(g) for g in grid)
        b, n, c = patches.shape
        if n != h * w or c != self.in_channels:
            raise ValueError(
                f"GroundingDecoder: patches of shape {tuple(patches.shape)} do not match grid {(h, w)} "
                f"and in_channels {self.in_channels}"
            )
        x = patches.transpose(1, 2).reshape(b, c, h, w)
        x = self.blocks(self.input_proj(x))
        if boxes is not None:
            if crop_size is None:
                raise ValueError("GroundingDecoder: boxes need a crop_size to decode the regions at")
            x = crop_to_boxes(x, boxes, crop_size)
            image = None if image is None else crop_to_boxes(image.to(x.dtype), boxes, crop_size)
        if self.image_skip is not None and self.fuse is not None:
            if image is None:
                raise ValueError("GroundingDecoder: image_skip_channels > 0, so pixel_features needs the image")
            if image.ndim != 4 or image.shape[0] != b or image.shape[1] != self.image_channels:
                raise ValueError(
                    f"GroundingDecoder: image must be (B={b}, image_channels={self.image_channels}, H, W), "
                    f"got shape {tuple(image.shape)}"
                )
            x = F.interpolate(x, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
            x = self.fuse(torch.cat([x, self.image_skip(image.to(x.dtype))], dim=1))
        return F.normalize(self.output_proj(x), dim=1)

    def prior_logits(
        self, text_embed: torch.Tensor, size: Sequence[int], boxes: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The sentence's spatial prior (module docstring) at ``size``.

        Args:
            text_embed: text embeddings ``(B, D)`` (normalised here).
            size: ``(h', w')`` of the text logits the prior is added to.
            boxes: ``(B, 4)`` regions the logits cover (:func:`crop_to_boxes`), ``None`` for the whole images.

        Returns:
            ``(B, 1, *size)`` logits, or ``None`` when ``prior_grid`` is 0.
        """
        if self.spatial_prior is None:
            return None
        t = F.normalize(text_embed.to(self.spatial_prior.weight.dtype), dim=1) * self.prior_gain
        grid = self.spatial_prior(t).view(-1, 1, self.prior_grid, self.prior_grid)
        if boxes is not None:
            return crop_to_boxes(grid, boxes, size)
        return F.interpolate(grid, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)

    def text_logits(
        self,
        pixel_features: torch.Tensor,
        text_embed: torch.Tensor,
        out_size: Sequence[int] | None = None,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text-guided mask logits ``scale * (t_f . v_f) + bias`` (plus the spatial prior when on); ``y_text =
        sigmoid`` of these.

        Args:
            pixel_features: L2-normalised ``v_f`` ``(B, D, h', w')`` from :meth:`pixel_features`.
            text_embed: text embeddings ``(B, D)`` (normalised here; ``t_f``).
            out_size: ``(H, W)`` to upsample the logits to (bilinear); ``None`` keeps the feature resolution.
            boxes: the regions ``pixel_features`` were decoded for (patch training), so that the spatial prior is
                cropped to them; ``None`` for whole images.

        Returns:
            logits ``(B, 1, H, W)`` (or ``(B, 1, h', w')``).

        Raises:
            ValueError: when the batch sizes or embedding sizes differ.
        """
        if text_embed.ndim != 2 or text_embed.shape[0] != pixel_features.shape[0]:
            raise ValueError(
                f"GroundingDecoder: text_embed must be (B, D) with B = {pixel_features.shape[0]}, "
                f"got {tuple(text_embed.shape)}"
            )
        if text_embed.shape[1] != pixel_features.shape[1]:
            raise ValueError(
                f"GroundingDecoder: text embedding size {text_embed.shape[1]} != pixel feature size {pixel_features.shape[1]}"
            )
        t = F.normalize(text_embed.to(pixel_features.dtype), dim=1)
        cos = torch.einsum("bdhw,bd->bhw", pixel_features, t).unsqueeze(1)
        logits = self.logit_scale.to(cos.dtype) * cos + self.logit_bias.to(cos.dtype)
        prior = self.prior_logits(text_embed, logits.shape[-2:], boxes)
        if prior is not None:
            logits = logits + prior.to(logits.dtype)
        if out_size is not None and tuple(int(s) for s in out_size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(int(s) for s in out_size), mode="bilinear", align_corners=False)
        return logits

    def forward(
        self,
        patches: torch.Tensor,
        grid: Sequence[int],
        text_embed: torch.Tensor | None = None,
        out_size: Sequence[int] | None = None,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run f_g.

        Args:
            patches: patch tokens ``(B, h*w, H_v)``.
            grid: ``(h, w)``.
            text_embed: text embeddings ``(B, D)``; when ``None`` the per-pixel features are returned
                (architecture.md: ``GroundingDecoder(patches, grid) -> pixel features``).
            out_size: ``(H, W)`` of the returned logits; ``None`` keeps the feature resolution.
            image: the image, for the image skip (see :meth:`pixel_features`).

        Returns:
            text-guided mask logits ``(B, 1, H, W)``, or without ``text_embed`` the pixel features ``(B, D, 4h, 4w)``
            (``(B, D, H, W)`` of the image with the image skip).
        """
        features = self.pixel_features(patches, grid, image)
        if text_embed is None:
            return features
        return self.text_logits(features, text_embed, out_size)
