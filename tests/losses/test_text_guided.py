"""TextGuidedLoss L_tg: symmetric InfoNCE of mask-pooled image embeddings vs text embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dussss_monai.losses.text_guided import TextGuidedLoss, mask_pool


def test_mask_pool_weights_pixels_by_sigmoid_of_logits():
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, 0, 0, 0] = 1.0  # pixel (0,0) points along e0
    feats[0, 1, 1, 1] = 1.0  # pixel (1,1) points along e1
    logits = torch.full((1, 1, 2, 2), -30.0)
    logits[0, 0, 0, 0] = 30.0  # mask selects pixel (0,0)
    torch.testing.assert_close(mask_pool(feats, logits), torch.tensor([[1.0, 0.0]]), atol=1e-6, rtol=0)


def _setup(b=4, d=8):
    torch.manual_seed(0)
    text = F.normalize(torch.randn(b, d), dim=1)
    feats = F.normalize(torch.randn(b, d, 6, 6), dim=1)
    return feats, text


def test_matches_manual_symmetric_infonce():
    feats, text = _setup()
    logits_m = torch.randn(4, 1, 3, 3)  # coarser mask: resized to the feature grid
    loss = TextGuidedLoss(temperature=0.1)(feats, logits_m, text, texts=["a", "b", "c", "d"])
    img = mask_pool(feats, logits_m)
    sim = img @ text.t() / 0.1
    expected = 0.5 * (F.cross_entropy(sim, torch.arange(4)) + F.cross_entropy(sim.t(), torch.arange(4)))
    torch.testing.assert_close(loss, expected)


def test_loss_is_lower_when_the_mask_selects_text_matching_pixels():
    feats, text = _setup(b=3)
    feats = feats.clone()
    feats[:, :, :3, :] = text[:, :, None, None]  # top half of each image matches its own text
    good = torch.full((3, 1, 6, 6), -20.0)
    good[:, :, :3, :] = 20.0
    bad = -good
    loss = TextGuidedLoss()
    assert loss(feats, good, text) < loss(feats, bad, text)


def test_duplicate_texts_are_not_negatives():
    feats, text = _setup(b=3)
    text = text.clone()
    text[1] = text[0]
    texts = ["same", "same", "other"]
    pos = TextGuidedLoss.positive_mask(text, texts)
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    assert TextGuidedLoss.positive_mask(text).tolist() == pos.tolist()  # found from equal embeddings too
    # with soft targets, a perfect image embedding for sample 0 loses nothing by also matching sample 1's text
    logits_m = torch.zeros(3, 1, 6, 6)
    with_dups = TextGuidedLoss()(feats, logits_m, text, texts)
    img = mask_pool(feats, logits_m)
    sim = img @ F.normalize(text, dim=1).t() / 0.07
    target = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    expected = 0.5 * (-(target * sim.log_softmax(1)).sum(1).mean() - (target * sim.t().log_softmax(1)).sum(1).mean())
    torch.testing.assert_close(with_dups, expected)


def test_batch_of_one_is_finite():
    feats, text = _setup(b=1)
    logits_m = torch.randn(1, 1, 6, 6, requires_grad=True)
    loss = TextGuidedLoss()(feats, logits_m, text, ["x"])
    assert torch.isfinite(loss) and float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits_m.grad).all()


def test_errors():
    feats, text = _setup(b=2)
    with pytest.raises(ValueError):
        TextGuidedLoss(temperature=0.0)
    with pytest.raises(ValueError, match="texts"):
        TextGuidedLoss()(feats, torch.zeros(2, 1, 6, 6), text, ["only one"])
