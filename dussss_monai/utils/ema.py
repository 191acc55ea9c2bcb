"""Exponential moving average (EMA) of module weights.

One generic update is shared by the stage-1 momentum encoders (:mod:`dussss_monai.networks.vlm`) and the
stage-2 mean teacher (:func:`dussss_monai.engines.schedules.ema_decay` gives its warm-up), so that both follow exactly

    theta_target <- decay * theta_target + (1 - decay) * theta_source

It lives in ``utils`` because ``networks`` must not import ``engines`` (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from dussss_monai.errors import ConfigError

__all__ = ["ema_update", "EMA_BUFFER_MODES"]

EMA_BUFFER_MODES = ("ema", "copy", "none")


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float, buffers: str = "ema") -> None:
    """Move the weights of ``target`` toward those of ``source`` in place.

    Every parameter is updated as ``theta_t <- decay * theta_t + (1 - decay) * theta_s`` (the momentum
    update of the DuSSS momentum encoders, m = 0.995, and of the mean teacher, ``alpha``). ``decay = 0``
    copies ``source``; ``decay = 1`` leaves ``target`` unchanged.

    Args:
        target: the EMA copy (momentum encoder, teacher); updated in place. Its parameters are not touched
            by autograd (the update runs under ``torch.no_grad``).
        source: the online module (encoder, student); read only. Must have the same parameter and buffer
            names and shapes as ``target`` (e.g. ``target = copy.deepcopy(source)``).
        decay: EMA factor in ``[0, 1]``.
        buffers: what to do with buffers (e.g. BatchNorm running statistics): ``"ema"`` averages floating
            point buffers like parameters and copies integer ones (``num_batches_tracked``); ``"copy"``
            copies every buffer from ``source``; ``"none"`` leaves them alone.

    Raises:
        ConfigError: when ``decay`` is outside ``[0, 1]``, ``buffers`` is unknown, or the two modules do
            not have the same parameter/buffer names and shapes.
    """
    decay = float(decay)
    if not 0.0 <= decay <= 1.0:
        raise ConfigError(f"EMA decay must be in [0, 1], got {decay}")
    if buffers not in EMA_BUFFER_MODES:
        raise ConfigError(f"buffers must be one of {EMA_BUFFER_MODES}, got {buffers!r}")
    t_params = dict(target.named_parameters())
    s_params = dict(source.named_parameters())
    _check_same(t_params, s_params, "parameters")
    _ema_([(p_t, s_params[name].detach()) for name, p_t in t_params.items()], decay)
    if buffers == "none":
        return
    t_bufs = dict(target.named_buffers())
    s_bufs = dict(source.named_buffers())
    _check_same(t_bufs, s_bufs, "buffers")
    averaged = []
    for name, b_t in t_bufs.items():
        b_s = s_bufs[name].detach()
        if buffers == "ema" and torch.is_floating_point(b_t):
            averaged.append((b_t, b_s))
        else:
            b_t.copy_(b_s)
    _ema_(averaged, decay)


def _ema_(pairs: list[tuple[torch.Tensor, torch.Tensor]], decay: float) -> None:
    """``t <- decay * t + (1 - decay) * s`` for every ``(t, s)`` pair, in place.

    Multi-tensor kernels (``torch._foreach_mul_`` / ``torch._foreach_add_``, as ``torch.optim`` uses; they group
    the tensors by device and dtype themselves) instead of two kernels per tensor: a U-Net has about a hundred
    parameter tensors, and on a GPU the per-tensor launches, not the arithmetic, were the cost of the update. The
    arithmetic is the same multiply-then-add as one tensor at a time, so results are bit for bit those of the
    per-tensor loop.
    """
    if not pairs:
        return
    targets = [t for t, _ in pairs]
    torch._foreach_mul_(targets, decay)
    torch._foreach_add_(targets, [s for _, s in pairs], alpha=1.0 - decay)


def _check_same(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], what: str) -> None:
    if target.keys() != source.keys():
        missing = sorted(set(source) ^ set(target))[:5]
        raise ConfigError(f"EMA target and source have different {what} (first differences: {missing})")
    for name, t in target.items():
        if t.shape != source[name].shape:
            raise ConfigError(
                f"EMA target and source {what[:-1]} {name!r} differ in shape: {tuple(t.shape)} vs {tuple(source[name].shape)}"
            )
