"""Property tests: arbitrary datalist files and spreadsheets load or raise DatasetError, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dussss_monai.data.datalist import load_datalist
from dussss_monai.data.lvit import read_lvit_dataset
from dussss_monai.errors import DatasetError

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

odd_paths = st.sampled_from(
    [
        "im.png",
        "ma.png",
        "",
        " ",
        "../../etc/passwd",
        "/dev/null",
        ".",
        "nope.png",
        "im.PNG",
        "dir/",
        "x.nii.gz",
        "\x00bad",
        "ma.png\n",
        "im.tif",
        "C:\\win\\path.png",
    ]
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=12), odd_paths
)
values = st.recursive(
    scalars,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
    max_leaves=6,
)
items = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "image": st.one_of(odd_paths, values),
            "label": st.one_of(odd_paths, values),
            "text": st.one_of(st.text(max_size=20), values),
            "name": st.one_of(st.text(max_size=8), values),
        },
    ),
    values,
)
datalists = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "training": st.one_of(st.lists(items, max_size=4), values),
            "validation": st.one_of(st.lists(items, max_size=3), values),
            "test": st.lists(items, max_size=2),
            "extra": values,
        },
    ),
    values,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prop")
    img = np.zeros((16, 16), np.uint8)
    img[3:9, 3:9] = 200
    Image.fromarray(img).save(root / "im.png")
    Image.fromarray(np.where(img > 0, 255, 0).astype(np.uint8)).save(root / "ma.png")
    return root


def _loads_or_dataset_error(path: Path) -> None:
    try:
        d = load_datalist(path)
    except DatasetError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        return
    assert set(d) == {"training", "validation", "test", "unlabeled"}
    assert all(isinstance(it["image"], str) and isinstance(it.get("text", ""), str) for v in d.values() for it in v)


@SETTINGS
@given(dl=datalists)
def test_random_json_datalists(base, dl):
    p = base / "dl.json"
    try:
        p.write_text(json.dumps(dl, allow_nan=True))
    except (TypeError, ValueError):
        return
    _loads_or_dataset_error(p)


csv_cells = st.one_of(odd_paths, st.text(max_size=10), st.sampled_from(["training", "val", "test", "banana", ""]))


@SETTINGS
@given(
    header=st.lists(st.sampled_from(["image", "label", "text", "split", "name", "other", ""]), max_size=5),
    rows=st.lists(st.lists(csv_cells, max_size=6), max_size=5),
    raw=st.binary(max_size=30),
)
def test_random_csv_datalists(base, header, rows, raw):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    p = base / "dl.csv"
    try:
        p.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass") + raw)
    except UnicodeEncodeError:
        return
    _loads_or_dataset_error(p)


cells = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.sampled_from(["mask_a.png", "a.png", "a", "mask_b.png", "Image", "Description", " ", ""]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=15),
)


@SETTINGS
@given(
    rows=st.lists(st.lists(cells, min_size=0, max_size=3), max_size=5),
    header=st.sampled_from(
        [("Image", "Description"), ("image", "text"), ("Description",), (), ("Image", "Description", "x")]
    ),
)
def test_random_spreadsheets(tmp_path_factory, rows, header):
    root = tmp_path_factory.mktemp("lvit")
    tr = root / "Train_Folder"
    (tr / "img").mkdir(parents=True)
    (tr / "labelcol").mkdir()
    img = np.full((16, 16), 50, np.uint8)
    Image.fromarray(img).save(tr / "img" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tr / "labelcol" / "mask_a.png")
    wb = openpyxl.Workbook()
    ws = wb.active
    if header:
        ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    wb.save(tr / "Train_text.xlsx")
    try:
        d = read_lvit_dataset(root)
    except DatasetError as e:
        assert e.problems
        return
    assert len(d["training"]) == 1 and isinstance(d["training"][0]["text"], str) and d["training"][0]["text"]
