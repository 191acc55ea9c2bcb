"""LViT folder reader: real MoNuSeg, QaTa naming, and every pairing / text / file problem at once."""

from __future__ import annotations

import numpy as np
import pytest

from dussss_monai.data.lvit import read_lvit_dataset, read_text_table
from dussss_monai.errors import DatasetError


def _problems(root) -> list[str]:
    with pytest.raises(DatasetError) as e:
        read_lvit_dataset(root)
    return e.value.problems


def test_real_monuseg(monuseg_dir):
    d = read_lvit_dataset(monuseg_dir)
    assert len(d["training"]) == 24 and len(d["validation"]) == 6 and d["test"] == []
    by_name = {it["name"]: it for it in d["training"] + d["validation"]}
    assert by_name["TCGA-21-5786-01Z-00-DX1.png"]["text"] == "The nuclei density in the upper right is high."
    assert by_name["TCGA-18-5592-01Z-00-DX1.png"]["text"] == "The nuclei density in the left is high."
    assert by_name["TCGA-18-5592-01Z-00-DX1.png"] in d["validation"]
    for it in d["training"]:
        assert it["image"].endswith("/img/" + it["name"]) and it["label"].endswith("/labelcol/" + it["name"])


def test_qata_layout_reads(make_lvit):
    root = make_lvit(n_train=3, n_val=2)
    d = read_lvit_dataset(root)
    assert [it["name"] for it in d["training"]] == ["train_0.png", "train_1.png", "train_2.png"]
    assert len(d["validation"]) == 2 and d["test"] == []
    it = d["training"][1]
    assert it["label"].endswith("labelcol/mask_train_1.png") and it["text"] == "Text number 1 of Train."


def test_text_matched_by_image_name_without_extension_and_tif_images(make_lvit, png):
    root = make_lvit(n_train=2, texts=[("train_0", " first "), ("train_1.png", "second")])
    img = root / "Train_Folder" / "img" / "train_1.png"
    tif = img.with_suffix(".tif")
    png(tif, np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(img)))
    img.unlink()
    d = read_lvit_dataset(root)
    assert [(it["name"], it["text"]) for it in d["training"]] == [("train_0.png", "first"), ("train_1.tif", "second")]


def test_csv_text_file(make_lvit):
    root = make_lvit(n_train=2)
    (root / "Train_Folder" / "Train_text.xlsx").unlink()
    (root / "Train_Folder" / "Train_text.csv").write_text(
        'Image,Description\nmask_train_0.png,a\nmask_train_1.png,"b, c"\n'
    )
    assert [it["text"] for it in read_lvit_dataset(root)["training"]] == ["a", "b, c"]


def test_pairing_and_text_problems_all_reported_at_once(make_lvit, png):
    root = make_lvit(n_train=4)
    tr = root / "Train_Folder"
    (tr / "labelcol" / "mask_train_0.png").unlink()  # a training image without mask: unlabeled, not a problem
    (tr / "img" / "train_1.png").unlink()  # mask without image (and its text row points nowhere)
    img, mask = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    png(tr / "img" / "extra.png", img)
    png(tr / "labelcol" / "mask_extra.png", mask)  # image without a text row
    png(tr / "img" / "train_2.tif", img)  # duplicate name train_2 (.png and .tif)
    problems = _problems(root)
    text = "\n".join(problems)
    assert not any("train_0.png" in p for p in problems), text
    assert any("mask_train_1.png: mask without image" in p for p in problems), text
    assert any("extra.png: image without a text row" in p for p in problems), text
    assert any("text row for a missing image 'mask_train_1.png'" in p and "Train_text.xlsx" in p for p in problems), (
        text
    )
    assert any("duplicate name 'train_2'" in p and "train_2.png" in p and "train_2.tif" in p for p in problems), text


def test_duplicate_text_rows(make_lvit):
    root = make_lvit(n_train=2, texts=[("mask_train_0.png", "a"), ("mask_train_1.png", "b"), ("mask_train_1.png", "c")])
    problems = _problems(root)
    assert any("Train_text.xlsx: duplicate text rows for 'mask_train_1.png' (rows 3, 4)" in p for p in problems), (
        problems
    )


def test_empty_and_numeric_text_cells(make_lvit):
    root = make_lvit(
        n_train=3, texts=[("mask_train_0.png", "fine"), ("mask_train_1.png", "   "), ("mask_train_2.png", 42)]
    )
    problems = _problems(root)
    assert any("Train_text.xlsx: row 3 (image 'mask_train_1.png'): empty Description cell" in p for p in problems), (
        problems
    )
    assert any("row 4 (image 'mask_train_2.png'): Description is not text (number 42)" in p for p in problems), problems


def test_file_problems_size_mismatch_non_binary_corrupt_empty(make_lvit, png):
    root = make_lvit(n_train=4)
    tr = root / "Train_Folder"
    png(tr / "labelcol" / "mask_train_0.png", np.zeros((20, 16), np.uint8))  # size mismatch
    m = np.zeros((16, 16), np.uint8)
    m[0, :3] = [0, 7, 255]
    png(tr / "labelcol" / "mask_train_1.png", m)  # not binary
    (tr / "img" / "train_2.png").write_bytes(b"garbage" * 10)  # corrupt
    (tr / "labelcol" / "mask_train_3.png").write_bytes(b"")  # empty
    problems = _problems(root)
    text = "\n".join(problems)
    assert any(
        "mask_train_0.png: mask size 16x20 differs from its image" in p and "train_0.png" in p for p in problems
    ), text
    assert any("mask_train_1.png: mask is not binary" in p for p in problems), text
    assert any("train_2.png: unreadable" in p for p in problems), text
    assert any("mask_train_3.png: file is empty (0 bytes)" in p for p in problems), text
    assert len(problems) == 4, text


def test_missing_train_folder_and_columns(tmp_path, make_lvit, xlsx):
    with pytest.raises(DatasetError, match="not an LViT dataset folder"):
        read_lvit_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_lvit_dataset(tmp_path / "nope")
    root = make_lvit(n_train=1)
    xlsx(root / "Train_Folder" / "Train_text.xlsx", [("mask_train_0.png", "x")], header=("File", "Caption"))
    problems = _problems(root)
    assert any("Train_text.xlsx: missing column(s) Image and Description" in p for p in problems), problems


def test_unreadable_spreadsheet(make_lvit):
    root = make_lvit(n_train=1)
    (root / "Train_Folder" / "Train_text.xlsx").write_bytes(b"PK\x03\x04 broken zip")
    problems = _problems(root)
    assert any("Train_text.xlsx: unreadable spreadsheet" in p for p in problems), problems


def test_read_text_table_non_utf8_csv(tmp_path):
    p = tmp_path / "Train_text.csv"
    p.write_bytes(b"Image,Description\nmask_a.png,caf" + b"\xe9 lung\n")
    with pytest.raises(DatasetError) as e:
        read_text_table(p)
    assert "Train_text.csv: not valid UTF-8" in str(e.value) and "byte offset 32 (line 2)" in str(e.value)
