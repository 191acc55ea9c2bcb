"""draw_cutmix / BatchCutMix: one box per image inside the image, a pairing without fixed points, the same mix
for every tensor of the batch."""

from __future__ import annotations

import pytest
import torch

from dussss_monai.engines.cutmix import BatchCutMix, draw_cutmix
from dussss_monai.errors import ConfigError


def _box_of(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def test_each_image_gets_one_rectangle_of_the_drawn_area_inside_the_image():
    g = torch.Generator().manual_seed(0)
    draw = draw_cutmix(64, (40, 50), area_range=(0.25, 0.5), generator=g)
    assert draw.mask.shape == (64, 1, 40, 50)
    assert set(draw.mask.unique().tolist()) <= {0.0, 1.0}
    fractions = draw.mask.mean(dim=(1, 2, 3))
    # pixel rounding of each side moves the area by at most about one row and one column
    assert float(fractions.min()) > 0.25 - 0.05 and float(fractions.max()) < 0.5 + 0.05
    for m in draw.mask[:, 0].bool():
        top, bottom, left, right = _box_of(m)
        assert m[top : bottom + 1, left : right + 1].all()  # a filled rectangle ...
        assert int(m.sum()) == (bottom - top + 1) * (right - left + 1)  # ... and nothing else
    # the boxes are spread over the image, not gathered in one corner
    centres = torch.stack([torch.nonzero(m).float().mean(0) for m in draw.mask[:, 0].bool()])
    assert float(centres[:, 0].min()) < 15 and float(centres[:, 0].max()) > 25
    assert float(centres[:, 1].min()) < 20 and float(centres[:, 1].max()) > 30


@pytest.mark.parametrize("batch", [2, 3, 7])
def test_pairing_is_a_permutation_without_fixed_points(batch):
    for seed in range(20):
        partner = draw_cutmix(batch, (8, 8), generator=torch.Generator().manual_seed(seed)).partner
        assert sorted(partner.tolist()) == list(range(batch))
        assert all(int(p) != i for i, p in enumerate(partner))


def test_apply_pastes_the_partner_inside_the_box_and_keeps_the_image_outside():
    mask = torch.zeros(3, 1, 4, 4)
    mask[0, :, :2, :2] = 1
    mask[2, :, 2:, 1:3] = 1
    draw = BatchCutMix(mask=mask, partner=torch.tensor([1, 2, 0]))
    data = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 4)  # two channels, image i holds the value i
    mixed = draw.apply(data)
    expected = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 4).clone()
    expected[0, :, :2, :2] = 1
    expected[2, :, 2:, 1:3] = 0
    torch.testing.assert_close(mixed, expected)
    with pytest.raises(ValueError, match="drawn for a batch"):
        draw.apply(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="drawn for a batch"):
        draw.apply(torch.zeros(3, 1, 5, 4))


def test_draws_follow_the_generator_and_bad_arguments_are_refused():
    a = draw_cutmix(4, (16, 16), generator=torch.Generator().manual_seed(3))
    b = draw_cutmix(4, (16, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.partner, b.partner)
    with pytest.raises(ConfigError, match="at least 2 images"):
        draw_cutmix(1, (8, 8))
    with pytest.raises(ConfigError, match="2-D"):
        draw_cutmix(2, (8, 8, 8))
    for bad in [(0.0, 0.5), (0.6, 0.5), (0.5, 1.0)]:
        with pytest.raises(ConfigError, match="area_range"):
            draw_cutmix(2, (8, 8), area_range=bad)
