"""Datalist JSON/CSV loading, the labeled/unlabeled split by ratio, prepare_datalist and its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dussss_monai.data.checks import check_dataset
from dussss_monai.data.datalist import load_datalist
from dussss_monai.data.splits import (
    holdout_validation,
    main,
    prepare_datalist,
    split_filename,
    split_labeled,
)
from dussss_monai.errors import ConfigError, DatasetError


def _pairs(root, png, n=4):
    """``n`` image/mask pairs in root/files (im<i>.png, ma<i>.png) for datalist files to point at."""
    for i in range(n):
        img = np.full((16, 16), 30 + i, np.uint8)
        img[0, :] = 200  # not constant: a constant image is refused as a failed export
        mask = np.zeros((16, 16), np.uint8)
        mask[i : i + 4, 3:7] = 255
        png(root / "files" / f"im{i}.png", img)
        png(root / "files" / f"ma{i}.png", mask)


def test_json_datalist_relative_paths(tmp_path, png):
    _pairs(tmp_path, png)
    dl = {
        "name": "mine",
        "training": [{"image": f"files/im{i}.png", "label": f"files/ma{i}.png", "text": f" t{i} "} for i in range(3)],
        "validation": [{"image": "files/im3.png", "label": "files/ma3.png", "text": "v"}],
    }
    p = tmp_path / "dl.json"
    p.write_text(json.dumps(dl))
    d = load_datalist(p)
    assert len(d["training"]) == 3 and len(d["validation"]) == 1 and d["test"] == []
    it = d["training"][0]
    assert it["image"] == str(tmp_path / "files" / "im0.png") and it["text"] == "t0" and it["name"] == "im0.png"


def test_csv_datalist(tmp_path, png):
    _pairs(tmp_path, png)
    p = tmp_path / "dl.csv"
    p.write_text(
        "image,label,text,split\n"
        + "".join(
            f"files/im{i}.png,files/ma{i}.png,text {i},{s}\n"
            for i, s in enumerate(["training", "train", "val", "test"])
        )
    )
    d = load_datalist(p)
    assert [len(d[k]) for k in ("training", "validation", "test")] == [2, 1, 1]
    assert d["test"][0]["label"] == str(tmp_path / "files" / "ma3.png")


def test_non_utf8_csv_names_file_offset_and_line(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes(b"image,label,text,split\na.png,b.png," + "opacité\n".encode("latin-1"))
    with pytest.raises(DatasetError) as e:
        load_datalist(p)
    msg = str(e.value)
    assert "latin1.csv: not valid UTF-8" in msg and "byte offset 41 (line 2)" in msg


def test_bad_json_and_item_problems_all_at_once(tmp_path, png):
    _pairs(tmp_path, png, n=2)
    bad = tmp_path / "broken.json"
    bad.write_text('{"training": [')
    with pytest.raises(DatasetError, match=r"broken.json: not valid JSON: .* line 1"):
        load_datalist(bad)
    p = tmp_path / "items.json"
    p.write_text(
        json.dumps(
            {
                "training": [
                    {"image": "files/im0.png", "label": "files/ma0.png"},  # no text
                    {"image": "files/im1.png", "label": "files/ma1.png", "text": 3},  # not text
                    {"image": "files/missing.png", "label": "files/ma1.png", "text": "x"},  # missing file
                    {"image": "files/im0.png", "label": "files/ma0.png", "text": "again"},  # listed twice
                    "just a string",
                ]
            }
        )
    )
    with pytest.raises(DatasetError) as e:
        load_datalist(p, require_text=True)
    text = "\n".join(e.value.problems)
    assert "training[0] (" in text and "no 'text' given" in text
    assert "'text' is not text (int 3)" in text
    assert "missing.png: file does not exist" in text
    assert "im0.png: listed twice (training[0] and training[3])" in text
    assert "training[4]: an item must be an object" in text
    assert all("items.json" in q or "missing.png" in q or "im0.png" in q for q in e.value.problems)


def test_duplicate_names_from_different_folders(tmp_path, png):
    _pairs(tmp_path, png, n=1)
    png(tmp_path / "other" / "im0.png", np.eye(16, dtype=np.uint8))
    dl = {
        "training": [
            {"image": str(tmp_path / "files" / "im0.png"), "label": str(tmp_path / "files" / "ma0.png"), "text": "a"},
            {"image": str(tmp_path / "other" / "im0.png"), "label": str(tmp_path / "files" / "ma0.png"), "text": "b"},
        ]
    }
    with pytest.raises(DatasetError, match="duplicate name 'im0.png'"):
        check_dataset(dl)
    dl["training"][1]["name"] = "other_im0.png"  # an explicit unique name resolves it
    check_dataset(dl)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_ratio_outside_range(ratio):
    items = [{"image": f"{i}.png", "name": f"{i}.png"} for i in range(4)]
    with pytest.raises(ConfigError, match="labeled_ratio"):
        split_labeled(items, ratio, 0)


def test_split_no_labeled_image_possible():
    with pytest.raises(DatasetError, match="training list is empty"):
        split_labeled([], 0.25, 0)


def test_training_items_without_masks_are_unlabeled_not_errors(tmp_path, png):
    _pairs(tmp_path, png, n=4)
    p = tmp_path / "dl.csv"
    p.write_text(
        "image,label,text\n"
        + "".join(f"files/im{i}.png,{f'files/ma{i}.png' if i < 3 else ''},t{i}\n" for i in range(4))
    )
    d = load_datalist(p)
    assert "label" not in d["training"][3] and d["training"][0]["label"].endswith("ma0.png")


def test_split_deterministic_disjoint_and_sized():
    items = [{"image": f"/d/{i:02d}.png", "name": f"{i:02d}.png"} for i in range(10)]
    lab, unl = split_labeled(items, 0.25, 3)
    assert len(lab) == 3 and len(unl) == 7  # round half up: 2.5 -> 3
    assert {it["name"] for it in lab}.isdisjoint({it["name"] for it in unl})
    assert {it["name"] for it in lab + unl} == {it["name"] for it in items}
    assert split_labeled(list(reversed(items)), 0.25, 3) == (lab, unl)  # input order does not matter
    other = [split_labeled(items, 0.25, s)[0] for s in range(6)]
    assert len({tuple(it["name"] for it in o) for o in other}) > 1  # the seed matters
    assert len(split_labeled(items, 0.01, 0)[0]) == 1  # at least one labeled
    assert split_labeled(items, 1.0, 0)[1] == []


def test_holdout_validation():
    items = [{"image": f"/d/{i}.png", "name": f"{i}.png"} for i in range(10)]
    tr, va = holdout_validation(items, 0.2)
    assert len(tr) == 8 and len(va) == 2 and holdout_validation(items[::-1], 0.2) == (tr, va)
    with pytest.raises(DatasetError, match="cannot hold out"):
        holdout_validation(items[:1], 0.2)
    with pytest.raises(ConfigError):
        holdout_validation(items, 1.0)


def test_prepare_datalist_lvit_writes_files(make_lvit, tmp_path):
    root = make_lvit(n_train=8)  # no Val_Folder: 20 % held out
    out = tmp_path / "out"
    r = prepare_datalist(root, out, labeled_ratio=0.5, seed=1)
    assert len(r["training"]) == 6 and len(r["validation"]) == 2 and r["test"] == []
    assert len(r["labeled"]) == 3 and len(r["unlabeled"]) == 3
    saved = json.loads((out / "datalist.json").read_text())
    assert saved == {"training": r["training"], "validation": r["validation"], "test": []}
    split = json.loads((out / split_filename(0.5, 1)).read_text())
    assert (out / "split_ratio0.5_seed1.json").is_file()
    assert split["labeled"] == r["labeled"] and split["unlabeled"] == r["unlabeled"]
    assert (
        split["labeled_ratio"] == 0.5 and split["seed"] == 1 and split["source"]["dataset_dir"] == str(root.resolve())
    )
    assert split["mode"] == "ratio" and split["n_unlabeled"] == 3
    # another seed: same validation set, same datalist.json
    r2 = prepare_datalist(root, out, labeled_ratio=0.5, seed=2)
    assert r2["validation"] == r["validation"]


def test_prepare_datalist_from_json_file(tmp_path, png):
    _pairs(tmp_path, png)
    p = tmp_path / "dl.json"
    p.write_text(
        json.dumps(
            {
                "training": [{"image": f"files/im{i}.png", "label": f"files/ma{i}.png", "text": "x"} for i in range(3)],
                "validation": [{"image": "files/im3.png", "label": "files/ma3.png", "text": "y"}],
            }
        )
    )
    r = prepare_datalist(str(p), str(tmp_path / "o"), 0.25, 0)
    assert len(r["training"]) == 3 and len(r["validation"]) == 1 and len(r["labeled"]) == 1


def test_failing_prepare_leaves_no_partial_output(make_lvit, tmp_path, png):
    root = make_lvit(n_train=3)
    png(
        root / "Train_Folder" / "labelcol" / "mask_train_1.png",
        np.full((16, 16), 9, np.uint8) * np.eye(16, dtype=np.uint8) + 3,
    )
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="not binary"):
        prepare_datalist(root, out, 0.25, 0)
    assert not (out / "datalist.json").exists()
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(ConfigError):
        prepare_datalist(root, out, 1.5, 0)
    assert not out.exists() or not any(out.iterdir())


def test_cli_main_success_and_failure(make_lvit, tmp_path, capsys):
    root = make_lvit(n_train=4, n_val=1)
    assert (
        main(["--dataset_dir", str(root), "--output_dir", str(tmp_path / "o"), "--labeled_ratio", "0.5", "--seed", "0"])
        == 0
    )
    assert "2 labeled, 2 unlabeled, 1 validation, 0 test (ratio mode)" in capsys.readouterr().out
    (root / "Train_Folder" / "img" / "train_0.png").unlink()
    assert main(["--dataset_dir", str(root), "--output_dir", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "mask_train_0.png: mask without image" in err and "Traceback" not in err


def test_cli_subprocess_exit_code(tmp_path, repo_root):
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dussss_monai.data.datalist",
            "--dataset_dir",
            str(tmp_path / "none"),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_odd_paths_are_reported_not_crashing(tmp_path):
    p = tmp_path / "odd.json"
    p.write_text(
        json.dumps(
            {
                "training": [
                    {"image": "\x00bad.png", "label": ".", "text": "x"},
                    {"image": "/dev/null", "label": "dir/", "text": "y"},
                    {"image": "im.PNG"},
                ],
                "test": 5,
            }
        )
    )
    with pytest.raises(DatasetError) as e:
        load_datalist(p, require_text=True)
    text = "\n".join(e.value.problems)
    assert "invalid file path (contains a NUL byte" in text
    assert "'test' must be a list of items, got int" in text
    assert "/dev/null: no file extension, so unsupported file type" in text
    assert "no 'text' given" in text
