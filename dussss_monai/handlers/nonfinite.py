"""Guard against non-finite losses before the optimiser step.

MONAI's trainers fire ``IterationEvents.LOSS_COMPLETED`` after the loss is computed and before
``backward()`` / ``optimizer.step()``. :class:`NonFiniteLossGuard` checks the loss there and raises
:class:`~dussss_monai.errors.DuSSSError` naming the iteration, so the weights are never updated with NaN/Inf
gradients and no later validation (hence no "best model" checkpoint) runs on broken weights.
:class:`~dussss_monai.engines.MeanTeacherTrainer` checks every loss term itself; this handler brings the check of
the total loss to any MONAI ``SupervisedTrainer`` (the bundles' supervised baseline, the stage-1 pre-trainer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from monai.engines.utils import IterationEvents

from dussss_monai.utils.finite import check_finite_losses

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["NonFiniteLossGuard"]


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
