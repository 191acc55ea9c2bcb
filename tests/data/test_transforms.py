"""Dictionary transforms and pipelines: shapes, dtypes, ranges, binary masks, paired augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from PIL import Image

from dussss_monai.data.pipelines import (
    eval_transforms,
    pretrain_transforms,
    resize,
    train_transforms,
    unlabeled_transforms,
)
from dussss_monai.data.transforms import LoadImage2Dd
from dussss_monai.errors import DatasetError


@pytest.fixture
def asym_item(tmp_path, png):
    """An asymmetric pattern (an L shape off-centre) whose mask is exactly image > 0.5."""
    img = np.full((60, 44), 20, np.uint8)
    img[5:40, 6:14] = 230
    img[32:40, 6:34] = 230
    mask = np.where(img > 127, 255, 0).astype(np.uint8)
    return {
        "image": str(png(tmp_path / "a.png", img)),
        "label": str(png(tmp_path / "m.png", mask)),
        "text": "Unilateral pulmonary infection, one infected area, upper left lung.",
        "name": "a.png",
    }


def _check_sample(out, channels=1, size=32, label=True):
    assert type(out["image"]) is torch.Tensor and out["image"].dtype == torch.float32
    assert tuple(out["image"].shape) == (channels, size, size)
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    if label:
        assert type(out["label"]) is torch.Tensor and out["label"].dtype == torch.float32
        assert tuple(out["label"].shape) == (1, size, size)
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    else:
        assert "label" not in out


def test_eval_pipeline(asym_item):
    out = eval_transforms(32)(asym_item)
    _check_sample(out)
    assert out["text"] == asym_item["text"] and out["name"] == "a.png"
    assert (
        torch.equal((out["image"] > 0.5).float(), out["label"])
        or ((out["image"] > 0.5).float() != out["label"]).float().mean() < 0.03
    )


def test_train_augmentation_moves_image_and_mask_together(asym_item):
    t = train_transforms(32, channels=1)
    t.set_random_state(7)
    seen = set()
    for _ in range(25):
        out = t(asym_item)
        _check_sample(out)
        agree = ((out["image"] > 0.5).float() == out["label"]).float().mean().item()
        assert agree > 0.95, agree
        seen.add(tuple(out["label"].flatten().tolist()))
    assert len(seen) > 3  # the augmentation really changes the geometry


def test_train_no_augment_is_deterministic_and_rgb(asym_item):
    t = train_transforms((24, 40), channels=3, augment=False)
    a, b = t(asym_item), t(asym_item)
    assert tuple(a["image"].shape) == (3, 24, 40) and torch.equal(a["image"], b["image"])
    assert torch.equal(a["image"][0], a["image"][2])


def test_unlabeled_drops_label_and_keeps_text(asym_item):
    out = unlabeled_transforms(32, 1)(asym_item)
    _check_sample(out, label=False)
    assert out["text"] == asym_item["text"]
    no_label = {k: v for k, v in asym_item.items() if k != "label"}
    _check_sample(unlabeled_transforms(32, 1)(no_label), label=False)


def test_pretrain_two_independent_views(asym_item):
    t = pretrain_transforms(32, channels=1)
    t.set_random_state(0)
    differ = 0
    for _ in range(5):
        out = t(asym_item)
        _check_sample(out, label=False)
        assert (
            out["image_aug"].shape == out["image"].shape and 0 <= out["image_aug"].min() and out["image_aug"].max() <= 1
        )
        differ += not torch.allclose(out["image"], out["image_aug"])
    assert differ >= 4


def test_collate_through_dataloader(asym_item):
    ds = Dataset([asym_item, dict(asym_item, name="b.png", text="other")], transform=train_transforms(32))
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 1, 32, 32) and batch["label"].shape == (2, 1, 32, 32)
    assert batch["name"] == ["a.png", "b.png"] and batch["text"][1] == "other"


def test_loader_error_names_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"xx")
    with pytest.raises(DatasetError, match="bad.png"):
        LoadImage2Dd(["image"], mask_keys=())({"image": str(bad)})
    # through a whole pipeline: our error, not MONAI's RuntimeError wrapper
    for pipeline in (eval_transforms(32), train_transforms(32), unlabeled_transforms(32), pretrain_transforms(32)):
        with pytest.raises(DatasetError, match="bad.png: unreadable"):
            pipeline({"image": str(bad), "label": str(bad), "text": "t"})


def test_patch_training_crops_at_native_resolution_with_image_and_mask_together(asym_item):
    """patch_size: a random native-resolution crop (no resize), the same window for image and mask."""
    pipe = train_transforms(image_size=224, channels=1, patch_size=24, flip=False, rotate90=False, rotate_degrees=0)
    origins = set()
    for seed in range(8):
        pipe.set_random_state(seed)
        out = pipe(dict(asym_item))
        _check_sample(out, size=24)
        # the mask is exactly image > 0.5 in the file: true of the crop only if both took the same window
        assert torch.equal(out["label"], (out["image"] > 0.5).float())
        origins.add(tuple(out["image"][0].flatten()[:50].tolist()))
    assert len(origins) > 1  # the window moves between draws


def test_patch_larger_than_image_is_padded(asym_item):
    out = train_transforms(channels=1, patch_size=(64, 64), augment=False)(dict(asym_item))  # the image is 60 x 44
    _check_sample(out, size=64)
    assert int(out["label"].sum()) == int(np.sum(np.asarray(Image.open(asym_item["label"])) > 0))


def test_patch_mode_eval_and_unlabeled_keep_native_size(asym_item):
    ev = eval_transforms(image_size=32, channels=1, patch_size=24)(dict(asym_item))
    assert tuple(ev["image"].shape) == (1, 60, 44) and tuple(ev["label"].shape) == (1, 60, 44)
    un = unlabeled_transforms(image_size=32, channels=1, patch_size=24)(dict(asym_item))
    _check_sample(un, size=24, label=False)


def test_grounding_context_keeps_the_whole_image_and_where_the_patch_lies(asym_item):
    from monai.transforms import Compose

    whole = eval_transforms(image_size=None, channels=1, patch_size=1)(dict(asym_item))  # native, unresized
    pipe = train_transforms(image_size=32, channels=1, patch_size=24, grounding_context=True, augment=False)
    for seed in range(4):
        pipe.set_random_state(seed)
        out = pipe(dict(asym_item))
        top, left, h, w = out["crop_box"].tolist()
        y0, x0 = round(top * 60), round(left * 44)
        assert (round(h * 60), round(w * 44)) == (24, 24)
        assert torch.equal(out["image"], whole["image"][:, y0 : y0 + 24, x0 : x0 + 24])
        assert torch.equal(out["label"], whole["label"][:, y0 : y0 + 24, x0 : x0 + 24])
        resized = Compose(resize(["image", "label"], 32, mask_keys=["label"]))(dict(whole))
        assert torch.equal(out["vlm_image"], resized["image"]) and torch.equal(out["vlm_label"], resized["label"])
    un = unlabeled_transforms(image_size=32, channels=1, patch_size=24, grounding_context=True, rotate_degrees=90)
    un.set_random_state(0)
    u = un(dict(asym_item))
    top, left = u["crop_box"][:2].tolist()
    y0, x0 = round(top * 60), round(left * 44)
    assert torch.equal(u["image"], whole["image"][:, y0 : y0 + 24, x0 : x0 + 24])  # no rotation of the patch
    assert tuple(u["vlm_image"].shape) == (1, 32, 32) and "label" not in u


def test_stain_jitter_changes_colour_only_and_strong_view_keeps_the_pixels_in_place(tmp_path, png):
    """Colour augmentation never moves a pixel: the strong view is the weak one with other colours."""
    img = np.full((40, 40, 3), 60, np.uint8)
    img[4:30, 5:12] = (200, 120, 180)  # an asymmetric L of pink "tissue" on dark purple
    img[24:30, 5:33] = (200, 120, 180)
    item = {"image": str(png(tmp_path / "rgb.png", img)), "label": str(png(tmp_path / "rgb_m.png", (img[..., 0] > 127).astype(np.uint8) * 255)),
            "text": "t", "name": "rgb.png"}  # fmt: skip
    plain = train_transforms(image_size=40, channels=3, flip=False, rotate90=False, rotate_degrees=0)(dict(item))
    jittered = train_transforms(
        image_size=40, channels=3, flip=False, rotate90=False, rotate_degrees=0, stain_jitter=0.2
    )
    jittered.set_random_state(1)
    out = jittered(dict(item))
    assert torch.equal(out["label"], plain["label"]) and not torch.allclose(out["image"], plain["image"])
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    un = unlabeled_transforms(image_size=40, channels=3, flip=True, rotate90=True, rotate_degrees=0,
                              strong_view=True, stain_jitter=0.2)  # fmt: skip
    un.set_random_state(3)
    u = un(dict(item))
    assert u["image_strong"].shape == u["image"].shape and not torch.allclose(u["image_strong"], u["image"])
    # the same spatial augmentation for both views: the L lies at the same pixels in both
    weak, strong = u["image"].mean(0), u["image_strong"].mean(0)
    weak_l, strong_l = weak > (weak.min() + weak.max()) / 2, strong > (strong.min() + strong.max()) / 2
    assert float((weak_l & strong_l).sum() / (weak_l | strong_l).sum()) > 0.8
    assert "image_strong" not in unlabeled_transforms(image_size=40, channels=3)(dict(item))
