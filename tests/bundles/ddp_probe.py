"""Test helper for the multi-GPU bundle test: records, per rank, what each engine saw.

Imported by an extra config file merged over ``train.json`` + ``multi_gpu_train.json``; writes
``<out_dir>/probe_rank<r>.json`` at the end of training with the names of the labeled, unlabeled and validation
images of every epoch, the validation metric of every epoch, and digests of the student, teacher and grounding
decoder (to compare ranks).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events


def _digest(module: torch.nn.Module | None) -> list[float] | None:
    if module is None:
        return None
    state = module.state_dict()
    return [float(state[k].double().sum()) for k in sorted(state)]


def attach(trainer, evaluator, out_dir: str) -> None:
    rank = dist.get_rank()
    rec: dict = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "labeled": [],
        "unlabeled": [],
        "validation": [],
        "val_metric": [],
        "iterations": 0,
    }

    @trainer.on(Events.EPOCH_STARTED)
    def _epoch(engine):
        rec["labeled"].append([])
        rec["unlabeled"].append([])

    @trainer.on(Events.ITERATION_STARTED)
    def _labeled(engine):
        rec["labeled"][-1] += [str(n) for n in engine.state.batch["name"]]

    @trainer.on(Events.ITERATION_COMPLETED)
    def _unlabeled(engine):
        rec["iterations"] += 1
        batch = engine.state.unlabeled_batch
        if batch is not None:
            rec["unlabeled"][-1] += [str(n) for n in batch["name"]]

    @evaluator.on(Events.EPOCH_STARTED)
    def _val_epoch(engine):
        rec["validation"].append([])

    @evaluator.on(Events.ITERATION_STARTED)
    def _val(engine):
        rec["validation"][-1] += [str(n) for n in engine.state.batch["name"]]

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _val_metric(engine):
        rec["val_metric"].append(float(engine.state.metrics["val_mean_dice"]))

    @trainer.on(Events.COMPLETED)
    def _write(engine):
        net = engine.network
        rec["network_type"] = type(net).__name__
        rec["student"] = _digest(getattr(net, "module", net))
        rec["teacher"] = _digest(engine.teacher)
        rec["teacher_type"] = type(engine.teacher).__name__ if engine.teacher is not None else None
        rec["grounding_decoder"] = _digest(engine.grounding_decoder)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"probe_rank{rank}.json").write_text(json.dumps(rec))
