"""ProbabilityMSELoss: the mean teacher's squared-error consistency on probabilities."""

from __future__ import annotations

import pytest
import torch

from dussss_monai.losses import ProbabilityMSELoss


def test_value_minimum_at_the_target_and_gradient():
    loss = ProbabilityMSELoss()
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.5, 0.2], [1.0, 0.0]]]])
    expected = ((torch.sigmoid(logits) - target) ** 2).mean()
    value = loss(logits, target)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert logits.grad[0, 0, 0, 0] == 0  # sigmoid(0) = 0.5 is the target: no gradient there
    # a soft target is reached exactly (the class-balanced loss is not minimised by its own target)
    assert float(loss(torch.logit(target.clamp(1e-4, 1 - 1e-4)), target)) < 1e-6


def test_mask_averages_over_the_kept_pixels_only():
    loss = ProbabilityMSELoss()
    logits = torch.zeros(1, 1, 1, 4, requires_grad=True)
    target = torch.tensor([0.0, 1.0, 1.0, 0.5]).view(1, 1, 1, 4)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 4)
    value = loss(logits, target, mask=mask)
    torch.testing.assert_close(value, torch.tensor((0.25 + 0.25) / 2))
    value.backward()
    assert logits.grad.flatten()[[1, 3]].abs().sum() == 0
    assert loss(logits, target, mask=torch.zeros_like(mask)).item() == 0.0


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(1, 1, 2, 2\).*\(1, 1, 2, 3\)"):
        ProbabilityMSELoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="mask"):
        ProbabilityMSELoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), mask=torch.ones(1, 1, 1, 2))
