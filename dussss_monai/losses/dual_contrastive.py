"""Dual Contrastive Learning (DCL) with Semantic Similarity-Supervision, DuSSS stage 1 (``docs/method.md``,
"Dual Contrastive Learning (DCL)").

InfoNCE over in-batch negatives with ``sim_hat / tau`` as logits (``sim_hat`` from
:mod:`dussss_monai.losses.semantic_similarity`; plain cosine when ``use_sss=False``). Queries come from the
online encoders (with gradient), keys from the momentum encoders (no gradient):

- cross-modal (CMC): ``L_I2T`` (image queries, momentum-text keys), ``L_T2I`` (text queries,
  momentum-image keys); ``L_cmc = (L_I2T + L_T2I) / 2``, the symmetric image-text InfoNCE.
- intra-modal (IMC): ``L_I2I`` (image queries, keys = momentum encoding of the augmented image view),
  ``L_T2T`` (text queries, keys = momentum encoding of the augmented text); ``L_imc = (L_I2I + L_T2T) / 2``.
- total ``L = L_cmc + L_imc`` (the paper gives no weights).

Duplicate sentences. Templated reports repeat, so one batch can hold several samples with the same text.
Those are not negatives of each other: when ``texts`` is given, the target of query ``i`` is the uniform
distribution over every key ``j`` with ``texts[j] == texts[i]`` (soft targets, ``-sum_j t_ij log p_ij``),
for I2T, T2I and T2T. Without duplicates (or without ``texts``) this is the usual one-hot diagonal target.
I2I stays instance discrimination (diagonal only): two different images are different instances even when
they share a description. The soft targets matter where duplicate keys differ (T2I: different images of one
sentence; T2T: differently augmented copies). For I2T the keys of one sentence are identical, so soft and
one-hot targets give the same value; either way a sentence repeated ``n`` times caps each of its keys'
probability at ``1/n`` (loss floor ``log n``) without pushing the query away from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dussss_monai.errors import ConfigError
from dussss_monai.losses.semantic_similarity import SemanticSimilaritySupervision

__all__ = ["DualContrastiveLoss", "soft_info_nce", "positive_targets"]


def positive_targets(n: int, texts: Sequence[str] | None, device: torch.device | None = None) -> torch.Tensor:
    """``(n, n)`` row-normalised target matrix: 1 where ``texts[i] == texts[j]`` (identity without texts).

    Raises:
        ConfigError: when ``len(texts) != n``.
    """
    if texts is None:
        return torch.eye(n, device=device)
    texts = list(texts)
    if len(texts) != n:
        raise ConfigError(f"got {len(texts)} texts for a batch of {n}")
    ids = {t: k for k, t in enumerate(dict.fromkeys(texts))}
    # built on the host and copied without blocking: a blocking copy would wait for every queued kernel
    codes = torch.tensor([ids[t] for t in texts]).to(device, non_blocking=True)
    same = (codes.unsqueeze(0) == codes.unsqueeze(1)).float()
    return same / same.sum(1, keepdim=True)


def soft_info_nce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Row-wise InfoNCE with soft targets: ``mean_i -sum_j targets_ij * log_softmax(logits)_ij``."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def _features(f: Any, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        return f.embed, f.mu, f.sigma
    except AttributeError as e:
        raise ConfigError(f"{name} must have embed, mu and sigma (ModalityFeatures), got {type(f).__name__}") from e


class DualContrastiveLoss(nn.Module):
    """DuSSS stage-1 loss ``L_cmc + L_imc`` (either part can be switched off for ablations).

    Args:
        use_sss: use ``sim_hat`` (SSS, eqs. 1-5) as similarity; ``False`` uses the plain cosine.
        cross_modal: include ``L_cmc``.
        intra_modal: include ``L_imc``.
        a, b, lam, squared_distance: SSS constants (see :mod:`~dussss_monai.losses.semantic_similarity`).

    Raises:
        ConfigError: when both ``cross_modal`` and ``intra_modal`` are off.
    """

    def __init__(
        self,
        use_sss: bool = True,
        cross_modal: bool = True,
        intra_modal: bool = True,
        a: float = 1.0 / 200.0,
        b: float = 4.0,
        lam: float = 0.2,
        squared_distance: bool = True,
    ) -> None:
        super().__init__()
        if not (cross_modal or intra_modal):
            raise ConfigError("DualContrastiveLoss needs cross_modal or intra_modal (or both) switched on")
        self.cross_modal = bool(cross_modal)
        self.intra_modal = bool(intra_modal)
        self.sss = SemanticSimilaritySupervision(a=a, b=b, lam=lam, squared_distance=squared_distance, enabled=use_sss)

    def _term(
        self, q: Any, k: Any, targets: torch.Tensor, temperature: torch.Tensor, qn: str, kn: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s1, mu1, sg1 = _features(q, qn)
        s2, mu2, sg2 = _features(k, kn)
        if s1.shape[0] != s2.shape[0]:
            raise ConfigError(f"{qn} and {kn} have different batch sizes: {s1.shape[0]} vs {s2.shape[0]}")
        out = self.sss(s1, s2, mu1, sg1, mu2, sg2)
        return soft_info_nce(out.sim_hat / temperature, targets), out.d_sss

    def forward(
        self,
        img: Any,
        img_m: Any,
        img_aug_m: Any | None,
        txt: Any,
        txt_m: Any,
        txt_aug_m: Any | None,
        temperature: torch.Tensor | float,
        texts: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the stage-1 loss.

        Args:
            img: online image features (``embed``, ``mu``, ``sigma``), ``B`` rows.
            img_m: momentum features of the same images.
            img_aug_m: momentum features of the augmented images (needed when ``intra_modal``).
            txt: online text features.
            txt_m: momentum text features.
            txt_aug_m: momentum features of the augmented texts (needed when ``intra_modal``).
            temperature: ``tau`` (tensor or float > 0); logits are ``sim_hat / tau``.
            texts: the batch's sentences; duplicates become shared positives (see module docstring).

        Returns:
            ``(total, components)``; components (detached) are ``loss_i2t``, ``loss_t2i``, ``loss_cmc``,
            ``loss_i2i``, ``loss_t2t``, ``loss_imc`` (for the parts switched on) and ``d_sss_pos`` /
            ``d_sss_neg`` (mean ``D_SSS`` of positive / negative image-text pairs; ``d_sss_neg`` only when the batch
            has negatives) for monitoring.

        Raises:
            ConfigError: for missing augmented features, a non-positive temperature, or mismatched batches.
        """
        temperature = torch.as_tensor(temperature, dtype=torch.float32, device=img.embed.device)
        if not bool((temperature > 0).all()):
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        n = img.embed.shape[0]
        t_text = positive_targets(n, texts, device=img.embed.device)
        eye = torch.eye(n, device=img.embed.device)
        comps: dict[str, torch.Tensor] = {}
        total = img.embed.new_zeros(())
        if self.cross_modal:
            l_i2t, d_i2t = self._term(img, txt_m, t_text, temperature, "img", "txt_m")
            l_t2i, _ = self._term(txt, img_m, t_text, temperature, "txt", "img_m")
            l_cmc = 0.5 * (l_i2t + l_t2i)
            total = total + l_cmc
            comps.update(loss_i2t=l_i2t, loss_t2i=l_t2i, loss_cmc=l_cmc)
            with torch.no_grad():
                pos = t_text > 0
                comps["d_sss_pos"] = d_i2t[pos].mean()
                if bool((~pos).any()):  # absent when every pair is positive (batch of 1, one repeated text)
                    comps["d_sss_neg"] = d_i2t[~pos].mean()
        if self.intra_modal:
            if img_aug_m is None or txt_aug_m is None:
                raise ConfigError(
                    "intra_modal needs img_aug_m and txt_aug_m (momentum features of the augmented views)"
                )
            l_i2i, _ = self._term(img, img_aug_m, eye, temperature, "img", "img_aug_m")
            l_t2t, _ = self._term(txt, txt_aug_m, t_text, temperature, "txt", "txt_aug_m")
            l_imc = 0.5 * (l_i2i + l_t2t)
            total = total + l_imc
            comps.update(loss_i2i=l_i2i, loss_t2t=l_t2t, loss_imc=l_imc)
        return total, {k: v.detach() for k, v in comps.items()}
