from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dussss_monai.errors import ConfigError
from dussss_monai.losses.dual_contrastive import DualContrastiveLoss, positive_targets
from dussss_monai.networks.vlm import ModalityFeatures


def feats(n: int, d: int = 8, g: int = 4, seed: int = 0, grad: bool = False) -> ModalityFeatures:
    gen = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    mu, sigma = torch.randn(n, g, generator=gen), torch.rand(n, g, generator=gen) + 0.1
    if grad:
        e, mu, sigma = (t.requires_grad_(True) for t in (e, mu, sigma))
    return ModalityFeatures(e, mu, sigma)


def six(n: int, grad: bool = False):
    return [feats(n, seed=s, grad=grad and s in (0, 3)) for s in range(6)]


def test_components_and_total():
    img, img_m, img_aug_m, txt, txt_m, txt_aug_m = six(4)
    loss, parts = DualContrastiveLoss()(img, img_m, img_aug_m, txt, txt_m, txt_aug_m, 0.07)
    assert torch.isfinite(loss) and loss > 0
    torch.testing.assert_close(parts["loss_cmc"], 0.5 * (parts["loss_i2t"] + parts["loss_t2i"]))
    torch.testing.assert_close(parts["loss_imc"], 0.5 * (parts["loss_i2i"] + parts["loss_t2t"]))
    torch.testing.assert_close(loss.detach(), parts["loss_cmc"] + parts["loss_imc"])
    only_cmc, p = DualContrastiveLoss(intra_modal=False)(img, img_m, None, txt, txt_m, None, 0.07)
    torch.testing.assert_close(only_cmc, parts["loss_cmc"])
    assert "loss_imc" not in p


def test_plain_infonce_value_without_sss():
    img, img_m, img_aug_m, txt, txt_m, txt_aug_m = six(4)
    tau = 0.1
    _, parts = DualContrastiveLoss(use_sss=False)(img, img_m, img_aug_m, txt, txt_m, txt_aug_m, tau)
    expected = F.cross_entropy(img.embed @ txt_m.embed.t() / tau, torch.arange(4))
    torch.testing.assert_close(parts["loss_i2t"], expected)
    expected = F.cross_entropy(txt.embed @ txt_aug_m.embed.t() / tau, torch.arange(4))
    torch.testing.assert_close(parts["loss_t2t"], expected)


def test_symmetric_when_modalities_swap_roles():
    img, img_m, img_aug_m, txt, txt_m, txt_aug_m = six(5)
    loss_fn = DualContrastiveLoss()
    a, pa = loss_fn(img, img_m, img_aug_m, txt, txt_m, txt_aug_m, 0.07)
    b, pb = loss_fn(txt, txt_m, txt_aug_m, img, img_m, img_aug_m, 0.07)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(pa["loss_i2t"], pb["loss_t2i"])
    torch.testing.assert_close(pa["loss_i2i"], pb["loss_t2t"])


def test_batch_of_one_is_finite():
    loss, parts = DualContrastiveLoss()(*six(1)[:6], temperature=0.07, texts=["one infected area."])
    assert torch.isfinite(loss) and loss.item() == 0.0  # one positive, no negative: log softmax of one logit
    assert "d_sss_neg" not in parts and all(torch.isfinite(v) for v in parts.values())


def test_identical_texts_are_shared_positives():
    texts = ["no infection.", "one infected area.", "no infection.", "two infected areas."]
    t = positive_targets(4, texts)
    torch.testing.assert_close(t[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(t[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(t.sum(1), torch.ones(4))

    img, img_m, img_aug_m, txt, txt_m, txt_aug_m = six(4)
    tau = 0.1
    loss, parts = DualContrastiveLoss(use_sss=False)(img, img_m, img_aug_m, txt, txt_m, txt_aug_m, tau, texts=texts)
    assert torch.isfinite(loss)
    # text -> image: images 0 and 2 are different images with the same sentence: both are positives of text 0
    logp = F.log_softmax(txt.embed @ img_m.embed.t() / tau, dim=1)
    torch.testing.assert_close(parts["loss_t2i"], -(t * logp).sum(1).mean())
    # with hard (diagonal) targets image 2 would be a negative of text 0: another value
    _, hard = DualContrastiveLoss(use_sss=False)(img, img_m, img_aug_m, txt, txt_m, txt_aug_m, tau)
    torch.testing.assert_close(hard["loss_t2i"], F.cross_entropy(txt.embed @ img_m.embed.t() / tau, torch.arange(4)))
    assert not torch.allclose(hard["loss_t2i"], parts["loss_t2i"])
    # image -> image stays instance discrimination whatever the texts
    torch.testing.assert_close(hard["loss_i2i"], parts["loss_i2i"])

    all_same = ["no infection."] * 3
    loss, _ = DualContrastiveLoss()(*six(3), temperature=0.07, texts=all_same)
    assert torch.isfinite(loss)


def test_gradient_only_reaches_online_features():
    img, img_m, img_aug_m, txt, txt_m, txt_aug_m = six(4, grad=True)
    loss, _ = DualContrastiveLoss()(img, img_m, img_aug_m, txt, txt_m, txt_aug_m, torch.tensor(0.07))
    loss.backward()
    for f in (img, txt):
        assert f.embed.grad is not None and f.mu.grad is not None and f.sigma.grad is not None
        assert f.sigma.grad.abs().sum() > 0  # the Gaussian heads are trained through D_SSS


def test_aligned_features_give_lower_loss():
    img = feats(6, seed=1)
    aligned, _ = DualContrastiveLoss()(img, img, img, img, img, img, 0.07)
    loss, _ = DualContrastiveLoss()(*six(6), temperature=0.07)
    assert aligned < loss


def test_configuration_errors():
    with pytest.raises(ConfigError, match="cross_modal or intra_modal"):
        DualContrastiveLoss(cross_modal=False, intra_modal=False)
    img, img_m, _, txt, txt_m, _ = six(3)
    with pytest.raises(ConfigError, match="augmented"):
        DualContrastiveLoss()(img, img_m, None, txt, txt_m, None, 0.07)
    with pytest.raises(ConfigError, match="temperature"):
        DualContrastiveLoss()(*six(3), temperature=0.0)
    with pytest.raises(ConfigError, match="texts"):
        DualContrastiveLoss()(*six(3), temperature=0.07, texts=["a", "b"])
