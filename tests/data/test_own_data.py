"""A user's own data: images without masks are unlabeled, tables with the user's column names, evaluation sets
without text, pixel-value checks and long problem lists."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from dussss_monai.data import (
    DatasetSource,
    read_evaluation_items,
    read_table,
    read_training_data,
    split_name,
    write_split_files,
)
from dussss_monai.errors import ConfigError, DatasetError


def _lab(root, png, pair, n=8, masked=(0, 4), text=True, names=("filename", "report")):
    """A lab's layout: images/*.png, masks/ for some of them, reports.csv with the lab's own column names."""
    lines = [",".join(names)]
    for i in range(n):
        img, mask = pair(i)
        png(root / "images" / f"case{i:02d}.png", img)
        if i in masked:
            png(root / "masks" / f"case{i:02d}.png", mask)
        lines.append(f"case{i:02d}.png," + (f'"Sentence {i}, with a comma."' if text else ""))
    (root / "reports.csv").write_text("\n".join(lines) + "\n")
    return root


def test_a_table_with_other_column_names_and_masks_for_some_images(tmp_path, png, pair):
    lab = _lab(tmp_path / "lab", png, pair, n=8, masked=(0, 3, 5))
    source = DatasetSource(lab / "reports.csv", {"image": "filename", "text": "report"}, lab / "images", lab / "masks")
    data = read_training_data(source, labeled_ratio=0.25, seed=0, require_text=("training", "unlabeled"))
    split = data["split"]
    assert split["mode"] == "given" and split["labeled_ratio"] is None
    # every masked image is labeled or validates; every other one is unlabeled: none is thrown away
    assert (split["n_labeled"], split["n_validation"], split["n_unlabeled"]) == (2, 1, 5)
    names = {it["name"] for part in ("labeled", "validation", "unlabeled") for it in data[part]}
    assert names == {f"case{i:02d}.png" for i in range(8)}
    assert all("label" not in it for it in data["unlabeled"]) and all(it.get("label") for it in data["labeled"])
    assert data["unlabeled"][0]["text"].startswith("Sentence")
    assert "3 training images with a mask" not in split["summary"][0]  # one of the three validates
    assert "5 training images without a mask" in split["summary"][1]
    # the same data, the seed changes nothing: the split is the data's own
    again = read_training_data(source, labeled_ratio=0.5, seed=3)
    assert [it["name"] for it in again["labeled"]] == [it["name"] for it in data["labeled"]]
    assert split_name(source, 0.25) == "given"
    path = write_split_files(data, tmp_path / "run")
    assert path.name == "split_given.json" and json.loads(path.read_text())["n_unlabeled"] == 5


def test_a_table_column_that_is_not_there_is_named(tmp_path, png, pair):
    lab = _lab(tmp_path / "lab", png, pair)
    with pytest.raises(DatasetError, match=r"no column 'file' \(for image\).*found: 'filename', 'report'"):
        read_table(lab / "reports.csv", columns={"image": "file"})
    with pytest.raises(DatasetError, match="no image column in the header.*--columns"):
        read_table(lab / "reports.csv")
    with pytest.raises(ConfigError, match="unknown key.*'picture'"):
        read_table(lab / "reports.csv", columns={"picture": "filename"})


def test_an_excel_table_with_a_split_column_and_empty_mask_cells(tmp_path, xlsx, png, pair):
    root = tmp_path / "d"
    rows = []
    for i in range(5):
        img, mask = pair(i)
        png(root / "im" / f"{i}.png", img)
        png(root / "ma" / f"{i}.png", mask)
        split = ["train", "train", "train", "val", "unlabelled"][i]
        rows.append((f"im/{i}.png", f"ma/{i}.png" if i not in (1,) else None, f"report {i}", split))
    path = xlsx(root / "table.xlsx", rows, header=("Picture", "Mask file", "Report", "Set"))
    sections, problems = read_table(
        path, columns={"image": "Picture", "label": "Mask file", "text": "Report", "split": "Set"}
    )
    assert problems == []
    assert [len(sections[k]) for k in ("training", "validation", "unlabeled")] == [3, 1, 1]
    assert "label" not in sections["training"][1]  # the empty mask cell
    data = read_training_data(DatasetSource(path, {"image": "Picture", "label": "Mask file", "split": "Set"}))
    # the 'unlabeled' row's mask is not used; the empty cell makes row 2 unlabeled too
    assert (data["split"]["n_labeled"], data["split"]["n_unlabeled"], data["split"]["n_validation"]) == (2, 2, 1)


def test_an_lvit_folder_with_images_without_masks(make_lvit, png, pair):
    root = make_lvit(n_train=6, n_val=2)
    for i in (1, 2, 4):
        (root / "Train_Folder" / "labelcol" / f"mask_train_{i}.png").unlink()
    data = read_training_data(root, labeled_ratio=0.25, require_text=True)
    assert data["split"]["mode"] == "given"
    assert (data["split"]["n_labeled"], data["split"]["n_unlabeled"]) == (3, 3)
    assert all(it["text"].startswith("Text number") for it in data["unlabeled"])  # text found by mask_<image name>
    (root / "Val_Folder" / "labelcol" / "mask_val_0.png").unlink()
    with pytest.raises(DatasetError, match="val_0.png: image without mask"):  # validation is scored: masks needed
        read_training_data(root)


def test_a_json_datalist_with_an_unlabeled_section_is_used_as_given(tmp_path, png, pair):
    items = []
    for i in range(6):
        img, mask = pair(i)
        png(tmp_path / f"i{i}.png", img)
        png(tmp_path / f"m{i}.png", mask)
        items.append({"image": f"i{i}.png", "label": f"m{i}.png"})
    datalist = {"training": items[:4], "validation": items[4:5], "unlabeled": [{"image": "i5.png"}]}
    (tmp_path / "dl.json").write_text(json.dumps(datalist))
    data = read_training_data(tmp_path / "dl.json", labeled_ratio=0.25)
    # the 4 masked training items stay labeled (no ratio re-split), the unlabeled section is used
    assert (data["split"]["n_labeled"], data["split"]["n_unlabeled"], data["split"]["n_validation"]) == (4, 1, 1)
    fully_masked = {"training": items[:4], "validation": items[4:5]}
    (tmp_path / "full.json").write_text(json.dumps(fully_masked))
    ratio = read_training_data(tmp_path / "full.json", labeled_ratio=0.25)
    assert ratio["split"]["mode"] == "ratio" and ratio["split"]["n_labeled"] == 1
    assert split_name(DatasetSource(tmp_path / "full.json"), 0.25) == "ratio0.25"


def test_text_is_needed_only_where_it_is_read(tmp_path, png, pair):
    lab = _lab(tmp_path / "lab", png, pair, text=False)
    source = DatasetSource(lab / "reports.csv", {"image": "filename", "text": "report"}, lab / "images", lab / "masks")
    assert read_training_data(source)["split"]["n_unlabeled"] == 6  # the mean teacher reads no sentence
    with pytest.raises(DatasetError, match="no 'text' given; this run reads a description"):
        read_training_data(source, require_text=("training", "unlabeled"))


def test_evaluation_sets_need_masks_and_no_text(tmp_path, png, pair):
    # a folder pair: every image with a mask is evaluated
    _lab(tmp_path / "lab", png, pair, n=5, masked=(1, 2), text=False)
    pairs = read_evaluation_items(DatasetSource(tmp_path / "lab" / "images", mask_dir=tmp_path / "lab" / "masks"))
    assert [it["name"] for it in pairs] == ["case01.png", "case02.png"]
    # a datalist with a test section only, or a validation section only
    img, mask = pair(0)
    png(tmp_path / "a.png", img)
    png(tmp_path / "b.png", mask)
    (tmp_path / "test_only.json").write_text(json.dumps({"test": [{"image": "a.png", "label": "b.png"}]}))
    assert len(read_evaluation_items(tmp_path / "test_only.json", split="test")) == 1
    with pytest.raises(DatasetError, match=r"no 'validation' items \(sections with items: test\); .*--split test"):
        read_evaluation_items(tmp_path / "test_only.json", split="validation")
    (tmp_path / "val_only.json").write_text(json.dumps({"validation": [{"image": "a.png", "label": "b.png"}]}))
    assert len(read_evaluation_items(tmp_path / "val_only.json")) == 1
    (tmp_path / "no_mask.json").write_text(json.dumps({"validation": [{"image": "a.png"}]}))
    with pytest.raises(DatasetError, match="no 'label' .*validation images need masks"):
        read_evaluation_items(tmp_path / "no_mask.json")


def test_evaluating_validation_of_data_without_a_validation_set_uses_the_training_hold_out(make_lvit):
    root = make_lvit(n_train=10, n_val=0)
    held = read_training_data(root)["validation"]
    assert [it["name"] for it in read_evaluation_items(root)] == [it["name"] for it in held]


def test_nan_inf_and_constant_images_are_each_named(tmp_path, png, pair):
    lab = _lab(tmp_path / "lab", png, pair, n=4, masked=(0, 1))
    bad = np.ones((16, 16), np.float32)
    bad[2, 3] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "lab" / "images" / "nan.nii.gz"))
    bad[2, 3] = np.inf
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "lab" / "images" / "inf.nii.gz"))
    png(tmp_path / "lab" / "images" / "blank.png", np.full((16, 16), 7, np.uint8))
    with pytest.raises(DatasetError) as e:
        read_training_data(DatasetSource(lab / "images", mask_dir=lab / "masks"))
    message = str(e.value)
    assert "nan.nii.gz: image contains NaN or infinite values (1 of 256 values)" in message
    assert "inf.nii.gz: image contains NaN or infinite values" in message
    assert "blank.png: image is constant (every value 7)" in message


def test_a_long_problem_list_is_summarised_and_written_whole(tmp_path):
    items = [{"image": f"missing_{i}.png", "label": f"m{i}.png"} for i in range(500)]
    (tmp_path / "dl.json").write_text(json.dumps({"training": items}))
    with pytest.raises(DatasetError) as e:
        read_training_data(tmp_path / "dl.json")
    message = str(e.value)
    assert len(message.splitlines()) < 20
    assert "1000 problems" in message and "1000 x file does not exist" in message
    listed = e.value.problems_file
    assert listed and listed in message and len(open(listed).read().splitlines()) == 1000
