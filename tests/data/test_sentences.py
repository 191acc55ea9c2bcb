"""Sentences drafted from masks: both templates on masks with known areas, the command line, its errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dussss_monai.data import read_table
from dussss_monai.data.demo import generate_demo_dataset
from dussss_monai.data.sentences import connected_areas, draft_sentences, generic_sentence, main, qata_sentence
from dussss_monai.errors import ConfigError


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# qata_sentence's default lung rows 0.18-0.75 of a 100-row mask: upper 18-36, middle 37-55, lower 56-75


def _mask(*boxes: tuple[int, int, int, int], size: int = 100) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    for top, bottom, left, right in boxes:
        mask[top:bottom, left:right] = 1
    return mask


def test_qata_left_right_is_radiological():
    assert (
        qata_sentence(_mask((20, 30, 70, 80))) == "Unilateral pulmonary infection, one infected area, upper left lung."
    )
    assert (
        qata_sentence(_mask((20, 30, 20, 30))) == "Unilateral pulmonary infection, one infected area, upper right lung."
    )
    assert qata_sentence(_mask((20, 30, 70, 80), (60, 70, 20, 30))) == (
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    )


def test_qata_one_area_across_two_zones_names_both_and_counts_one():
    across = _mask((30, 45, 70, 80))  # 7 rows upper, 8 rows middle
    assert qata_sentence(across) == "Unilateral pulmonary infection, one infected area, upper middle left lung."
    tail = _mask((38, 55, 70, 80), (36, 38, 74, 76))  # a small tail into the upper zone: not named
    assert qata_sentence(tail) == "Unilateral pulmonary infection, one infected area, middle left lung."
    rows_above_and_below = _mask((2, 10, 20, 30), (90, 98, 20, 30))  # outside the lung rows: clipped to the ends
    assert qata_sentence(rows_above_and_below) == (
        "Unilateral pulmonary infection, two infected areas, upper lower right lung."
    )


def test_qata_empty_mask_and_specks():
    assert qata_sentence(np.zeros((1, 64, 64), np.float32)) == "No pulmonary infection."
    speck = _mask((20, 22, 20, 22))  # 4 pixels of 10000: below the 0.05 % kept
    assert qata_sentence(speck) == "No pulmonary infection."
    assert qata_sentence(speck, min_area=0) == "Unilateral pulmonary infection, one infected area, upper right lung."


def test_connected_areas_eight_connected_largest_first():
    mask = _mask((10, 12, 10, 12), (12, 14, 12, 14), (50, 60, 50, 60))  # the two squares touch at a corner
    areas = connected_areas(mask, min_area=0)
    assert [int(a.sum()) for a in areas] == [100, 8]


def test_generic_sentences():
    assert generic_sentence(np.zeros((90, 90))) == "No lesion."
    large_upper_left = (5, 35, 5, 35)  # 900 of 8100 pixels: 11 %
    small_centre = (44, 48, 44, 48)  # 16 pixels: 0.2 %
    medium_lower_right = (70, 80, 70, 80)  # 1.2 %
    assert generic_sentence(_mask(large_upper_left, size=90)) == "One large lesion in the upper left."
    assert generic_sentence(_mask(small_centre, large_upper_left, size=90)) == (
        "Two lesions: a large one in the upper left and a small one in the centre."
    )
    assert generic_sentence(_mask(small_centre, medium_lower_right, large_upper_left, size=90)) == (
        "Three lesions: a large one in the upper left, a medium one in the lower right and a small one in the centre."
    )
    many = [(5 + 8 * k, 8 + 8 * k, 5, 8) for k in range(3)] + [(70, 73, 70, 73), (80, 83, 80, 83)]
    assert generic_sentence(_mask(*many, size=90), noun=("nodule", "nodules")) == (
        "Five nodules: three in the upper left and two in the lower right."
    )


def test_draft_names_every_bad_mask(tmp_path):
    good = write_png(tmp_path / "a.png", _mask((20, 30, 20, 30)) * 255)
    grey = write_png(tmp_path / "b.png", np.arange(100, dtype=np.uint8).reshape(10, 10))
    broken = tmp_path / "c.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="unknown template 'free'"):
        draft_sentences([{"label": str(good)}], "free")
    with pytest.raises(Exception) as e:
        draft_sentences([{"label": str(p)} for p in (good, grey, broken)], "generic")
    assert f"{grey}: mask is not binary" in str(e.value) and f"{broken}: unreadable" in str(e.value)


def _lab(tmp_path: Path) -> tuple[Path, Path]:
    masks, images = tmp_path / "lab" / "masks", tmp_path / "lab" / "images"
    write_png(masks / "mask_case1.png", _mask((20, 30, 70, 80)) * 255)
    write_png(masks / "case2.png", np.zeros((100, 100), np.uint8))
    for name in ("case1.png", "case2.png"):
        write_png(images / name, np.full((100, 100), 90, np.uint8))
    return masks, images


def test_cli_writes_a_table_the_reader_takes_as_it_is(tmp_path, capsys):
    masks, images = _lab(tmp_path)
    out = tmp_path / "out" / "reports.csv"
    argv = ["--mask_dir", str(masks), "--image_dir", str(images), "--template", "qata", "--output", str(out)]
    assert main(argv) == 0
    assert "wrote 2 sentences (qata)" in capsys.readouterr().out
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0] == ["image", "mask", "text"]
    assert rows[1][:2] == ["../lab/images/case1.png", "../lab/masks/mask_case1.png"]
    sections, problems = read_table(out)
    assert problems == [] and len(sections["training"]) == 2
    first, second = sections["training"]
    assert first["image"] == str(images / "case1.png") and first["label"] == str(masks / "mask_case1.png")
    assert first["text"] == "Unilateral pulmonary infection, one infected area, upper left lung."
    assert second["image"] == str(images / "case2.png") and second["text"] == "No pulmonary infection."

    assert main(argv) == 2  # never replaces a table by itself
    assert "exists: choose another --output, or add --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--template", "generic"]) == 0
    assert read_table(out)[0]["training"][0]["text"] == "One medium lesion in the upper right."  # 1 % of the image


def test_cli_without_images_names_them_after_the_masks(tmp_path):
    masks, _ = _lab(tmp_path)
    out = tmp_path / "reports.csv"
    assert main(["--mask_dir", str(masks), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["image"] for r in rows] == ["case1.png", "case2.png"]  # in the images' order, mask_ dropped
    assert [r["mask"] for r in rows] == ["lab/masks/mask_case1.png", "lab/masks/case2.png"]


def test_cli_reads_a_dataset_and_keeps_its_splits(tmp_path):
    data = generate_demo_dataset(tmp_path / "demo", n_train=3, n_val=1, n_test=0, image_size=64, seed=0)
    out = tmp_path / "drafts.csv"
    assert main(["--dataset_dir", str(data), "--template", "qata", "--output", str(out)]) == 0
    sections, problems = read_table(out)
    assert problems == [] and [len(sections[k]) for k in ("training", "validation")] == [3, 1]
    assert all(it["text"].endswith("lung.") and Path(it["label"]).is_file() for it in sections["training"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mask_dir", "{tmp}/absent"], "{tmp}/absent: mask folder does not exist (--mask_dir)"),
        (["--mask_dir", "{tmp}/lab/masks", "--image_dir", "{tmp}/nope"], "{tmp}/nope: image folder does not exist"),
        ([], "give --mask_dir (a folder of masks) or --dataset_dir"),
        (["--mask_dir", "{tmp}/lab/masks", "--template", "qata", "--lung_rows", "0.8,0.2"], "--lung_rows must be"),
        (["--mask_dir", "{tmp}/lab/masks", "--template", "qata", "--lung_rows", "top,bottom"], "--lung_rows must be"),
        (["--mask_dir", "{tmp}/lab/masks", "--noun", "lesion"], "--noun expects two values"),
        (["--mask_dir", "{tmp}/lab/images/../bad"], "{tmp}/lab/images/../bad/broken.png: unreadable"),
    ],
)
def test_cli_errors_name_the_file_and_the_fix(tmp_path, capsys, args, message):
    _lab(tmp_path)
    (tmp_path / "lab" / "bad").mkdir()
    (tmp_path / "lab" / "bad" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "reports.csv"
    assert main([a.format(tmp=tmp_path) for a in args] + ["--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not out.exists()
