"""The few ``torch.distributed`` operations the stage-2 trainers need beyond what DDP does for the student.

The student is wrapped in ``DistributedDataParallel``, which averages its gradients and broadcasts its buffers.
Two other modules train or change in every rank and must stay identical across ranks: the EMA teacher's
floating-point buffers (each rank updates its BatchNorm statistics from its own batches) and the grounding
decoder f_g, which is called through the refiner rather than through DDP. In one process every function here
is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["world_size", "unwrap_network", "broadcast_from_rank0", "average_gradients"]


def world_size() -> int:
    """The number of ranks of the initialised process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper; other modules unchanged."""
    if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return network.module
    return network


@torch.no_grad()
def broadcast_from_rank0(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with rank 0's values (one coalesced broadcast).

    Args:
        tensors: tensors of any floating-point dtype and shape, the same list on every rank.
    """
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    dist.broadcast(flat, src=0)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
        offset += n


@torch.no_grad()
def average_gradients(module: nn.Module) -> None:
    """All-reduce (mean) the gradients of ``module``'s trainable parameters across ranks.

    A parameter without a gradient on this rank contributes zeros, so every rank joins the same all-reduce.

    Args:
        module: a module that is not wrapped in ``DistributedDataParallel`` (e.g. f_g).
    """
    ranks = world_size()
    params = [p for p in module.parameters() if p.requires_grad]
    if ranks == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(ranks)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
