"""The unlabeled data stream of the semi-supervised trainers.

Ignite iterates the labeled loader (the engine's ``data``); the unlabeled loader is a second stream that the
trainer draws one batch from per iteration. It restarts when exhausted, so every unlabeled image is seen once
within ``len(loader)`` iterations whatever the labeled loader's length, and it calls ``set_epoch`` on a
``DistributedSampler`` at each restart so that the ranks reshuffle alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data.distributed import DistributedSampler

from dussss_monai.errors import DuSSSError

__all__ = ["UnlabeledStream", "loader_length"]


def loader_length(loader: Any) -> int | None:
    """``len(loader)``, or ``None`` for a loader without a length (an iterable dataset)."""
    try:
        return len(loader)
    except TypeError:
        return None


class UnlabeledStream:
    """Endless batches of an unlabeled loader: a new pass starts when the previous one ends.

    Args:
        loader: the unlabeled data loader (any iterable of batches).
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self._iterator: Iterator | None = None
        self._pass = 0

    def _start_pass(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self._pass)
        self._iterator = iter(self.loader)

    def next(self, iteration: int) -> Any:
        """The next unlabeled batch.

        Args:
            iteration: the engine's 1-based iteration count. At the first call it sets the pass number, so that a
                resumed run continues the numbering (``DistributedSampler`` shuffles by pass number).

        Returns:
            one batch of the loader.

        Raises:
            DuSSSError: when the loader yields nothing.
        """
        if self._iterator is None:
            n = loader_length(self.loader)
            self._pass = max(iteration - 1, 0) // n if n else 0
            self._start_pass()
        try:
            return next(self._iterator)  # type: ignore[arg-type]
        except StopIteration:
            self._pass += 1
            self._start_pass()
            try:
                return next(self._iterator)  # type: ignore[arg-type]
            except StopIteration:
                raise DuSSSError("the unlabeled data loader is empty: check the unlabeled part of the split") from None
