"""GroundingDecoder f_g: shapes, normalisation, logit scale, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dussss_monai.networks.grounding_decoder import GroundingDecoder


def _decoder(**kw) -> GroundingDecoder:
    torch.manual_seed(0)
    return GroundingDecoder(in_channels=12, embed_dim=8, hidden_channels=8, **kw)


def test_pixel_features_shape_and_unit_norm():
    dec = _decoder()
    feats = dec(torch.randn(2, 7 * 7, 12), (7, 7))
    assert feats.shape == (2, 8, 28, 28)  # two x2 upsamplings: 7 -> 28 (paper: 14 -> 56)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2, 28, 28))


def test_text_logits_are_scaled_cosines_upsampled_to_image():
    dec = _decoder(init_logit_scale=5.0, init_logit_bias=-1.0)
    patches, text = torch.randn(2, 16, 12), torch.randn(2, 8)
    feats = dec.pixel_features(patches, (4, 4))
    low = dec.text_logits(feats, text)
    cos = (feats * F.normalize(text, dim=1)[:, :, None, None]).sum(1, keepdim=True)
    torch.testing.assert_close(low, 5.0 * cos - 1.0)
    assert low.abs().max() <= 6.0 + 1e-5
    logits = dec(patches, (4, 4), text, out_size=(64, 48))
    assert logits.shape == (2, 1, 64, 48)
    torch.testing.assert_close(logits, F.interpolate(low, size=(64, 48), mode="bilinear", align_corners=False))


def test_learnable_scale_lets_masks_become_confident():
    """sigmoid of a plain cosine is stuck in [0.27, 0.73]; the learnable scale is what allows confident masks."""
    dec = _decoder()
    assert torch.sigmoid(torch.tensor(1.0)) < 0.74
    with torch.no_grad():
        dec.log_logit_scale.fill_(torch.log(torch.tensor(50.0)))
    feats = dec.pixel_features(torch.randn(1, 16, 12), (4, 4))
    text = feats[:, :, 0, 0].clone()  # the text embedding equals one pixel's feature -> cosine 1 there
    assert torch.sigmoid(dec.text_logits(feats, text))[0, 0, 0, 0] > 0.999


def test_gradients_reach_every_parameter():
    dec = _decoder()
    dec(torch.randn(2, 16, 12), (4, 4), torch.randn(2, 8), (32, 32)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters())


def test_logit_scale_is_clamped():
    dec = _decoder(max_logit_scale=20.0)
    with torch.no_grad():
        dec.log_logit_scale.fill_(10.0)
    assert float(dec.logit_scale.detach()) == pytest.approx(20.0)


def test_shape_errors():
    dec = _decoder()
    with pytest.raises(ValueError, match="grid"):
        dec.pixel_features(torch.randn(1, 15, 12), (4, 4))
    feats = dec.pixel_features(torch.randn(1, 16, 12), (4, 4))
    with pytest.raises(ValueError, match="text embedding size"):
        dec.text_logits(feats, torch.randn(1, 5))
    with pytest.raises(ValueError):
        GroundingDecoder(in_channels=0, embed_dim=8)


def test_image_skip_gives_features_at_image_resolution_that_depend_on_the_image():
    dec = _decoder(image_skip_channels=4)
    assert dec.uses_image and not _decoder().uses_image
    patches = torch.randn(2, 16, 12)
    image = torch.rand(2, 1, 36, 20)
    feats = dec.pixel_features(patches, (4, 4), image)
    assert feats.shape == (2, 8, 36, 20)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2, 36, 20))
    # the image itself (not only the tokens computed from it) changes the features: it can place borders
    image2 = image.clone()
    image2[:, :, 10:14, 5:9] += 1.0
    assert not torch.allclose(dec.pixel_features(patches, (4, 4), image2), feats)
    logits = dec(patches, (4, 4), torch.randn(2, 8), out_size=(36, 20), image=image)
    assert logits.shape == (2, 1, 36, 20)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters())


def test_image_skip_errors():
    dec = _decoder(image_skip_channels=4, image_channels=3)
    patches = torch.randn(2, 16, 12)
    with pytest.raises(ValueError, match="needs the image"):
        dec.pixel_features(patches, (4, 4))
    with pytest.raises(ValueError, match="image_channels=3"):
        dec.pixel_features(patches, (4, 4), torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="image_skip_channels"):
        _decoder(image_skip_channels=-1)
    # without the skip the image is ignored: the paper's f_g
    plain = _decoder()
    torch.testing.assert_close(
        plain.pixel_features(patches, (4, 4), torch.rand(2, 1, 16, 16)), plain.pixel_features(patches, (4, 4))
    )


def test_spatial_prior_starts_at_zero_and_then_follows_the_sentence():
    """prior_grid > 0 adds a map of logits made from the sentence alone: zero at first (f_g starts as without it),
    then different for different sentences and places, whatever the pixel features."""
    plain, with_prior = _decoder(), _decoder(prior_grid=4)
    assert plain.spatial_prior is None and with_prior.spatial_prior is not None
    patches, text = torch.randn(2, 16, 12), torch.randn(2, 8)
    torch.testing.assert_close(with_prior(patches, (4, 4), text), plain(patches, (4, 4), text))
    with torch.no_grad():  # sentence 0 -> the left half of the image, sentence 1 -> the right half
        weight = torch.zeros(16, 8)
        weight[[0, 1, 4, 5, 8, 9, 12, 13], 0] = 1.0
        weight[[2, 3, 6, 7, 10, 11, 14, 15], 1] = 1.0
        with_prior.spatial_prior.weight.copy_(weight)
    texts = torch.eye(8)[:2]
    feats = with_prior.pixel_features(patches, (4, 4))
    gain = with_prior.prior_gain
    assert gain == pytest.approx(8.0 * 8**0.5)
    added = with_prior.text_logits(feats, texts) - plain.text_logits(feats, texts)
    assert added.shape == (2, 1, 16, 16)
    torch.testing.assert_close(added[0, 0, :, :4], torch.full((16, 4), gain))
    torch.testing.assert_close(added[0, 0, :, 12:], torch.zeros(16, 4))
    torch.testing.assert_close(added[1, 0, :, 12:], torch.full((16, 4), gain))
    torch.testing.assert_close(added[1, 0, :, :4], torch.zeros(16, 4))


def test_spatial_prior_is_cropped_to_the_regions_of_patch_training():
    dec = _decoder(prior_grid=4)
    with torch.no_grad():
        dec.spatial_prior.weight.normal_()
    text = torch.randn(2, 8)
    whole = dec.prior_logits(text, (16, 32))
    left_half = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 0.5]])  # image 0: left half, image 1: right half
    crops = dec.prior_logits(text, (16, 16), left_half)
    torch.testing.assert_close(crops[0], whole[0, :, :, :16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(crops[1], whole[1, :, :, 16:], atol=1e-5, rtol=1e-5)
    assert _decoder().prior_logits(text, (16, 16)) is None


def test_spatial_prior_settings_are_checked():
    with pytest.raises(ValueError, match="prior_grid"):
        _decoder(prior_grid=-1)
    with pytest.raises(ValueError, match="prior_gain"):
        _decoder(prior_grid=4, prior_gain=0.0)
