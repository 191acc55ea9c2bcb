"""EMA updates for the stage-2 mean teacher and the stage-1 momentum encoders.

The update itself, ``theta_t <- decay * theta_t + (1 - decay) * theta_s``, is
:func:`dussss_monai.utils.ema.ema_update` (re-exported here; networks use it without importing engines).
:func:`ema_decay` is the mean-teacher warm-up schedule of the decay ``alpha``.
"""

from __future__ import annotations

from dussss_monai.errors import ConfigError
from dussss_monai.utils.ema import ema_update

__all__ = ["ema_update", "ema_decay"]


def ema_decay(step: int, max_decay: float = 0.99) -> float:
    """Mean-teacher decay at a 0-based global step: ``min(1 - 1 / (step + 1), max_decay)``.

    The paper gives no ``alpha``; this is the schedule of the authors' code (``max_decay = 0.99``) and of
    Tarvainen & Valpola's mean teacher. At step 0 the decay is 0, so the first update copies the student
    into the teacher; early on the teacher is the running *mean* of the student weights seen so far
    (decay ``1 - 1/(t+1)``) and from step ``1 / (1 - max_decay) - 1`` on a fixed-rate EMA with ``max_decay``.

    Args:
        step: 0-based number of optimiser steps taken before this update.
        max_decay: upper bound ``alpha`` in ``[0, 1]``.

    Returns:
        the decay in ``[0, max_decay]``.

    Raises:
        ConfigError: when ``step < 0`` or ``max_decay`` is outside ``[0, 1]``.
    """
    if step < 0:
        raise ConfigError(f"ema_decay: step must be >= 0, got {step}")
    if not 0.0 <= max_decay <= 1.0:
        raise ConfigError(f"ema_decay: max_decay must be in [0, 1], got {max_decay}")
    return min(1.0 - 1.0 / (step + 1.0), float(max_decay))
