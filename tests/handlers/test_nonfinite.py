"""NonFiniteLossGuard: a NaN/Inf loss stops a MONAI trainer before its optimiser step."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch import nn

from dussss_monai.errors import DuSSSError
from dussss_monai.handlers.nonfinite import NonFiniteLossGuard
from dussss_monai.utils.finite import check_finite_losses


def test_check_finite_losses_names_iteration_and_terms():
    check_finite_losses({"a": torch.tensor(1.0), "b": 2.0}, iteration=7)
    with pytest.raises(DuSSSError, match=r"iteration 7 \(epoch 2\).*b=inf"):
        check_finite_losses({"a": torch.tensor(1.0), "b": float("inf")}, iteration=7, epoch=2)
    with pytest.raises(DuSSSError, match="loss_text=nan"):
        check_finite_losses({"loss_text": torch.tensor(float("nan"))}, iteration=1)


def test_guard_stops_supervised_trainer_before_the_step():
    torch.manual_seed(0)
    net = nn.Conv2d(1, 1, 3, padding=1)
    data = [{"image": torch.rand(1, 1, 8, 8), "label": torch.rand(1, 1, 8, 8)} for _ in range(4)]
    state: dict = {}

    def loss_fn(pred, target):
        loss = nn.functional.mse_loss(pred, target)
        return loss * float("nan") if state["trainer"].state.iteration == 3 else loss

    trainer = SupervisedTrainer(
        "cpu", 1, data, net, torch.optim.SGD(net.parameters(), lr=0.1), loss_fn, decollate=False
    )
    state["trainer"] = trainer
    NonFiniteLossGuard().attach(trainer)
    snap: dict = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: snap.update({k: v.clone() for k, v in net.state_dict().items()})
    )
    with pytest.raises(DuSSSError, match=r"iteration 3\b"):
        trainer.run()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, snap[k], rtol=0, atol=0)  # still the weights after iteration 2
