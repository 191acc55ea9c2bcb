"""Semantic Similarity-Supervision (SSS), DuSSS paper eqs. (1)-(5) (``docs/method.md``, "Semantic Similarity-Supervision (SSS)").

For a pair ``(x1, x2)`` with L2-normalised global embeddings ``s1, s2`` and diagonal [CLS] Gaussians
``N(mu1, sigma1^2)``, ``N(mu2, sigma2^2)``:

    (1) D_2W    = ||mu1 - mu2||^2 + ||sigma1 - sigma2||^2      (squared 2-Wasserstein distance)
    (2) D_u     = a * D_2W + b                               (uncertainty level)
    (3) D_u_hat = D_u / D_s,   D_s = ||s1 - s2||  (squared by default, see below)
    (4) D_SSS   = exp(-lambda * D_u_hat)                     (in (0, 1])
    (5) sim_hat = 1 - (1 - cos(s1, s2)) * D_SSS

``sim_hat`` replaces the cosine similarity in the contrastive losses: the more uncertain a pair is relative
to its semantic distance (large ``D_u_hat``), the smaller ``D_SSS`` and the more its similarity is pulled
toward 1, which softens the penalty on pairs whose mismatch is ambiguous.

Choices the paper leaves open, documented here:

- ``D_s``: the paper writes ``||s1 - s2||``; the authors' code squares it. ``squared_distance=True`` (the
  default) follows the code. For unit vectors ``||s1 - s2||^2 = 2 - 2 cos`` lies in ``[0, 4]``.
- Constants (paper gives none): ``a = 1/200``, ``b = 4``, ``lambda = 0.2`` from the authors' code. Note
  that with ``b = 4`` and squared ``D_s <= 4``, ``D_u_hat >= 1`` so ``D_SSS <= exp(-lambda)``.
- ``D_s = 0`` (identical embeddings): ``D_s`` is clamped to ``eps`` so ``D_u_hat`` is large but finite;
  ``D_SSS`` then underflows toward 0 and ``sim_hat -> 1``, which equals ``cos = 1`` for identical
  embeddings: the limit is the right value and nothing is NaN (gradients included: below ``eps`` the clamp
  passes no gradient, and ``exp(-large) * large`` underflows to exactly 0).
- The embeddings are assumed L2-normalised, so ``cos(s1, s2) = s1 . s2`` (as produced by the VLM).
- Gradients flow through ``D_SSS`` (the Gaussian heads are trained only through it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dussss_monai.errors import ConfigError

__all__ = ["SemanticSimilarity", "semantic_similarity_supervision", "SemanticSimilaritySupervision"]


class SemanticSimilarity(NamedTuple):
    """Pairwise ``(B1, B2)`` matrices of SSS.

    Attributes:
        sim_hat: eq. (5), the supervised similarity used as contrastive logit (times ``1/tau``).
        cosine: ``cos(s1_i, s2_j)``.
        d_2w: eq. (1).
        d_s: the semantic distance ``||s1_i - s2_j||`` (squared if ``squared_distance``), before clamping.
        d_sss: eq. (4), in ``(0, 1]`` (may underflow to 0 for near-identical embeddings).
    """

    sim_hat: torch.Tensor
    cosine: torch.Tensor
    d_2w: torch.Tensor
    d_s: torch.Tensor
    d_sss: torch.Tensor


def _pairwise_sq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||^2`` for all pairs, by broadcasting (exact, and differentiable at 0)."""
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)


def _check_args(a: float, b: float, lam: float, eps: float) -> None:
    if a < 0 or b < 0 or lam < 0:
        raise ConfigError(f"SSS constants must be >= 0, got a={a}, b={b}, lam={lam}")
    if eps <= 0:
        raise ConfigError(f"eps must be > 0, got {eps}")


def semantic_similarity_supervision(
    s1: torch.Tensor,
    s2: torch.Tensor,
    mu1: torch.Tensor,
    sigma1: torch.Tensor,
    mu2: torch.Tensor,
    sigma2: torch.Tensor,
    a: float = 1.0 / 200.0,
    b: float = 4.0,
    lam: float = 0.2,
    squared_distance: bool = True,
    eps: float = 1e-6,
) -> SemanticSimilarity:
    """SSS for every pair ``(i, j)`` of two batches, eqs. (1)-(5).

    Args:
        s1: ``(B1, D)`` L2-normalised embeddings (queries).
        s2: ``(B2, D)`` L2-normalised embeddings (keys).
        mu1, sigma1: ``(B1, D_g)`` Gaussian of the queries (``sigma > 0``).
        mu2, sigma2: ``(B2, D_g)`` Gaussian of the keys.
        a, b: eq. (2) constants.
        lam: ``lambda`` of eq. (4); ``lam = 0`` gives ``D_SSS = 1`` and ``sim_hat = cos``.
        squared_distance: use ``D_s = ||s1 - s2||^2`` (authors' code) instead of ``||s1 - s2||``.
        eps: lower clamp of ``D_s``.

    Returns:
        :class:`SemanticSimilarity` of ``(B1, B2)`` matrices.

    Raises:
        ConfigError: for negative constants, non-positive ``eps`` or inconsistent shapes.
    """
    _check_args(a, b, lam, eps)
    if s1.ndim != 2 or s2.ndim != 2 or s1.shape[1] != s2.shape[1]:
        raise ConfigError(f"s1, s2 must be (B1, D) and (B2, D), got {tuple(s1.shape)} and {tuple(s2.shape)}")
    if (
        mu1.shape != sigma1.shape
        or mu2.shape != sigma2.shape
        or mu1.shape[0] != s1.shape[0]
        or mu2.shape[0] != s2.shape[0]
    ):
        raise ConfigError(
            f"Gaussian shapes {tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)} "
            f"do not match the embeddings {tuple(s1.shape)}, {tuple(s2.shape)}"
        )
    cosine = s1 @ s2.t()
    d_2w = _pairwise_sq(mu1, mu2) + _pairwise_sq(sigma1, sigma2)  # (1)
    d_u = a * d_2w + b  # (2)
    d_s = _pairwise_sq(s1, s2)
    if squared_distance:
        d_s_safe = d_s.clamp_min(eps)
    else:
        d_s = d_s.clamp_min(eps * eps).sqrt()  # sqrt has an infinite gradient at 0: clamp first
        d_s_safe = d_s.clamp_min(eps)
    d_u_hat = d_u / d_s_safe  # (3)
    d_sss = torch.exp(-lam * d_u_hat)  # (4)
    sim_hat = 1.0 - (1.0 - cosine) * d_sss  # (5)
    return SemanticSimilarity(sim_hat, cosine, d_2w, d_s, d_sss)


class SemanticSimilaritySupervision(nn.Module):
    """Module form of :func:`semantic_similarity_supervision` (constants from a bundle config).

    Args:
        a, b, lam, squared_distance, eps: see :func:`semantic_similarity_supervision`.
        enabled: ``False`` turns SSS off: ``sim_hat = cos`` and ``D_SSS = 1`` (ablation "without SSS").
    """

    def __init__(
        self,
        a: float = 1.0 / 200.0,
        b: float = 4.0,
        lam: float = 0.2,
        squared_distance: bool = True,
        eps: float = 1e-6,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        _check_args(a, b, lam, eps)
        self.a, self.b, self.lam, self.eps = float(a), float(b), float(lam), float(eps)
        self.squared_distance = bool(squared_distance)
        self.enabled = bool(enabled)

    def forward(
        self,
        s1: torch.Tensor,
        s2: torch.Tensor,
        mu1: torch.Tensor,
        sigma1: torch.Tensor,
        mu2: torch.Tensor,
        sigma2: torch.Tensor,
    ) -> SemanticSimilarity:
        """Pairwise SSS matrices (see :func:`semantic_similarity_supervision`)."""
        out = semantic_similarity_supervision(
            s1, s2, mu1, sigma1, mu2, sigma2, self.a, self.b, self.lam, self.squared_distance, self.eps
        )
        if self.enabled:
            return out
        return out._replace(sim_hat=out.cosine, d_sss=torch.ones_like(out.cosine))
