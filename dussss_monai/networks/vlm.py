"""The DuSSS stage-1 vision-language model (``docs/method.md``, "Encoders and embeddings").

Image and text encoders, linear projections of their global tokens to L2-normalised embeddings, diagonal
Gaussian ("distribution") heads on the global tokens, momentum (EMA) copies for the contrastive keys, and a
learnable temperature. The losses live in :mod:`dussss_monai.losses`; the training loop in
:mod:`dussss_monai.engines.vlm_pretrainer`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from dussss_monai.errors import ConfigError
from dussss_monai.utils.ema import ema_update

__all__ = ["ModalityFeatures", "GaussianHead", "DuSSSVisionLanguageModel"]


class ModalityFeatures(NamedTuple):
    """Features of one modality for a batch.

    Attributes:
        embed: ``(B, D)`` L2-normalised global embedding (projection of the global token).
        mu: ``(B, D_g)`` mean of the global token's diagonal Gaussian.
        sigma: ``(B, D_g)`` standard deviation (> 0) of that Gaussian.
        patches: image only: ``(B, h*w, H_v)`` patch tokens; ``None`` for text.
        grid: image only: the patch grid ``(h, w)``; ``None`` for text.
        tokens: text only: ``(B, L, H_t)`` word tokens; ``None`` for images.
        attention_mask: text only: ``(B, L)``; ``None`` for images.
    """

    embed: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    patches: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    tokens: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


class GaussianHead(nn.Module):
    """Diagonal Gaussian head: ``mu = W_mu x``, ``sigma = softplus(W_s x) + eps`` (so ``sigma > 0``).

    Args:
        in_features: width of the input token.
        out_features: dimension ``D_g`` of the Gaussian.
        eps: lower bound added to ``sigma``.
    """

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.mu = nn.Linear(in_features, out_features)
        self.log_sigma = nn.Linear(in_features, out_features)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(x), F.softplus(self.log_sigma(x)) + self.eps


def _is_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class DuSSSVisionLanguageModel(nn.Module):
    """Stage-1 vision-language model of DuSSS.

    Online branch: ``embed = normalize(W x_cls)`` and ``(mu, sigma) = Gaussian(x_cls)`` for each modality.
    Momentum branch: EMA copies (paper: m = 0.995) that produce the keys of the contrastive losses. All
    momentum copies live in the :class:`~torch.nn.ModuleDict` ``self.momentum`` (keys ``image_encoder``,
    ``image_proj``, ``image_gauss``, ``text_proj``, ``text_gauss`` and, only when the text encoder is
    trainable, ``text_encoder``; a frozen text encoder is its own momentum copy, so 22 M+ parameters are not
    duplicated). Momentum parameters have ``requires_grad=False``, are updated only by :meth:`momentum_update`,
    and are kept in eval mode (no dropout in the keys). Build the optimiser from :meth:`trainable_parameters`
    (``parameters()`` also works: the momentum and frozen parameters never receive gradients).

    The plain ``state_dict`` holds everything (online, momentum, temperature) and round-trips with
    ``load_state_dict``.

    Args:
        image_encoder: ``x (B, C, H, W) -> ImageEncoding(cls, patches, grid)`` with a ``hidden_size``
            attribute (e.g. :class:`~dussss_monai.networks.image_encoder.ViTImageEncoder`).
        text_encoder: ``texts -> TextEncoding(cls, tokens, attention_mask)`` with a ``hidden_size``
            attribute (e.g. :class:`~dussss_monai.networks.text_encoder.HFTextEncoder`).
        embed_dim: dimension ``D`` of the global embeddings (paper code: 512; default 256).
        gaussian_dim: dimension ``D_g`` of the Gaussian heads (default ``embed_dim``).
        momentum: EMA factor ``m`` of the momentum copies, in ``[0, 1]``.
        temperature: initial InfoNCE temperature ``tau`` (paper: 0.07).
        learnable_temperature: learn ``tau`` (as ``log tau``) or keep it fixed (a buffer).
        temperature_range: ``tau`` is clamped to this range in :attr:`temperature`.

    Raises:
        ConfigError: for non-positive dimensions, ``momentum`` outside ``[0, 1]``, a temperature outside
            ``temperature_range``, or encoders without ``hidden_size``.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        embed_dim: int = 256,
        gaussian_dim: int | None = None,
        momentum: float = 0.995,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
        temperature_range: Sequence[float] = (0.01, 1.0),
    ) -> None:
        super().__init__()
        gaussian_dim = embed_dim if gaussian_dim is None else gaussian_dim
        if embed_dim < 1 or gaussian_dim < 1:
            raise ConfigError(f"embed_dim and gaussian_dim must be >= 1, got {embed_dim}, {gaussian_dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"momentum must be in [0, 1], got {momentum}")
        t_min, t_max = (float(v) for v in temperature_range)
        if not 0.0 < t_min <= temperature <= t_max:
            raise ConfigError(
                f"temperature {temperature} must lie in temperature_range [{t_min}, {t_max}] with min > 0"
            )
        for name, enc in (("image_encoder", image_encoder), ("text_encoder", text_encoder)):
            if not isinstance(getattr(enc, "hidden_size", None), int):
                raise ConfigError(f"{name} ({type(enc).__name__}) must expose an int attribute/property hidden_size")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.embed_dim = int(embed_dim)
        self.gaussian_dim = int(gaussian_dim)
        self.momentum_factor = float(momentum)
        self.temperature_range = (t_min, t_max)
        # checked above to be an int (nn.Module.__getattr__ types it as Tensor | Module)
        h_v, h_t = int(cast(int, image_encoder.hidden_size)), int(cast(int, text_encoder.hidden_size))
        self.image_proj = nn.Linear(h_v, embed_dim)
        self.text_proj = nn.Linear(h_t, embed_dim)
        self.image_gauss = GaussianHead(h_v, gaussian_dim)
        self.text_gauss = GaussianHead(h_t, gaussian_dim)
        log_tau = torch.tensor(math.log(temperature))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau)

        self.text_encoder_trainable = _is_trainable(text_encoder)
        online = ["image_encoder", "image_proj", "image_gauss", "text_proj", "text_gauss"]
        if self.text_encoder_trainable:
            online.append("text_encoder")
        self.momentum = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in online})
        for p in self.momentum.parameters():
            p.requires_grad_(False)
        self.momentum.eval()

    # ------------------------------------------------------------------ parameters and modes
    @property
    def temperature(self) -> torch.Tensor:
        """``tau = exp(log_temperature)`` clamped to ``temperature_range`` (gradient flows inside the range)."""
        return self.log_temperature.exp().clamp(*self.temperature_range)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters to optimise: online encoders (if trainable), projections, heads, temperature."""
        momentum_ids = {id(p) for p in self.momentum.parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in momentum_ids)

    def train(self, mode: bool = True) -> DuSSSVisionLanguageModel:
        """Set the mode of the online modules; momentum copies always stay in eval mode."""
        super().train(mode)
        self.momentum.eval()
        return self

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``theta_m <- m * theta_m + (1 - m) * theta`` for every momentum copy (paper: m = 0.995)."""
        for name, target in self.momentum.items():
            ema_update(target, getattr(self, name), self.momentum_factor)

    # ------------------------------------------------------------------ encoders
    def _branch(self, name: str, momentum: bool) -> nn.Module:
        if momentum and name in self.momentum:
            return self.momentum[name]
        return getattr(self, name)

    def encode_image(self, x: torch.Tensor, momentum: bool = False) -> ModalityFeatures:
        """Encode images.

        Args:
            x: ``(B, C, H, W)`` images.
            momentum: use the momentum copies (run without gradient).

        Returns:
            :class:`ModalityFeatures` with ``embed``, ``mu``, ``sigma``, ``patches`` and ``grid``.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not momentum):
            enc = self._branch("image_encoder", momentum)(x)
            embed = F.normalize(self._branch("image_proj", momentum)(enc.cls).float(), dim=-1)
            mu, sigma = self._branch("image_gauss", momentum)(enc.cls)
        return ModalityFeatures(embed, mu.float(), sigma.float(), patches=enc.patches, grid=tuple(enc.grid))

    def encode_text(self, texts: Sequence[str], momentum: bool = False) -> ModalityFeatures:
        """Encode sentences.

        Args:
            texts: ``B`` sentences.
            momentum: use the momentum copies (run without gradient). With a frozen text encoder the
                encoder is shared and only the projection and Gaussian heads differ.

        Returns:
            :class:`ModalityFeatures` with ``embed``, ``mu``, ``sigma``, ``tokens`` and ``attention_mask``.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not momentum):
            enc = self._branch("text_encoder", momentum)(texts)
            embed = F.normalize(self._branch("text_proj", momentum)(enc.cls).float(), dim=-1)
            mu, sigma = self._branch("text_gauss", momentum)(enc.cls)
        return ModalityFeatures(embed, mu.float(), sigma.float(), tokens=enc.tokens, attention_mask=enc.attention_mask)

    def forward(self, image: torch.Tensor, texts: Sequence[str]) -> tuple[ModalityFeatures, ModalityFeatures]:
        """Online features of an image batch and its sentences: ``(encode_image(image), encode_text(texts))``."""
        return self.encode_image(image), self.encode_text(texts)
