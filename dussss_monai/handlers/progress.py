"""One line per epoch while a run trains: where it is, how long it took, how long it still needs, how it scores.

MONAI's ``StatsHandler`` logs losses per iteration and metrics per validation, but never the time a run has left;
:class:`EpochProgress` adds a line after each epoch (and its validation)::

    epoch 3/24: 1 min 12 s elapsed, about 8 min 24 s left; val_mean_dice 0.7123 (best 0.7200, epoch 2)

The estimate is the mean epoch time of this attempt times the epochs left (a resumed run counts from where it
resumed; early stopping may end a run sooner).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["EpochProgress", "format_duration"]

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``"1 h 02 min"``, ``"8 min 24 s"`` or ``"42 s"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


class EpochProgress:
    """Log a progress line after every epoch of a trainer (module docstring).

    Args:
        validator: the validation engine whose key metric is shown (``None``: no metric).
        name: logger name (default: this module's).

    Attach it after the ``ValidationHandler`` in a trainer's handlers, so that the line shows the epoch's
    validation.
    """

    def __init__(self, validator: Any = None, name: str | None = None) -> None:
        self.validator = validator
        self.logger = logging.getLogger(name or __name__)
        self._t0 = 0.0
        self._first_epoch = 0

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._t0 = time.monotonic()
        self._first_epoch = engine.state.epoch  # a resumed run starts past epoch 0

    def line(self, engine: Engine) -> str:
        """The progress line of ``engine``'s current epoch."""
        epoch, total = engine.state.epoch, engine.state.max_epochs or engine.state.epoch
        elapsed = time.monotonic() - self._t0
        done = max(epoch - self._first_epoch, 1)
        left = elapsed / done * max(total - epoch, 0)
        text = f"epoch {epoch}/{total}: {format_duration(elapsed)} elapsed"
        text += f", about {format_duration(left)} left" if epoch < total else ", done"
        state = getattr(self.validator, "state", None)
        metric = getattr(state, "key_metric_name", None) or getattr(
            getattr(self.validator, "key_metric", None), "name", None
        )
        metrics = getattr(state, "metrics", {}) or {}
        if state is not None and metrics:
            name = metric if metric in metrics else next(iter(metrics))
            text += f"; {name} {metrics[name]:.4f}"
            best, best_epoch = getattr(state, "best_metric", None), getattr(state, "best_metric_epoch", None)
            if isinstance(best, (int, float)) and best != -1:
                text += f" (best {best:.4f}, epoch {best_epoch})"
        return text

    def __call__(self, engine: Engine) -> None:
        self.logger.info(self.line(engine))
