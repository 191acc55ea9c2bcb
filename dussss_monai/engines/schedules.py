"""Schedules of the stage-2 trainers: the ramp-up of the consistency weight ``w(t)`` in
``total = L_sup + w(t) * L_semi`` (``docs/method.md``, "Pseudo labels and losses") and the warm-up of the teacher's
EMA decay (:func:`ema_decay`; the update itself is :func:`dussss_monai.utils.ema.ema_update`).

The paper states no weight and no ramp-up. We use the sigmoid-shaped ramp-up of Laine & Aila (temporal
ensembling, ICLR 2017), also used by Tarvainen & Valpola's mean teacher: ``exp(-5 (1 - t)^2)`` with
``t = step / rampup_steps`` clipped to ``[0, 1]``. Early pseudo labels come from an untrained teacher, so their
weight starts near ``exp(-5) = 0.0067`` and reaches ``max_weight`` after ``rampup_steps`` iterations.
"""

from __future__ import annotations

import math

from dussss_monai.errors import ConfigError

__all__ = ["sigmoid_rampup", "ConsistencyWeight", "ema_decay"]


def sigmoid_rampup(step: float, rampup_steps: float) -> float:
    """Sigmoid-shaped ramp-up ``exp(-5 (1 - t)^2)``, ``t = clip(step / rampup_steps, 0, 1)``.

    Args:
        step: current step (iteration count, 0-based).
        rampup_steps: length of the ramp-up; ``0`` means no ramp-up (always 1).

    Returns:
        a value in ``[exp(-5), 1]``, 1 from ``step >= rampup_steps`` on.

    Raises:
        ValueError: when ``rampup_steps < 0``.
    """
    if rampup_steps < 0:
        raise ValueError(f"sigmoid_rampup: rampup_steps must be >= 0, got {rampup_steps}")
    if rampup_steps == 0:
        return 1.0
    t = min(max(float(step) / float(rampup_steps), 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class ConsistencyWeight:
    """``w(t) = max_weight * sigmoid_rampup(t, rampup_steps)``, callable on the 0-based iteration count.

    Args:
        max_weight: weight after the ramp-up (``>= 0``).
        rampup_steps: iterations of the ramp-up; ``0`` gives the constant ``max_weight``.

    Raises:
        ValueError: on a negative argument.
    """

    def __init__(self, max_weight: float = 1.0, rampup_steps: int = 0) -> None:
        if max_weight < 0:
            raise ValueError(f"ConsistencyWeight: max_weight must be >= 0, got {max_weight}")
        if rampup_steps < 0:
            raise ValueError(f"ConsistencyWeight: rampup_steps must be >= 0, got {rampup_steps}")
        self.max_weight = float(max_weight)
        self.rampup_steps = int(rampup_steps)

    def __call__(self, step: int) -> float:
        """Return ``w(step)``."""
        return self.max_weight * sigmoid_rampup(step, self.rampup_steps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_weight={self.max_weight}, rampup_steps={self.rampup_steps})"


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
