"""Feature perturbation of the student: UniMatch's third stream (Yang et al., CVPR 2023), ``docs/method.md``,
"Student and teacher".

The student predicts the teacher's (weak) view of the unlabeled batch a second time with channel dropout on the
encoder features its decoder reads, and that prediction is taught by the same pseudo labels as the strong view.
Image-level perturbations (colour, stain, CutMix) change what the encoder sees; this one changes what the decoder
gets, so the decoder must not lean on any single channel of the features.

:class:`FeatureDropout` is a callable ``(network, images) -> logits`` for the ``feature_perturbation`` argument of
:class:`~dussss_monai.engines.MeanTeacherTrainer`. It finds the encoder features of a MONAI ``UNet`` from its
``SkipConnection`` modules: each one concatenates its input (the encoder feature of its level) with what the deeper
levels decode; the dropout zeroes whole channels of that input in the concatenation, and at the deepest level of
the bottleneck's output too. The network's weights and modules are unchanged; the hooks live for one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import SkipConnection
from torch import nn

from dussss_monai.engines.distributed import unwrap_network
from dussss_monai.errors import ConfigError

__all__ = ["FeatureDropout"]


def _is_innermost(skip: SkipConnection) -> bool:
    """Whether no other ``SkipConnection`` lies inside ``skip`` (its submodule is the bottleneck)."""
    return not any(isinstance(m, SkipConnection) for m in skip.submodule.modules())


class FeatureDropout:
    """Channel dropout (``Dropout2d``) of the encoder features of a MONAI ``UNet`` for one forward pass.

    Args:
        p: probability of zeroing a channel of a feature map, per image (UniMatch: 0.5); the kept channels are
            scaled by ``1 / (1 - p)`` as in ``torch.nn.Dropout2d``.

    Raises:
        ConfigError: on ``p`` outside (0, 1), or (when called) a network without a ``SkipConnection``.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 < float(p) < 1.0:
            raise ConfigError(f"FeatureDropout: p must be in (0, 1), got {p}")
        self.p = float(p)

    def _hook(self, innermost: bool) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
        def drop(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            skipped = inputs[0].shape[1]
            encoder, decoded = output[:, :skipped], output[:, skipped:]
            if innermost:
                decoded = F.dropout2d(decoded, self.p, training=True)
            return torch.cat([F.dropout2d(encoder, self.p, training=True), decoded], dim=1)

        return drop

    def __call__(self, network: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The logits of ``network(images)`` with the encoder features dropped out.

        Args:
            network: a MONAI ``UNet`` (or a module holding one, e.g. a DistributedDataParallel wrapper).
            images: ``(B, C, H, W)`` input.

        Returns:
            ``(B, out_channels, H, W)`` logits, differentiable with respect to the network's weights.
        """
        skips = [m for m in unwrap_network(network).modules() if isinstance(m, SkipConnection)]
        if not skips:
            raise ConfigError(
                f"FeatureDropout needs a network with MONAI SkipConnection modules (monai.networks.nets.UNet), got "
                f"{type(unwrap_network(network)).__name__}; set feature_dropout to 0 for another network"
            )
        if any(s.mode != "cat" or s.dim != 1 for s in skips):
            raise ConfigError(
                "FeatureDropout needs SkipConnection modules that concatenate on the channels (mode 'cat')"
            )
        handles = [s.register_forward_hook(self._hook(_is_innermost(s))) for s in skips]
        try:
            return network(images)
        finally:
            for handle in handles:
                handle.remove()
