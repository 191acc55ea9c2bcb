"""Image encoders returning a global token and the grid of patch tokens.

DuSSS (stage 1) uses a ViT-B/16 at 224 x 224: a [CLS] token (global image feature) plus 14 x 14 patch
tokens (used by the stage-2 grounding decoder). :class:`ViTImageEncoder` wraps
:class:`monai.networks.nets.ViT` with ``classification=True`` (for the [CLS] token) and runs its patch
embedding, transformer blocks and final norm, returning every token. It is the paper's encoder and the
bundle default.

:class:`ConvImageEncoder` is a small convolutional encoder with the same contract, for small data and
CPU runs (a ViT trained from scratch on a few hundred images barely learns: see the measurements in
``tests/engines/test_vlm_pretrainer.py``). Its patches are the final feature map, its global token an
position-aware pooling of that map (by default a linear map of the flattened, channel-reduced map), so
that the global token knows *where* a finding is, not only what it looks like.

:func:`build_image_encoder` picks one by name (``"vit"`` or ``"conv"``), so a bundle config selects the
encoder with one key. Any module with the same contract (``forward(x) -> ImageEncoding``, a ``hidden_size``
attribute and a ``grid``) can be given to the VLM instead.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.nets import ViT
from torch import nn

from dussss_monai.errors import ConfigError

__all__ = ["ImageEncoding", "ViTImageEncoder", "ConvImageEncoder", "build_image_encoder", "IMAGE_ENCODERS"]


class ImageEncoding(NamedTuple):
    """Output of an image encoder.

    Attributes:
        cls: ``(B, H)`` global image feature ([CLS] token after the final norm).
        patches: ``(B, h * w, H)`` patch tokens in row-major order of the patch grid.
        grid: ``(h, w)``, the patch grid size.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 2 or min(t) < 1:
        raise ConfigError(f"{name} must be a positive int or a pair of positive ints, got {v!r}")
    return t


class ViTImageEncoder(nn.Module):
    """2D Vision Transformer encoder (MONAI ``ViT``) with a [CLS] token.

    Defaults are ViT-B/16 at 224 x 224 as in the paper (86 M parameters); tests use tiny settings.

    Args:
        in_channels: image channels (1 for X-ray/CT, 3 for H&E).
        img_size: input size ``(H, W)`` (or one int); every input must have exactly this size.
        patch_size: patch size; must divide ``img_size``.
        hidden_size: token width ``H``.
        mlp_dim: width of the transformer MLP.
        num_layers: number of transformer blocks.
        num_heads: attention heads; must divide ``hidden_size``.
        dropout_rate: dropout in the transformer, in ``[0, 1)``.
        qkv_bias: bias in the attention projections.
        fused_attention: compute attention with ``torch.nn.functional.scaled_dot_product_attention`` (MONAI's
            ``use_flash_attention`` of ``SABlock``) instead of an explicit ``(B, heads, N, N)`` softmax: the same
            function and the same weights, less memory and fewer kernels. Only used when ``dropout_rate`` is 0,
            because MONAI's fused path applies its attention dropout in eval mode too.

    Raises:
        ConfigError: for inconsistent sizes (patch not dividing the image, heads not dividing the width).
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size, "img_size")
        self.patch_size = _pair(patch_size, "patch_size")
        if any(i % p for i, p in zip(self.img_size, self.patch_size)):
            raise ConfigError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        if in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = int(in_channels)
        self.hidden_size = int(hidden_size)
        self.grid = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.vit = ViT(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            classification=True,
            dropout_rate=dropout_rate,
            spatial_dims=2,
            qkv_bias=qkv_bias,
        )
        # the classification head is never used: replace it so it holds no dead parameters
        # (MONAI annotates the head as nn.Sequential; any module will do)
        cast(nn.Module, self.vit).classification_head = nn.Identity()
        self.fused_attention = bool(fused_attention) and dropout_rate == 0.0
        for block in self.vit.blocks:
            cast(TransformerBlock, block).attn.use_flash_attention = self.fused_attention
        nn.init.trunc_normal_(self.vit.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> ImageEncoding:
        """Encode a batch of images.

        Args:
            x: ``(B, C, H, W)`` with ``C == in_channels`` and ``(H, W) == img_size``.

        Returns:
            :class:`ImageEncoding` (``cls (B, hidden)``, ``patches (B, h*w, hidden)``, ``grid (h, w)``).

        Raises:
            ConfigError: when the input shape does not match the configuration.
        """
        _check_input("ViTImageEncoder", x, self.in_channels, self.img_size, self.patch_size)
        tokens = self.vit.patch_embedding(x)
        cls = self.vit.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1)
        for blk in self.vit.blocks:
            tokens = blk(tokens)
        tokens = self.vit.norm(tokens)
        return ImageEncoding(tokens[:, 0], tokens[:, 1:], self.grid)


def _check_input(
    name: str, x: torch.Tensor, in_channels: int, img_size: tuple[int, int], divisor: tuple[int, int]
) -> None:
    if x.ndim != 4:
        raise ConfigError(f"{name} expects (B, C, H, W) input, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ConfigError(f"{name} was built for {in_channels} channel(s), got {x.shape[1]}")
    if tuple(x.shape[2:]) != img_size:
        hint = "" if all(s % p == 0 for s, p in zip(x.shape[2:], divisor)) else f" (and not divisible by {divisor})"
        raise ConfigError(
            f"{name} was built for img_size {img_size}, got spatial size {tuple(x.shape[2:])}{hint}; "
            "resize the images or set img_size"
        )


def _conv_block(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    g = math.gcd(groups, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(g, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(g, c_out),
        nn.ReLU(inplace=True),
    )


class ConvImageEncoder(nn.Module):
    """Small 2D convolutional encoder with the :class:`ViTImageEncoder` contract.

    Layout: optional coordinate channels (normalised ``y`` and ``x`` in ``[-1, 1]`` appended to the input,
    "CoordConv", so that every feature knows its absolute position: left and right lung zones look alike
    and differ only by where they are), then one stage of two 3x3 conv + GroupNorm + ReLU per entry of
    ``channels``; the first stage has stride ``stem_stride``, each later one halves the resolution. A 1x1
    conv maps the last stage to ``hidden_size``.

    - ``patches``: the final feature map ``(B, hidden, h, w)`` flattened row-major to ``(B, h*w, hidden)``,
      ``grid = (h, w) = img_size / (stem_stride * 2**(len(channels) - 1))`` (default stem stride 2: 4 stages
      give 224 -> 14 x 14 as ViT-B/16, 3 stages give 64 -> 8 x 8).
    - ``cls``: the pooled feature map. ``pool="flatten"`` (default): a 1x1 conv reduces the map to
      ``flatten_channels``, then ReLU, flatten and a linear layer to ``hidden_size`` (every position has its
      own weights, so the global token encodes where things are); ``pool="attention"``: multi-head attention
      of one query (mean token + its position embedding) over the tokens plus learned position embeddings,
      as CLIP's ``AttentionPool2d``; ``pool="mean"``: plain global average. Measured on the demo data
      (64 px, supervised probe predicting the 6 infected lung zones from the global token, 30 epochs of
      5 batches): flatten reaches 0.84 bit accuracy / 0.35 exact zone sets on validation, attention pooling
      0.63 / 0.075 (the constant predictor's 0.625 / 0): only flatten learns within such a budget.

    GroupNorm, not BatchNorm: the momentum (EMA) copy of the encoder then needs no batch statistics.

    Args:
        in_channels: image channels.
        img_size: input size ``(H, W)`` (or one int); must be divisible by ``2**(len(channels) - 1)``.
        channels: widths of the stages (at least 1).
        hidden_size: token width ``H`` (default: ``channels[-1]``).
        num_heads: heads of the attention pooling; must divide ``hidden_size``.
        pool: ``"flatten"``, ``"attention"`` or ``"mean"``.
        flatten_channels: channels of the reduced map flattened by ``pool="flatten"``.
        stem_stride: stride of the first stage (1, 2 or 4).
        coord_channels: append the two coordinate channels to the input.
        norm_groups: GroupNorm groups (reduced to a divisor of each width).

    Raises:
        ConfigError: for inconsistent sizes or unknown options.
    """

    coords: torch.Tensor  # a buffer, registered in __init__ when coord_channels is set

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 224,
        channels: Sequence[int] = (32, 64, 128, 256),
        hidden_size: int | None = None,
        num_heads: int = 4,
        pool: str = "flatten",
        coord_channels: bool = True,
        norm_groups: int = 8,
        stem_stride: int = 2,
        flatten_channels: int = 16,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            raise ConfigError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        if in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
        if pool not in _POOLS:
            raise ConfigError(f"pool must be one of {_POOLS}, got {pool!r}")
        self.img_size = _pair(img_size, "img_size")
        if int(stem_stride) not in (1, 2, 4):
            raise ConfigError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        f = int(stem_stride) * 2 ** (len(channels) - 1)
        self.stride = (f, f)
        if any(i % f for i in self.img_size):
            raise ConfigError(
                f"img_size {self.img_size} must be divisible by {f} (stem_stride * 2**(len(channels) - 1) for "
                f"{len(channels)} stages)"
            )
        hidden = int(channels[-1] if hidden_size is None else hidden_size)
        if hidden < 1 or hidden % num_heads:
            raise ConfigError(f"hidden_size {hidden} must be positive and divisible by num_heads {num_heads}")
        self.in_channels = int(in_channels)
        self.hidden_size = hidden
        self.grid = (self.img_size[0] // f, self.img_size[1] // f)
        self.pool = pool
        self.coord_channels = bool(coord_channels)
        c = self.in_channels + (2 if self.coord_channels else 0)
        stages = []
        for i, w in enumerate(channels):
            stages.append(_conv_block(c, w, int(stem_stride) if i == 0 else 2, int(norm_groups)))
            c = w
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(c, hidden, 1)
        if self.coord_channels:
            yy, xx = torch.meshgrid(
                torch.linspace(-1.0, 1.0, self.img_size[0]), torch.linspace(-1.0, 1.0, self.img_size[1]), indexing="ij"
            )
            self.register_buffer("coords", torch.stack((yy, xx))[None], persistent=False)
        n = self.grid[0] * self.grid[1]
        if pool == "attention":
            self.pos_embed = nn.Parameter(torch.randn(n + 1, hidden) / hidden**0.5)
            self.attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        elif pool == "flatten":
            self.flat_reduce = nn.Conv2d(hidden, flatten_channels, 1)
            self.flat_proj = nn.Linear(flatten_channels * n, hidden)

    def forward(self, x: torch.Tensor) -> ImageEncoding:
        """Encode a batch of images.

        Args:
            x: ``(B, C, H, W)`` with ``C == in_channels`` and ``(H, W) == img_size``.

        Returns:
            :class:`ImageEncoding` (``cls (B, hidden)``, ``patches (B, h*w, hidden)``, ``grid (h, w)``).

        Raises:
            ConfigError: when the input shape does not match the configuration.
        """
        _check_input("ConvImageEncoder", x, self.in_channels, self.img_size, self.stride)
        if self.coord_channels:
            x = torch.cat((x, self.coords.to(x.dtype).expand(x.shape[0], -1, -1, -1)), dim=1)
        fmap = self.proj(self.stages(x))
        patches = fmap.flatten(2).transpose(1, 2)  # (B, h*w, hidden), row-major
        if self.pool == "mean":
            return ImageEncoding(patches.mean(1), patches, self.grid)
        if self.pool == "flatten":
            return ImageEncoding(self.flat_proj(F.relu(self.flat_reduce(fmap)).flatten(1)), patches, self.grid)
        tokens = torch.cat((patches.mean(1, keepdim=True), patches), dim=1) + self.pos_embed.to(patches.dtype)
        cls, _ = self.attn(tokens[:, :1], tokens, tokens, need_weights=False)
        return ImageEncoding(cls[:, 0], patches, self.grid)


_POOLS = ("attention", "mean", "flatten")
#: names accepted by :func:`build_image_encoder`
IMAGE_ENCODERS: dict[str, type[ViTImageEncoder] | type[ConvImageEncoder]] = {
    "vit": ViTImageEncoder,
    "conv": ConvImageEncoder,
}


def build_image_encoder(
    name: str, in_channels: int = 1, img_size: int | Sequence[int] = 224, **kwargs: Any
) -> nn.Module:
    """Build the image encoder called ``name`` (``"vit"``: :class:`ViTImageEncoder`, ``"conv"``: :class:`ConvImageEncoder`).

    Keyword arguments may be given bare (``patch_size=16``) or prefixed with an encoder name
    (``vit_patch_size=16``, ``conv_channels=[32, 64]``). Prefixed arguments of the *other* encoder are
    ignored, so a bundle config can pass every ``vit_*`` and ``conv_*`` setting and switch encoders with
    the single key ``name``; bare arguments go to the chosen encoder as they are.

    Args:
        name: ``"vit"`` or ``"conv"`` (case-insensitive).
        in_channels: image channels.
        img_size: input size.
        kwargs: constructor arguments (see above).

    Returns:
        the encoder module.

    Raises:
        ConfigError: for an unknown name, or an argument the chosen encoder does not take.
    """
    key = str(name).strip().lower()
    if key not in IMAGE_ENCODERS:
        raise ConfigError(f"unknown image encoder {name!r}; choose one of {sorted(IMAGE_ENCODERS)}")
    cls = IMAGE_ENCODERS[key]
    args: dict[str, Any] = {}
    for k, v in kwargs.items():
        prefix, _, rest = k.partition("_")
        if prefix in IMAGE_ENCODERS and rest:
            if prefix == key:
                args[rest] = v
            continue
        args[k] = v
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "in_channels", "img_size"}
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise ConfigError(f"{cls.__name__} does not take {unknown}; it takes {sorted(accepted)}")
    return cls(in_channels=in_channels, img_size=img_size, **args)
