"""SegmentationLoss l: 0.5 soft Dice + 0.5 class-balanced BCE on logits, soft targets allowed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dussss_monai.losses.segmentation import SegmentationLoss, class_balanced_bce_with_logits


def test_class_balanced_bce_equals_mean_of_class_means_for_hard_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.8).float()
    elem = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = 0.5 * elem[target == 1].mean() + 0.5 * elem[target == 0].mean()
    torch.testing.assert_close(class_balanced_bce_with_logits(logits, target), expected, rtol=1e-5, atol=1e-5)


def test_small_foreground_weighs_as_much_as_background():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 0, 0] = 1.0
    miss_fg = torch.full_like(target, -5.0)  # predicts background everywhere
    plain = F.binary_cross_entropy_with_logits(miss_fg, target)
    balanced = class_balanced_bce_with_logits(miss_fg, target)
    assert balanced > 20 * plain  # one missed pixel of 256 is a large error once balanced


def test_combined_loss_uses_monai_dice_and_weights():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 8)  # soft target
    loss = SegmentationLoss()(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)
    expected = 0.5 * dice + 0.5 * class_balanced_bce_with_logits(logits, target)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    dice_only = SegmentationLoss(dice_weight=1.0, bce_weight=0.0)(logits, target)
    torch.testing.assert_close(dice_only, dice, rtol=1e-5, atol=1e-5)


def test_soft_target_minimum_is_at_the_target_probability_for_bce():
    target = torch.full((1, 1, 4, 4), 0.3)
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    SegmentationLoss(dice_weight=0.0, bce_weight=1.0, class_balanced=False)(logits, target).backward()
    assert (logits.grad > 0).all()  # sigmoid(0) = 0.5 > 0.3: gradient pushes the logit down


def test_empty_target_is_finite_and_perfect_prediction_is_near_zero():
    loss = SegmentationLoss()
    target = torch.zeros(2, 1, 8, 8)
    assert torch.isfinite(loss(torch.randn(2, 1, 8, 8), target))
    perfect = torch.where(torch.rand(2, 1, 8, 8) > 0.5, 20.0, -20.0)
    assert loss(perfect, (perfect > 0).float()) < 1e-3


def test_shape_mismatch_and_bad_weights_raise():
    with pytest.raises(ValueError, match="shape"):
        SegmentationLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError):
        SegmentationLoss(dice_weight=0.0, bce_weight=0.0)


@pytest.mark.parametrize("class_balanced", [True, False])
def test_masked_pixels_are_ignored(class_balanced):
    """With ``mask``, the loss equals the loss of the kept pixels alone, whatever the masked pixels hold."""
    torch.manual_seed(0)
    loss = SegmentationLoss(class_balanced=class_balanced, dice_batch=True)
    logits = torch.randn(2, 1, 6, 8, requires_grad=True)
    target = (torch.rand(2, 1, 6, 8) > 0.6).float()
    mask = torch.zeros_like(target)
    mask[..., :, :4] = 1  # keep the left half
    kept = loss(logits[..., :4], target[..., :4])
    masked = loss(logits, target, mask=mask)
    torch.testing.assert_close(masked, kept, rtol=1e-5, atol=1e-6)
    # changing what the masked pixels hold changes nothing, and they get no gradient
    scrambled = target.clone()
    scrambled[..., 4:] = 1 - scrambled[..., 4:]
    torch.testing.assert_close(loss(logits, scrambled, mask=mask), masked)
    masked.backward()
    assert torch.all(logits.grad[..., 4:] == 0) and torch.any(logits.grad[..., :4] != 0)


def test_all_masked_loss_is_zero_and_mask_shape_checked():
    loss = SegmentationLoss()
    logits = torch.randn(1, 1, 4, 4)
    assert float(loss(logits, torch.ones_like(logits), mask=torch.zeros_like(logits))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="mask"):
        loss(logits, torch.ones_like(logits), mask=torch.ones(1, 1, 2, 2))
