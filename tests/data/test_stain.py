"""RandHEDJitterd: stain jitter of H&E images in optical density, a no-op at sigma 0, one draw per sample."""

from __future__ import annotations

import pytest
import torch

from dussss_monai.data.stain import RandHEDJitterd
from dussss_monai.errors import ConfigError


def _tile(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.15 + 0.8 * torch.rand(3, 16, 16, generator=g)


def test_sigma_zero_is_the_identity_and_output_stays_in_unit_range():
    x = _tile()
    out = RandHEDJitterd("image", sigma=0.0)({"image": x})["image"]
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)
    strong = RandHEDJitterd("image", sigma=0.5)
    strong.set_random_state(0)
    y = strong({"image": x})["image"]
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0 and not torch.allclose(y, x, atol=1e-2)


def test_one_draw_for_every_key_of_a_sample_and_reproducible_by_seed():
    x = _tile()
    t = RandHEDJitterd(["a", "b"], sigma=0.2)
    t.set_random_state(5)
    out = t({"a": x, "b": x.clone()})
    torch.testing.assert_close(out["a"], out["b"])
    again = RandHEDJitterd(["a"], sigma=0.2)
    again.set_random_state(5)
    torch.testing.assert_close(again({"a": x})["a"], out["a"])


def test_a_pure_haematoxylin_pixel_stays_on_the_haematoxylin_axis():
    """Scaling the H concentration only darkens or lightens along H's colour: the RGB optical densities stay
    proportional to H's stain vector."""
    t = RandHEDJitterd("image", sigma=0.3)
    t.set_random_state(0)
    t.randomize()
    t._beta[:] = 0.0
    h = t._to_rgb[0]  # optical density of one unit of haematoxylin
    pixel = torch.exp(-0.8 * h).view(3, 1, 1)
    od = -torch.log(t.jitter(pixel).flatten())
    torch.testing.assert_close(od / od.norm(), h / h.norm(), atol=1e-4, rtol=0)


def test_errors():
    with pytest.raises(ConfigError, match="sigma"):
        RandHEDJitterd("image", sigma=-0.1)
    with pytest.raises(ConfigError, match="RGB"):
        RandHEDJitterd("image", sigma=0.1).jitter(torch.rand(1, 4, 4))
