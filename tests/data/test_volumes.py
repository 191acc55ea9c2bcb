"""3D volumes in the data layer: the checks, the orientation of the slices the pipelines draw (checked against the
lesion's place in patient coordinates, for two storage orders), per-slice sentences in both training stages, and the
CT-like generator."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from volume_phantoms import asr_affine, canonical, save, to_asr, write_pair

from dussss_monai.data import read_training_data
from dussss_monai.data.checks import collect_problems
from dussss_monai.data.pipelines import (
    eval_transforms,
    pretrain_transforms,
    pretrain_validation_transforms,
    train_transforms,
    unlabeled_transforms,
)
from dussss_monai.data.volumes import holds_volumes, load_volume
from dussss_monai.errors import ConfigError, DatasetError


def _item(tmp_path, layout="LPS", name="ct", **extra):
    image, mask = write_pair(tmp_path, name, layout)
    return {"image": str(image), "label": str(mask), "name": f"{name}.nii.gz", "text": "a lesion", **extra}


@pytest.mark.parametrize("layout", ["LPS", "ASR"])
def test_whole_volume_is_oriented_by_its_affine_not_its_array(tmp_path, layout):
    """Both storage orders give the same oriented volume: rows towards posterior, columns towards the patient's left,
    slices towards superior (axial, radiological display)."""
    item = _item(tmp_path, layout)
    sample = eval_transforms(patch_size=16, volumes=True)(item)
    _, canon_mask = canonical()
    expected = torch.from_numpy(canon_mask.transpose(1, 0, 2).astype(np.float32))[None]  # (P, L, S)
    assert torch.equal(sample["label"], expected)
    assert torch.equal(sample["image"] > 0.5, expected > 0.5)  # min-max scaled, the lesion brightest


@pytest.mark.parametrize("layout", ["LPS", "ASR"])
def test_a_drawn_training_slice_shows_the_patients_left_on_the_right_and_anterior_up(tmp_path, layout):
    item = _item(tmp_path, layout)
    pipeline = train_transforms(image_size=None, augment=False, volumes=True)  # type: ignore[arg-type]
    pipeline.set_random_state(0)
    _, canon_mask = canonical()
    drawn = set()
    for _ in range(12):
        sample = pipeline(dict(item))
        k = int(sample["slice"])
        drawn.add(k)
        assert sample["image"].shape == (1, 20, 24) and sample["label"].shape == (1, 20, 24)
        assert torch.equal(sample["label"][0], torch.from_numpy(canon_mask[:, :, k].T.astype(np.float32)))
        if sample["label"].any():
            rows, cols = torch.nonzero(sample["label"][0], as_tuple=True)
            assert cols.float().mean() > 12  # the lesion is in the patient's left: the image's right half
            assert rows.float().mean() < 10  # and anterior: the upper half
    assert drawn & {6, 7, 8} and drawn - {6, 7, 8}  # slices with and without the lesion are both drawn


def test_intensity_window_scales_hounsfield_units(tmp_path):
    item = _item(tmp_path)
    sample = eval_transforms(patch_size=16, volumes=True, window=(-1000, 1000))(item)
    lesion = sample["label"] > 0
    assert torch.allclose(sample["image"][lesion], torch.tensor(1.0))  # 1000 HU: the top of the window
    assert torch.allclose(sample["image"][~lesion], torch.tensor(0.5))  # 0 HU: its middle
    with pytest.raises(ConfigError, match="intensity_window must be"):
        load_volume(["image"], (), window=(100, -100))


def test_resized_volumes_keep_their_slices(tmp_path):
    sample = eval_transforms(image_size=16, volumes=True)(_item(tmp_path))
    assert sample["image"].shape == (1, 16, 16, 10) and set(sample["label"].unique().tolist()) <= {0.0, 1.0}


def test_per_slice_sentences_reach_stage_1_and_both_stage_2_streams(tmp_path):
    """Without a volume sentence only the slices with one are drawn, each with its own sentence."""
    texts = {"2": "Nothing in this lower slice.", "7": "One lesion, left anterior, upper slices."}
    item = _item(tmp_path, slice_texts=texts)
    del item["text"]
    pipelines = {
        "stage 1": pretrain_transforms(image_size=16, volumes=True),
        "labeled": train_transforms(image_size=16, volumes=True),
        "unlabeled": unlabeled_transforms(image_size=16, volumes=True),
    }
    for stage, pipeline in pipelines.items():
        pipeline.set_random_state(1)
        seen = set()
        for _ in range(8):
            sample = pipeline(dict(item))
            k = str(int(sample["slice"]))
            assert sample["text"] == texts[k], stage
            assert "slice_texts" not in sample and sample["image"].shape == (1, 16, 16)
            seen.add(k)
        assert seen == set(texts), stage
    # a volume's own sentence serves the slices without one; stage 1 validates on the slice with the most lesion
    item["text"] = "One lesion in the left anterior upper part."
    picked = pretrain_validation_transforms(image_size=16, volumes=True)(dict(item))
    assert int(picked["slice"]) in {6, 7, 8} and picked["text"] in (item["text"], texts["7"])


def test_a_slice_sentence_outside_the_volume_names_the_volume(tmp_path):
    item = _item(tmp_path, slice_texts={"40": "x"})
    with pytest.raises(
        DatasetError, match="ct.nii.gz: 'slice_texts' names slice\\(s\\) \\[40\\] but the volume has 10"
    ):
        train_transforms(image_size=16, volumes=True)(item)


def test_checks_accept_volumes_and_report_geometry_problems_at_once(tmp_path):
    good = _item(tmp_path, name="good")
    image, mask = canonical()
    shifted = save(tmp_path / "masks" / "shifted.nii.gz", mask, np.diag([-1.5, -1.2, 2.0, 1.0]))
    asr_mask = save(tmp_path / "masks" / "asr.nii.gz", to_asr(mask), asr_affine())
    four_d = save(tmp_path / "images" / "series.nii.gz", np.stack([image, image], -1), np.eye(4))
    nonbinary = save(tmp_path / "masks" / "grey.nii.gz", (mask * 3 + (mask.sum() > 0)).astype(np.int16), np.eye(4))
    with_nan = image.astype(np.float32)
    with_nan[0, 0, :3] = np.nan
    nan_volume = save(tmp_path / "images" / "nan.nii.gz", with_nan, np.eye(4))
    blank = save(tmp_path / "images" / "blank.nii.gz", np.full(image.shape, -1000, np.int16), np.eye(4))
    png = tmp_path / "slice.png"
    from PIL import Image

    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(png)
    datalist = {
        "training": [
            good,
            {**good, "image": good["image"].replace("good", "x"), "name": "x"},  # missing file
            {"image": good["image"], "label": str(shifted), "name": "shifted", "text": "t"},
            {"image": good["image"], "label": str(asr_mask), "name": "asr", "text": "t"},
            {"image": str(four_d), "name": "series", "text": "t"},
            {"image": good["image"], "label": str(nonbinary), "name": "grey", "text": "t"},
            {"image": str(png), "name": "png", "text": "t"},
            {"image": str(nan_volume), "name": "nan", "text": "t"},
            {"image": str(blank), "name": "blank", "text": "t"},
        ],
        "validation": [{**good, "slice_texts": {"a": "x"}, "name": "v"}],
    }
    assert collect_problems({"training": [good]}) == []
    problems = "\n".join(collect_problems(datalist))
    assert "x.nii.gz: file does not exist" in problems
    assert f"{shifted}: mask's affine differs from its image" in problems
    assert f"{asr_mask}: mask shape (20, 10, 24) differs from its image" in problems  # same patient, other grid
    assert "series.nii.gz: NIfTI image of shape (24, 20, 10, 2) is neither a 2D slice nor a 3D volume" in problems
    assert f"{nonbinary}: mask is not binary" in problems
    assert "the data mix 3D volumes and 2D images" in problems and "slice.png a 2D image" in problems
    assert "'slice_texts' key 'a' is not a slice index" in problems
    assert f"{nan_volume}: volume contains NaN or infinite values (3 of {image.size} voxels)" in problems
    assert f"{blank}: volume is constant (every voxel -1000)" in problems


def test_holds_volumes_and_the_generated_ct_set(tmp_path):
    from dussss_monai.data.ct_volumes import generate_ct_volumes

    path = generate_ct_volumes(tmp_path / "ct", n_train=3, n_val=1, n_test=1, shape=(32, 32, 16), seed=3)
    listed = json.loads(path.read_text())
    assert [len(listed[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    data = read_training_data(path, labeled_ratio=0.5, require_text=True)
    assert holds_volumes(data) and not holds_volumes([{"image": str(tmp_path / "a.png")}])
    img = nib.load(str(tmp_path / "ct" / listed["training"][0]["image"]))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and img.header.get_zooms() == (1.5, 1.5, 3.0)
    # the sentence names the side of the lesion in patient coordinates: check it on the oriented volume
    for item in data["training"] + data["validation"]:
        sample = eval_transforms(patch_size=16, volumes=True, window=(-500, 1300))(dict(item))
        cols = torch.nonzero(sample["label"][0].sum((0, 2)) > 0)[:, 0].float()
        if "left iliac" in item["text"] and "right" not in item["text"] and "vertebral" not in item["text"]:
            assert cols.mean() > 16  # the patient's left: the image's right
        if "right iliac" in item["text"] and "left" not in item["text"] and "vertebral" not in item["text"]:
            assert cols.mean() < 16
    again = generate_ct_volumes(tmp_path / "ct2", n_train=3, n_val=1, n_test=1, shape=(32, 32, 16), seed=3)
    first = nib.load(str(tmp_path / "ct" / "images" / "case_000.nii.gz")).get_fdata()
    assert np.array_equal(first, nib.load(str(again.parent / "images" / "case_000.nii.gz")).get_fdata())
