"""Ramp-up of the consistency weight ``w(t)`` in ``total = L_sup + w(t) * L_semi`` (``docs/method.md``, "Pseudo labels and losses").

The paper states no weight and no ramp-up. We use the sigmoid-shaped ramp-up of Laine & Aila (temporal
ensembling, ICLR 2017), also used by Tarvainen & Valpola's mean teacher: ``exp(-5 (1 - t)^2)`` with
``t = step / rampup_steps`` clipped to ``[0, 1]``. Early pseudo labels come from an untrained teacher, so their
weight starts near ``exp(-5) = 0.0067`` and reaches ``max_weight`` after ``rampup_steps`` iterations.
"""

from __future__ import annotations

import math

__all__ = ["sigmoid_rampup", "ConsistencyWeight"]


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
