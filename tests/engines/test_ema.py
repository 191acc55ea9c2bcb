from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dussss_monai.engines.schedules import ema_decay
from dussss_monai.errors import ConfigError
from dussss_monai.utils.ema import ema_update


def pair():
    torch.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    tgt = copy.deepcopy(src)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    src.train()(torch.randn(4, 1, 5, 5))  # moves the running statistics and num_batches_tracked
    return tgt, src


def test_update_matches_formula_exactly():
    tgt, src = pair()
    before = {k: v.clone() for k, v in tgt.state_dict().items()}
    ema_update(tgt, src, 0.75)
    for name, p in tgt.named_parameters():
        expected = 0.75 * before[name] + 0.25 * dict(src.named_parameters())[name]
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(tgt[1].running_mean, 0.75 * before["1.running_mean"] + 0.25 * src[1].running_mean)
    assert tgt[1].num_batches_tracked == src[1].num_batches_tracked  # integer buffer copied
    assert all(p.grad is None for p in tgt.parameters())


def test_decay_limits_and_buffer_modes():
    tgt, src = pair()
    ema_update(tgt, src, 0.0, buffers="none")
    for a, b in zip(tgt.parameters(), src.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(tgt[1].running_mean, src[1].running_mean)
    ema_update(tgt, src, 0.5, buffers="copy")
    assert torch.equal(tgt[1].running_var, src[1].running_var)
    tgt, src = pair()
    before = copy.deepcopy(tgt.state_dict())
    ema_update(tgt, src, 1.0)
    for k, v in tgt.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, before[k])


def test_errors():
    tgt, src = pair()
    with pytest.raises(ConfigError, match="decay"):
        ema_update(tgt, src, 1.5)
    with pytest.raises(ConfigError, match="buffers"):
        ema_update(tgt, src, 0.5, buffers="mean")
    with pytest.raises(ConfigError, match="different parameters"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.raises(ConfigError, match="shape"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 3), 0.5)


def test_mean_teacher_schedule():
    assert ema_decay(0, 0.99) == 0.0  # first update copies the student
    assert ema_decay(1, 0.99) == 0.5
    assert ema_decay(3, 0.99) == 0.75
    assert ema_decay(98, 0.99) == pytest.approx(0.98989898)
    assert ema_decay(99, 0.99) == 0.99 and ema_decay(10_000, 0.99) == 0.99
    with pytest.raises(ConfigError):
        ema_decay(-1)
    with pytest.raises(ConfigError):
        ema_decay(0, 1.5)


def test_fused_update_is_bitwise_the_per_tensor_multiply_add():
    """The multi-tensor update gives exactly the numbers of ``t.mul_(decay).add_(s, alpha=1 - decay)`` per tensor
    (training runs, e.g. the demo's stage 1, must not drift by a rounding step when the update is batched)."""
    tgt, src = pair()
    expected = {
        n: p.detach().clone().mul_(0.995).add_(dict(src.named_parameters())[n], alpha=1.0 - 0.995)
        for n, p in tgt.named_parameters()
    }
    ema_update(tgt, src, 0.995)
    for n, p in tgt.named_parameters():
        assert torch.equal(p, expected[n]), n
