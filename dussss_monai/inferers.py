"""Inferers beyond MONAI's, each wrapping another inferer: flip test-time augmentation, and mixed precision on any
device (MONAI's trainers use autocast on CUDA only; on a CPU with bfloat16 matrix units it halves a step's time)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["FLIPS_2D", "FLIPS_SLICES", "FlipTTAInferer", "AutocastInferer", "cpu_has_fast_bfloat16"]

#: no flip, horizontal, vertical, both: the four flips of a 2D image
FLIPS_2D: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
#: the same four flips of every slice of a volume ``(B, C, H, W, D)`` (the slices lie along the last axis)
FLIPS_SLICES: tuple[tuple[int, ...], ...] = ((), (-2,), (-3,), (-3, -2))


class FlipTTAInferer(Inferer):
    """Predict every flip of the input with ``inferer`` and average the probabilities (test-time augmentation).

    The output is the logit of the mean sigmoid probability, so that post-processing that applies a sigmoid
    (validation, evaluation, inference) works unchanged; a network trained with flips predicts each flipped view
    about as well, and averaging them removes part of the variance of a single prediction (as nnU-Net does).

    Args:
        inferer: the inferer of one view; default ``SimpleInferer``.
        flips: the dimensions to flip for each view; default the four flips of a 2D image.

    Raises:
        ValueError: when ``flips`` is empty.
    """

    def __init__(self, inferer: Inferer | None = None, flips: Sequence[Sequence[int]] = FLIPS_2D) -> None:
        super().__init__()
        if not flips:
            raise ValueError("FlipTTAInferer needs at least one view (flips)")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.flips = [tuple(int(d) for d in dims) for dims in flips]

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Mean probability over the flipped views, returned as logits ``(B, 1, H, W)``."""
        total: torch.Tensor | None = None
        for dims in self.flips:
            view = inputs.flip(dims) if dims else inputs
            prob = torch.sigmoid(self.inferer(view, network, *args, **kwargs).float())
            prob = prob.flip(dims) if dims else prob
            total = prob if total is None else total + prob
        assert total is not None
        return torch.logit(total / len(self.flips), eps=1e-6)


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX or AVX512-BF16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


class AutocastInferer(Inferer):
    """Run ``inferer`` under ``torch.autocast`` on the inputs' device and return float32 outputs.

    MONAI's trainers and evaluators run the network's forward pass through their inferer, so wrapping it switches
    mixed precision on for training and evaluation alike; the backward pass follows the autocast graph and the
    optimiser still updates float32 weights.

    Args:
        inferer: the inferer to wrap; default ``SimpleInferer``.
        dtype: the autocast dtype (bfloat16: no loss scaling needed).
        enabled: ``False`` makes this a plain pass-through.
    """

    def __init__(
        self, inferer: Inferer | None = None, dtype: torch.dtype = torch.bfloat16, enabled: bool = True
    ) -> None:
        super().__init__()
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.dtype = dtype
        self.enabled = bool(enabled)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The wrapped inferer's output, computed under autocast, as float32."""
        with torch.autocast(inputs.device.type, dtype=self.dtype, enabled=self.enabled):
            out = self.inferer(inputs, network, *args, **kwargs)
        return out.float()
