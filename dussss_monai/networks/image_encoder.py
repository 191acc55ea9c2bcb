"""Image encoder: a MONAI ViT returning its global token and the grid of patch tokens.

DuSSS (stage 1) uses a ViT-B/16 at 224 x 224: a [CLS] token (global image feature) plus 14 x 14 patch
tokens (used by the stage-2 grounding decoder). :class:`ViTImageEncoder` wraps
:class:`monai.networks.nets.ViT` with ``classification=True`` (for the [CLS] token) and runs its patch
embedding, transformer blocks and final norm, returning every token. Any module with the same contract
(``forward(x) -> ImageEncoding`` and a ``hidden_size`` attribute) can be given to the VLM instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.networks.nets import ViT
from torch import nn

from dussss_monai.errors import ConfigError

__all__ = ["ImageEncoding", "ViTImageEncoder"]


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
    return t  # type: ignore[return-value]


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
        self.vit.classification_head = nn.Identity()
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
        if x.ndim != 4:
            raise ConfigError(f"ViTImageEncoder expects (B, C, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ConfigError(f"ViTImageEncoder was built for {self.in_channels} channel(s), got {x.shape[1]}")
        if tuple(x.shape[2:]) != self.img_size:
            hint = "" if all(s % p == 0 for s, p in zip(x.shape[2:], self.patch_size)) else (
                f" (and not divisible by patch_size {self.patch_size})"
            )
            raise ConfigError(
                f"ViTImageEncoder was built for img_size {self.img_size}, got spatial size {tuple(x.shape[2:])}{hint}; "
                "resize the images or set img_size"
            )
        tokens = self.vit.patch_embedding(x)
        cls = self.vit.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1)
        for blk in self.vit.blocks:
            tokens = blk(tokens)
        tokens = self.vit.norm(tokens)
        return ImageEncoding(tokens[:, 0], tokens[:, 1:], self.grid)
