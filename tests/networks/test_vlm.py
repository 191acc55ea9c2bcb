from __future__ import annotations

import math

import pytest
import torch

from dussss_monai.errors import ConfigError
from dussss_monai.losses.dual_contrastive import DualContrastiveLoss
from dussss_monai.networks.image_encoder import ViTImageEncoder
from dussss_monai.networks.text_encoder import HFTextEncoder
from dussss_monai.networks.vlm import DuSSSVisionLanguageModel, ModalityFeatures

TEXTS = ["left lung infection, one infected area.", "bilateral infection, two infected areas.", "no infection."]


def tiny_image_encoder() -> ViTImageEncoder:
    return ViTImageEncoder(
        in_channels=1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4
    )


def make_vlm(tiny_bert_dir, freeze_text: bool = True, **kw) -> DuSSSVisionLanguageModel:
    torch.manual_seed(0)
    text = HFTextEncoder(tiny_bert_dir, max_length=16, freeze=freeze_text)
    kw.setdefault("momentum", 0.9)
    return DuSSSVisionLanguageModel(tiny_image_encoder(), text, embed_dim=16, **kw)


def test_features_contract(tiny_bert_dir):
    vlm = make_vlm(tiny_bert_dir, gaussian_dim=8)
    img = vlm.encode_image(torch.rand(3, 1, 32, 32))
    txt = vlm.encode_text(TEXTS)
    assert isinstance(img, ModalityFeatures) and isinstance(txt, ModalityFeatures)
    assert img.embed.shape == (3, 16) and img.mu.shape == (3, 8) and img.sigma.shape == (3, 8)
    torch.testing.assert_close(img.embed.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(txt.embed.norm(dim=1), torch.ones(3))
    assert (img.sigma > 0).all() and (txt.sigma > 0).all()
    assert img.patches.shape == (3, 16, 32) and img.grid == (4, 4) and img.tokens is None
    assert txt.tokens.shape == (3, 16, 32) and txt.attention_mask.shape == (3, 16) and txt.patches is None


def test_momentum_copies_frozen_text_encoder_not_copied(tiny_bert_dir):
    vlm = make_vlm(tiny_bert_dir)
    assert set(vlm.momentum) == {"image_encoder", "image_proj", "image_gauss", "text_proj", "text_gauss"}
    assert not any(p.requires_grad for p in vlm.momentum.parameters())
    trainable = {id(p) for p in vlm.trainable_parameters()}
    assert not trainable & {id(p) for p in vlm.momentum.parameters()}
    assert not trainable & {id(p) for p in vlm.text_encoder.parameters()}
    assert id(vlm.log_temperature) in trainable
    vlm.train()
    assert vlm.image_encoder.training and not any(m.training for m in vlm.momentum.modules())


def test_gradients_reach_both_encoders_not_momentum(tiny_bert_dir):
    vlm = make_vlm(tiny_bert_dir, freeze_text=False)
    assert "text_encoder" in vlm.momentum  # a trained text encoder gets its own momentum copy
    vlm.train()
    x = torch.rand(3, 1, 32, 32)
    img, txt = vlm(x, TEXTS)
    img_m, txt_m = vlm.encode_image(x, momentum=True), vlm.encode_text(TEXTS, momentum=True)
    img_aug_m = vlm.encode_image(x.flip(-1), momentum=True)
    txt_aug_m = vlm.encode_text(TEXTS[::-1][::-1], momentum=True)
    assert not img_m.embed.requires_grad and not txt_m.embed.requires_grad
    loss, _ = DualContrastiveLoss()(img, img_m, img_aug_m, txt, txt_m, txt_aug_m, vlm.temperature, texts=TEXTS)
    loss.backward()

    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    for name in ("image_encoder", "text_encoder", "image_proj", "text_proj", "image_gauss", "text_gauss"):
        assert has_grad(getattr(vlm, name)), name
    assert vlm.log_temperature.grad is not None
    assert all(p.grad is None for p in vlm.momentum.parameters())


def test_momentum_update_is_exact_ema(tiny_bert_dir):
    vlm = make_vlm(tiny_bert_dir, freeze_text=False)
    with torch.no_grad():
        for p in vlm.image_encoder.parameters():
            p.add_(torch.randn_like(p))
        for p in vlm.text_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = {k: v.clone() for k, v in vlm.momentum.state_dict().items()}
    vlm.momentum_update()
    m = 0.9
    online = vlm.state_dict()
    for k, v in vlm.momentum.state_dict().items():
        expected = m * before[k] + (1 - m) * online[k]
        torch.testing.assert_close(v, expected, rtol=0, atol=1e-6)
    assert not torch.equal(vlm.momentum["image_encoder"].vit.cls_token, before["image_encoder.vit.cls_token"])


def test_temperature_learnable_clamped_and_fixed(tiny_bert_dir):
    vlm = make_vlm(tiny_bert_dir)
    assert math.isclose(float(vlm.temperature.detach()), 0.07, rel_tol=1e-6)
    with torch.no_grad():
        vlm.log_temperature.fill_(math.log(1e-4))
    assert math.isclose(float(vlm.temperature.detach()), 0.01, rel_tol=1e-6)
    fixed = make_vlm(tiny_bert_dir, learnable_temperature=False, temperature=0.1)
    assert "log_temperature" not in dict(fixed.named_parameters())
    assert "log_temperature" in fixed.state_dict()
    with pytest.raises(ConfigError, match="temperature"):
        make_vlm(tiny_bert_dir, temperature=5.0)
    with pytest.raises(ConfigError, match="momentum"):
        make_vlm(tiny_bert_dir, momentum=1.5)


def test_state_dict_round_trip(tiny_bert_dir, tmp_path):
    vlm = make_vlm(tiny_bert_dir)
    vlm.momentum_update()
    torch.save(vlm.state_dict(), tmp_path / "vlm.pt")
    other = make_vlm(tiny_bert_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.load_state_dict(torch.load(tmp_path / "vlm.pt", weights_only=True))
    vlm.eval(), other.eval()
    x = torch.rand(2, 1, 32, 32)
    for momentum in (False, True):
        torch.testing.assert_close(other.encode_image(x, momentum).embed, vlm.encode_image(x, momentum).embed)
        torch.testing.assert_close(other.encode_text(TEXTS, momentum).sigma, vlm.encode_text(TEXTS, momentum).sigma)


def test_encoder_without_hidden_size_is_refused(tiny_bert_dir):
    with pytest.raises(ConfigError, match="hidden_size"):
        DuSSSVisionLanguageModel(torch.nn.Identity(), HFTextEncoder(tiny_bert_dir, max_length=16))
