"""FlipTTAInferer (mean probability over the four flips, returned as logits) and AutocastInferer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dussss_monai.bundle import make_inferer, scoring_postprocessing
from dussss_monai.inferers import AutocastInferer, FlipTTAInferer


def test_flip_tta_averages_the_probabilities_of_the_four_flips():
    torch.manual_seed(0)
    net = nn.Conv2d(1, 1, 3, padding=1)  # not flip-invariant: each view predicts differently
    x = torch.rand(2, 1, 9, 7)
    with torch.no_grad():
        got = FlipTTAInferer()(x, net)
        views = [net(x), net(x.flip(-1)).flip(-1), net(x.flip(-2)).flip(-2), net(x.flip((-2, -1))).flip((-2, -1))]
        expected = torch.stack([torch.sigmoid(v) for v in views]).mean(0)
    torch.testing.assert_close(torch.sigmoid(got), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, views[0], atol=1e-3)
    with pytest.raises(ValueError, match="flips"):
        FlipTTAInferer(flips=())


def test_autocast_inferer_returns_float32_close_to_the_full_precision_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        low = AutocastInferer()(x, net)
        full = net(x)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(AutocastInferer(enabled=False)(x, net), full)


def test_make_inferer_stacks_sliding_window_tta_and_autocast():
    inferer = make_inferer(16, sw_batch_size=2, flip_tta=True, bfloat16=True)
    assert isinstance(inferer, AutocastInferer) and isinstance(inferer.inferer, FlipTTAInferer)
    net = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        out = inferer(torch.rand(1, 1, 40, 28), net)
    assert out.shape == (1, 1, 40, 28) and out.dtype == torch.float32


def test_scoring_resizes_probabilities_then_thresholds_and_the_mask_nearest():
    torch.manual_seed(0)
    logits = torch.randn(1, 100, 60) * 3
    label = (torch.rand(1, 100, 60) > 0.5).float()
    out = scoring_postprocessing(32)({"pred": logits.clone(), "label": label.clone(), "image": torch.rand(3, 100, 60)})
    prob = torch.nn.functional.interpolate(
        torch.sigmoid(logits)[None], size=(32, 32), mode="bilinear", align_corners=False
    )
    assert torch.equal(torch.as_tensor(out["pred"]), (prob[0] >= 0.5).float())
    nearest = torch.nn.functional.interpolate(label[None], size=(32, 32), mode="nearest-exact")[0]
    assert torch.equal(torch.as_tensor(out["label"]), nearest) and tuple(out["image"].shape) == (3, 32, 32)
    native = scoring_postprocessing(None)({"pred": logits.clone(), "label": label.clone()})
    assert torch.equal(torch.as_tensor(native["pred"]), (logits >= 0).float())
