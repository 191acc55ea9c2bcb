"""FeatureDropout (UniMatch's feature-perturbed stream) and its place in the mean-teacher iteration."""

from __future__ import annotations

import pytest
import torch
from stage2_fixtures import RecordingLoss, first_step, make_trainer, tiny_unet
from torch import nn

from dussss_monai.engines import FeatureDropout
from dussss_monai.errors import ConfigError


def _decoder_inputs(net: nn.Module, images: torch.Tensor, forward) -> dict[str, torch.Tensor]:
    """What the outer and the inner upsampling blocks of ``tiny_unet`` receive during ``forward(net, images)``:
    the concatenation of the encoder feature of their level and the deeper levels' output."""
    seen: dict[str, torch.Tensor] = {}
    ups = {"outer": net.model[2], "inner": net.model[1].submodule[2]}
    handles = [
        up.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0].detach().clone()))
        for name, up in ups.items()
    ]
    try:
        forward(net, images)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _zero_channels(t: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: the channels of ``t`` that are zero everywhere."""
    return t.flatten(2).abs().amax(dim=2) == 0


def test_feature_dropout_zeroes_whole_encoder_channels_and_scales_the_rest():
    torch.manual_seed(0)
    net = tiny_unet().eval()  # channels (8, 16, 32): encoder features of 8 and 16 channels, a bottleneck of 32
    images = torch.rand(4, 1, 32, 32)
    plain = _decoder_inputs(net, images, lambda n, x: n(x))
    dropped = _decoder_inputs(net, images, FeatureDropout(0.5))
    outer_encoder, outer_plain = dropped["outer"][:, :8], plain["outer"][:, :8]
    zero = _zero_channels(outer_encoder)
    assert 0 < int(zero.sum()) < zero.numel()  # some of the 4 x 8 channel maps dropped, not all
    assert not _zero_channels(outer_plain).any()
    kept = ~zero
    torch.testing.assert_close(outer_encoder[kept], 2.0 * outer_plain[kept])  # scaled by 1 / (1 - p)
    # the inner level: its encoder feature (16 channels) and the bottleneck's output (the deepest level) both drop
    inner = _zero_channels(dropped["inner"])
    assert inner[:, :16].any() and inner[:, 16:].any()


def test_feature_dropout_rate_and_no_hook_left_behind():
    torch.manual_seed(1)
    net = tiny_unet().eval()
    images = torch.rand(16, 1, 32, 32)
    before = net(images)
    dropped = _decoder_inputs(net, images, FeatureDropout(0.25))
    assert 0.1 < float(_zero_channels(dropped["outer"][:, :8]).float().mean()) < 0.4
    assert all(not m._forward_hooks for m in net.modules())
    torch.testing.assert_close(net(images), before)  # the network is unchanged after the call


def test_feature_dropout_output_is_differentiable():
    net = tiny_unet()
    FeatureDropout()(net, torch.rand(2, 1, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_feature_dropout_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"p must be in \(0, 1\)"):
        FeatureDropout(1.0)
    with pytest.raises(ConfigError, match="feature_dropout to 0"):
        FeatureDropout()(nn.Conv2d(1, 1, 3), torch.rand(1, 1, 8, 8))


def test_trainer_teaches_the_feature_perturbed_view_with_the_same_pseudo_labels():
    loss = RecordingLoss()
    trainer = make_trainer("mean_teacher", consistency_loss_function=loss, feature_perturbation=FeatureDropout(0.5))
    student_inputs: list[torch.Tensor] = []
    trainer.network.register_forward_pre_hook(lambda m, a: student_inputs.append(a[0].detach().clone()))
    first_step(trainer)
    out = trainer.state.output[0]
    # labeled batch, strong view, feature-perturbed view of the teacher's (clean) images
    assert len(student_inputs) == 3
    torch.testing.assert_close(student_inputs[2], trainer.state.unlabeled_batch["image"])
    assert len(loss.calls) == 2
    torch.testing.assert_close(loss.targets[0], loss.targets[1])  # both taught by the teacher's pseudo label
    assert float(out["loss_fp"]) > 0
    torch.testing.assert_close(out["loss"], out["loss_sup"] + out["weight"] * out["loss_semi"])

    reference = make_trainer("mean_teacher", consistency_loss_function=RecordingLoss())
    first_step(reference)
    strong_term = reference.state.output[0]["loss_semi"]  # same seed: the same strong-view term
    assert "loss_fp" not in reference.state.output[0]
    torch.testing.assert_close(out["loss_semi"], (strong_term + out["loss_fp"]) / 2)
