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
