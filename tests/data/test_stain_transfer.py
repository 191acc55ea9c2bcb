"""Stain transfer (Macenko, through MONAI's stain transforms): a re-stained image carries the reference's stain,
the mask never moves, and images without stain are left alone or named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dussss_monai.data import train_transforms, unlabeled_transforms
from dussss_monai.data.augmentations import colour_augmentations
from dussss_monai.data.stain_transfer import (
    STAIN_KEY,
    EstimateHEStaind,
    RandStainTransferd,
    estimate_he_stain,
    he_stain_references,
    restain,
)
from dussss_monai.errors import ConfigError, DatasetError

#: two H&E stains as (3, 2) optical densities of unit concentration (columns: a bluish and a pinkish stain)
STAIN_A = np.array([[0.65, 0.30], [0.70, 0.90], [0.29, 0.30]])
STAIN_B = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])


def _unit_columns(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=0, keepdims=True)


def _he_image(stain: np.ndarray, scale: float = 1.0, size: int = 48, seed: int = 0) -> torch.Tensor:
    """An RGB image ``(3, H, W)`` in [0, 1] from random H and E concentrations mixed with ``stain``."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.0, 1.2, (size, size)) * (rng.uniform(size=(size, size)) < 0.5)
    e = rng.uniform(0.0, 0.8, (size, size)) * (rng.uniform(size=(size, size)) < 0.7)
    concentration = scale * np.stack([h, e])  # (2, H, W)
    density = np.einsum("cs,shw->chw", _unit_columns(stain), concentration)
    return torch.as_tensor(np.exp(-density), dtype=torch.float32)


def _agreement(found: np.ndarray, expected: np.ndarray) -> float:
    """The smaller cosine between matched stain vectors, for the better of the two matchings (MONAI orders the two
    vectors by its own rule)."""
    cosines = [np.sum(_unit_columns(found[:, order]) * _unit_columns(expected), axis=0) for order in ([0, 1], [1, 0])]
    return float(max(c.min() for c in cosines))


def test_the_estimated_stain_is_the_one_the_image_was_made_with():
    stain = estimate_he_stain(_he_image(STAIN_B))
    assert stain.matrix.shape == (3, 2) and stain.max_concentration.shape == (2,)
    assert _agreement(stain.matrix, STAIN_B) > 0.999
    assert _agreement(estimate_he_stain(_he_image(STAIN_A)).matrix, STAIN_A) > 0.999


def test_a_transferred_image_carries_the_reference_stain_and_concentrations():
    reference = estimate_he_stain(_he_image(STAIN_B, scale=1.5, seed=1))
    t = RandStainTransferd("image", [reference], prob=1.0)
    out = t({"image": _he_image(STAIN_A)})["image"]
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    found = estimate_he_stain(out)
    assert _agreement(found.matrix, STAIN_B) > 0.999 and _agreement(found.matrix, STAIN_A) < 0.97
    np.testing.assert_allclose(found.max_concentration, reference.max_concentration, rtol=0.1)


def test_restaining_with_the_image_own_stain_changes_nothing_and_the_tile_stain_is_the_source():
    x = _he_image(STAIN_A)
    own = estimate_he_stain(x)
    torch.testing.assert_close(restain(x, own, own), x, atol=1.5 / 255, rtol=0)
    reference = estimate_he_stain(_he_image(STAIN_B, scale=1.5, seed=1))
    tile = EstimateHEStaind("image")({"image": x})
    assert isinstance(tile[STAIN_KEY], type(own))
    out = RandStainTransferd("image", [reference], prob=1.0)(tile)
    assert STAIN_KEY not in out  # never reaches the batch
    torch.testing.assert_close(out["image"], restain(x, tile[STAIN_KEY], reference))
    # the tile's stain, not the crop's: a crop re-stained from the tile's maxima differs from one from its own
    crop = x[:, :12, :12]
    from_tile = RandStainTransferd("image", [reference], prob=1.0)({"image": crop, STAIN_KEY: own})["image"]
    torch.testing.assert_close(from_tile, restain(crop, own, reference))
    assert EstimateHEStaind("image")({"image": torch.ones(3, 8, 8)})[STAIN_KEY] is None
    skipped = RandStainTransferd("image", [reference], prob=0.0)({"image": x, STAIN_KEY: own})
    assert STAIN_KEY not in skipped and skipped["image"] is x


def test_no_transfer_without_references_or_at_probability_zero():
    x = _he_image(STAIN_A)
    reference = estimate_he_stain(_he_image(STAIN_B))
    assert RandStainTransferd("image", [], prob=1.0)({"image": x})["image"] is x
    assert RandStainTransferd("image", [reference], prob=0.0)({"image": x})["image"] is x
    assert colour_augmentations("image", 0.0, [reference], 0.0) == []
    assert colour_augmentations("image", 0.0, [], 1.0) == []


def test_one_reference_for_every_key_of_a_sample_and_reproducible_by_seed():
    references = [estimate_he_stain(_he_image(s, seed=i)) for i, s in enumerate((STAIN_A, STAIN_B, STAIN_B * 1.3))]
    x = _he_image(STAIN_A, seed=3)
    t = RandStainTransferd(["a", "b"], references, prob=1.0)
    t.set_random_state(4)
    out = t({"a": x, "b": x.clone()})
    torch.testing.assert_close(out["a"], out["b"])
    again = RandStainTransferd(["a"], references, prob=1.0)
    again.set_random_state(4)
    torch.testing.assert_close(again({"a": x})["a"], out["a"])


def test_an_image_without_stain_is_left_as_it_is():
    white = torch.ones(3, 16, 16)
    reference = estimate_he_stain(_he_image(STAIN_B))
    torch.testing.assert_close(RandStainTransferd("image", [reference], prob=1.0)({"image": white})["image"], white)
    with pytest.raises(ValueError, match="absorbance"):
        estimate_he_stain(white)


def test_references_are_read_in_order_and_a_blank_file_is_named(tmp_path, png):
    files = []
    for i, stain in enumerate((STAIN_A, STAIN_B)):
        rgb = (_he_image(stain, seed=i).numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        files.append(png(tmp_path / f"tile{i}.png", rgb))
    references = he_stain_references(files)
    assert len(references) == 2 and he_stain_references([]) == []
    assert _agreement(references[0].matrix, STAIN_A) > 0.99 and _agreement(references[1].matrix, STAIN_B) > 0.99
    blank = png(tmp_path / "blank.png", np.full((16, 16, 3), 255, np.uint8))
    with pytest.raises(DatasetError, match=r"blank\.png.*stain_transfer_prob"):
        he_stain_references([files[0], blank])


def test_the_training_pipeline_restains_the_image_and_keeps_the_mask(tmp_path, png):
    rgb = (_he_image(STAIN_A, size=32).numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 6:18] = 255
    item = {"image": str(png(tmp_path / "img.png", rgb)), "label": str(png(tmp_path / "mask.png", mask))}
    reference = estimate_he_stain(_he_image(STAIN_B, seed=1))

    def run(prob: float) -> dict:
        pipeline = train_transforms(
            channels=3, patch_size=32, flip=False, rotate90=False, rotate_degrees=0.0,
            stain_references=[reference], stain_transfer_prob=prob,
        )  # fmt: skip
        pipeline.set_random_state(0)
        return pipeline(item)

    plain, restained = run(0.0), run(1.0)
    assert STAIN_KEY not in restained
    torch.testing.assert_close(restained["label"], plain["label"])
    assert float((restained["image"] - plain["image"]).abs().mean()) > 0.02
    with pytest.raises(ConfigError, match="stain_transfer_prob"):
        train_transforms(channels=3, stain_references=[reference], stain_transfer_prob=1.5)


def test_the_strong_view_is_restained_and_the_teacher_view_keeps_the_tile_stain(tmp_path, png):
    rgb = (_he_image(STAIN_A, size=32).numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    item = {"image": str(png(tmp_path / "img.png", rgb)), "text": "t"}
    reference = estimate_he_stain(_he_image(STAIN_B, seed=1))

    def run(prob: float) -> dict:
        pipeline = unlabeled_transforms(
            channels=3, patch_size=32, flip=False, rotate90=False, rotate_degrees=0.0, strong_view=True,
            stain_references=[reference], stain_transfer_prob=prob,
        )  # fmt: skip
        pipeline.set_random_state(0)
        return pipeline(dict(item))

    plain, restained = run(0.0), run(1.0)
    assert STAIN_KEY not in restained
    torch.testing.assert_close(restained["image"], plain["image"])  # the teacher's view: the tile's own stain
    assert float((restained["image_strong"] - plain["image_strong"]).abs().mean()) > 0.02
    with pytest.raises(ConfigError, match="strong view: stain_transfer_prob"):
        unlabeled_transforms(channels=3, strong_view=True, stain_references=[reference], stain_transfer_prob=-0.1)
