"""A segmentation loss that turns NaN after a given number of calls (imported by bundle runs in tests)."""

from __future__ import annotations

import torch

from dussss_monai.losses import SegmentationLoss


class NaNAfter(SegmentationLoss):
    """:class:`SegmentationLoss` whose value becomes NaN from call ``n + 1`` on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.calls = 0

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        self.calls += 1
        loss = super().forward(input, target)
        return loss * float("nan") if self.calls > self.n else loss
