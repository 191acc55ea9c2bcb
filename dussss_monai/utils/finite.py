"""The check of a training step's losses for NaN and Inf, before any weight changes.

Every trainer of the project calls :func:`check_finite_losses` on all its loss terms between the forward pass and
the backward pass (:class:`~dussss_monai.engines.MeanTeacherTrainer` in its iteration; any MONAI trainer through
:class:`~dussss_monai.handlers.NonFiniteLossGuard`), so that a broken step never reaches the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from dussss_monai.errors import DuSSSError

__all__ = ["check_finite_losses"]


def _is_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


def check_finite_losses(losses: Mapping[str, Any], iteration: int, epoch: int | None = None) -> None:
    """Raise when any value of ``losses`` is NaN or infinite.

    Args:
        losses: named scalar losses (tensors or numbers).
        iteration: the engine's iteration, named in the message.
        epoch: the engine's epoch, named in the message when given.

    Raises:
        DuSSSError: naming the iteration, the epoch and every non-finite term with its value.
    """
    tensors = [v.detach().float().reshape(-1) for v in losses.values() if isinstance(v, torch.Tensor)]
    numbers_ok = all(_is_finite(v) for v in losses.values() if v is not None and not isinstance(v, torch.Tensor))
    # one device synchronisation for all terms in the common (finite) case
    if numbers_ok and (not tensors or bool(torch.isfinite(torch.cat(tensors)).all())):
        return
    bad = {k: v for k, v in losses.items() if v is not None and not _is_finite(v)}
    if bad:
        where = f"iteration {iteration}" + (f" (epoch {epoch})" if epoch is not None else "")
        terms = ", ".join(
            f"{k}={float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else v}" for k, v in bad.items()
        )
        raise DuSSSError(
            f"non-finite loss at {where}: {terms}; training stopped before the optimiser step, so the weights "
            "are those of the previous iteration (lower the learning rate, check the data, or disable amp)"
        )
