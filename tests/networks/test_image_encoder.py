from __future__ import annotations

import pytest
import torch

from dussss_monai.errors import ConfigError
from dussss_monai.networks.image_encoder import ImageEncoding, ViTImageEncoder


def tiny(**kw) -> ViTImageEncoder:
    args = dict(in_channels=1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4)
    args.update(kw)
    return ViTImageEncoder(**args)


def test_shapes_and_grid():
    torch.manual_seed(0)
    enc = tiny(img_size=(32, 48))
    out = enc(torch.rand(3, 1, 32, 48))
    assert isinstance(out, ImageEncoding)
    assert out.grid == (4, 6)
    assert out.cls.shape == (3, 32) and out.patches.shape == (3, 24, 32)


def test_every_parameter_is_used():
    """The unused classification head was removed: every parameter gets a gradient from cls + patches."""
    torch.manual_seed(0)
    enc = tiny()
    out = enc(torch.rand(2, 1, 32, 32))
    (out.cls.pow(2).sum() + out.patches.pow(2).sum()).backward()
    # MONAI's TransformerBlock always creates a cross-attention norm, unused without cross attention
    missing = [
        n for n, p in enc.named_parameters() if "cross_attn" not in n and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert missing == []


def test_features_depend_on_the_image_and_patch_position():
    torch.manual_seed(0)
    enc = tiny().eval()
    x = torch.rand(1, 1, 32, 32)
    y = x.clone()
    y[..., :8, :8] = 1.0 - y[..., :8, :8]  # change only the top-left patch
    a, b = enc(x), enc(y)
    assert not torch.allclose(a.cls, b.cls)
    d = (a.patches - b.patches).abs().sum(-1)[0]
    assert int(d.argmax()) == 0  # the changed patch moves most


def test_clear_errors():
    with pytest.raises(ConfigError, match="divisible"):
        tiny(img_size=30)
    with pytest.raises(ConfigError, match="num_heads"):
        tiny(hidden_size=30, num_heads=4)
    enc = tiny()
    with pytest.raises(ConfigError, match="img_size"):
        enc(torch.rand(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="not divisible"):
        enc(torch.rand(1, 1, 30, 30))
    with pytest.raises(ConfigError, match="channel"):
        enc(torch.rand(1, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        enc(torch.rand(1, 32, 32))


# ---------------------------------------------------------------------------------------------- conv encoder
from dussss_monai.networks.image_encoder import ConvImageEncoder, build_image_encoder  # noqa: E402


@pytest.mark.parametrize("pool", ["flatten", "attention", "mean"])
def test_conv_shapes_grid_and_gradients(pool):
    torch.manual_seed(0)
    enc = ConvImageEncoder(1, (32, 48), channels=(8, 16), hidden_size=24, num_heads=4, pool=pool)
    assert enc.grid == (8, 12) and enc.hidden_size == 24  # stem stride 2, one stride-2 stage: /4
    out = enc(torch.rand(3, 1, 32, 48))
    assert isinstance(out, ImageEncoding) and out.grid == (8, 12)
    assert out.cls.shape == (3, 24) and out.patches.shape == (3, 96, 24)
    (out.cls.pow(2).sum() + out.patches.pow(2).sum()).backward()
    assert [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_conv_patches_are_the_row_major_feature_map_and_know_position():
    torch.manual_seed(0)
    enc = ConvImageEncoder(1, 32, channels=(8, 16), hidden_size=16).eval()
    x = torch.rand(1, 1, 32, 32)
    y = x.clone()
    y[..., 24:, 24:] = 1.0 - y[..., 24:, 24:]  # bottom-right corner only
    a, b = enc(x), enc(y)
    d = (a.patches - b.patches).abs().sum(-1)[0].view(8, 8)
    assert int(d.argmax()) // 8 >= 5 and int(d.argmax()) % 8 >= 5
    assert not torch.allclose(a.cls, b.cls)
    # coordinate channels: a constant image gives different features at mirrored positions
    flat = enc(torch.full((1, 1, 32, 32), 0.5)).patches[0].view(8, 8, -1)
    assert not torch.allclose(flat[:, 2], flat[:, 5])


def test_conv_clear_errors_and_factory():
    with pytest.raises(ConfigError, match="divisible"):
        ConvImageEncoder(1, 30, channels=(8, 16))
    with pytest.raises(ConfigError, match="pool"):
        ConvImageEncoder(1, 32, pool="max")
    with pytest.raises(ConfigError, match="num_heads"):
        ConvImageEncoder(1, 32, channels=(8, 18), num_heads=4)
    enc = ConvImageEncoder(1, 32, channels=(8, 16))
    with pytest.raises(ConfigError, match="img_size"):
        enc(torch.rand(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="channel"):
        enc(torch.rand(1, 3, 32, 32))
    # prefixed arguments of the other encoder are ignored, so one config can carry both sets
    common = dict(
        vit_patch_size=8,
        vit_hidden_size=32,
        vit_mlp_dim=64,
        vit_num_layers=1,
        vit_num_heads=4,
        conv_channels=[8, 16],
        conv_hidden_size=24,
    )
    vit = build_image_encoder("vit", 1, 32, **common)
    conv = build_image_encoder("CONV", 1, 32, **common)
    assert isinstance(vit, ViTImageEncoder) and vit.hidden_size == 32 and vit.grid == (4, 4)
    assert isinstance(conv, ConvImageEncoder) and conv.hidden_size == 24 and conv.grid == (8, 8)
    with pytest.raises(ConfigError, match="unknown image encoder"):
        build_image_encoder("resnet", 1, 32)
    with pytest.raises(ConfigError, match="does not take"):
        build_image_encoder("conv", 1, 32, patch_size=8)


def test_vit_fused_attention_computes_the_same_function_with_the_same_weights():
    kw = dict(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    fused = ViTImageEncoder(1, **kw).eval()
    plain = ViTImageEncoder(1, fused_attention=False, **kw).eval()
    plain.load_state_dict(fused.state_dict())  # the option changes no parameter
    assert fused.fused_attention and not plain.fused_attention
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(fused(x).patches, plain(x).patches, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused(x).cls, plain(x).cls, rtol=1e-4, atol=1e-5)
    # MONAI's fused path would apply attention dropout in eval mode too: with dropout it is not used
    assert not ViTImageEncoder(1, dropout_rate=0.1, **kw).fused_attention
