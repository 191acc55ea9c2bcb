"""Guard against non-finite losses before the optimiser step.

MONAI's trainers fire ``IterationEvents.LOSS_COMPLETED`` after the loss is computed and before
``backward()`` / ``optimizer.step()``. :class:`NonFiniteLossGuard` checks the loss there and raises
:class:`~dussss_monai.errors.DuSSSError` naming the iteration, so the weights are never updated with NaN/Inf
gradients and no later validation (hence no "best model" checkpoint) runs on broken weights.
:class:`~dussss_monai.engines.MeanTeacherTrainer` checks every loss term itself; this handler brings the check of
the total loss to any MONAI ``SupervisedTrainer`` (the bundles' supervised baseline, the stage-1 pre-trainer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from monai.engines.utils import IterationEvents

from dussss_monai.errors import DuSSSError

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["NonFiniteLossGuard", "check_finite_losses"]


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


class NonFiniteLossGuard:
    """Ignite handler raising :class:`DuSSSError` when the loss is NaN/Inf, before the optimiser step.

    Args:
        output_transform: maps ``engine.state.output`` to a scalar loss or a mapping of named losses;
            default: ``output["loss"]``.

    """

    def __init__(self, output_transform: Callable[[Any], Any] | None = None) -> None:
        self.output_transform = output_transform or (lambda output: {"loss": output["loss"]})

    def attach(self, engine: Engine) -> None:
        """Check the loss on ``IterationEvents.LOSS_COMPLETED`` (before backward and the optimiser step)."""
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Check the current loss of ``engine``.

        Raises:
            DuSSSError: when it is not finite.
        """
        value = self.output_transform(engine.state.output)
        losses = value if isinstance(value, Mapping) else {"loss": value}
        check_finite_losses(losses, engine.state.iteration, engine.state.epoch)
