"""Synthetic demo dataset: determinism, LViT layout, text template, distractors, idempotence."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dussss_monai.data.demo import MANIFEST_NAME, describe, generate_demo_dataset, render_sample
from dussss_monai.data.lvit import read_lvit_dataset
from dussss_monai.errors import ConfigError, DuSSSError

_ZONES = r"(upper|middle|lower)( (upper|middle|lower))*"
TEMPLATE = re.compile(
    rf"^(Bilateral|Unilateral) pulmonary infection, (one infected area|(two|three|four|five|six) infected areas), "
    rf"{_ZONES} (left|right) lung( and {_ZONES} (left|right) lung)?\.$"
)
_WORD = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def test_describe_template():
    assert describe([("left", "lower"), ("right", "upper")]) == (
        "Bilateral pulmonary infection, two infected areas, lower left lung and upper right lung."
    )
    assert describe([("right", "lower"), ("right", "upper")]) == (
        "Unilateral pulmonary infection, two infected areas, upper lower right lung."
    )
    assert describe([("left", "middle")]) == "Unilateral pulmonary infection, one infected area, middle left lung."


def test_samples_text_mask_and_distractors():
    n_with_distractors = 0
    for i in range(30):
        s = render_sample(np.random.default_rng([5, i]), 96)
        assert s.image.dtype == np.uint8 and s.image.shape == (96, 96) and s.image.std() > 10
        assert set(np.unique(s.mask).tolist()) == {0, 255}
        assert TEMPLATE.match(s.text), s.text
        words = s.text.split(", ")
        assert _WORD[words[1].split()[0]] == len(s.infected)
        assert words[0].startswith("Bilateral") == (len({side for side, _ in s.infected}) == 2)
        assert not (s.distractor_mask & (s.mask > 0)).any()  # distractors are outside the mask
        if s.distractor_mask.any():
            n_with_distractors += 1
            # and similar in brightness to infections: both well above the surrounding lung
            assert s.image[s.distractor_mask].mean() > np.median(s.image) - 40
        # radiological convention: the patient's left lung is on the image's right half
        cols = np.nonzero(s.mask)[1]
        sides = {side for side, _ in s.infected}
        if sides == {"left"}:
            assert cols.mean() > 48
        if sides == {"right"}:
            assert cols.mean() < 48
    assert n_with_distractors >= 10


def test_generate_deterministic_readable_and_idempotent(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", n_train=6, n_val=2, n_test=2, image_size=64, seed=3)
    b = generate_demo_dataset(tmp_path / "b", n_train=6, n_val=2, n_test=2, image_size=64, seed=3)
    c = generate_demo_dataset(tmp_path / "c", n_train=6, n_val=2, n_test=2, image_size=64, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 20
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)

    d = read_lvit_dataset(a)
    assert [len(d[k]) for k in ("training", "validation", "test")] == [6, 2, 2]
    assert d == {
        k: [dict(it, image=it["image"].replace("/b/", "/a/"), label=it["label"].replace("/b/", "/a/")) for it in v]
        for k, v in read_lvit_dataset(b).items()
    }
    assert all(TEMPLATE.match(it["text"]) for v in d.values() for it in v)
    assert all(it["label"].endswith("mask_" + it["name"]) for it in d["training"])

    stamp = (a / "Train_Folder" / "img" / "covid_demo_train_0000.png").stat().st_mtime_ns
    assert generate_demo_dataset(a, n_train=6, n_val=2, n_test=2, image_size=64, seed=3) == a
    assert (a / "Train_Folder" / "img" / "covid_demo_train_0000.png").stat().st_mtime_ns == stamp  # skipped
    assert json.loads((a / MANIFEST_NAME).read_text())["params"]["seed"] == 3

    generate_demo_dataset(a, n_train=3, n_val=1, n_test=0, image_size=64, seed=3)  # other parameters: replaced
    d = read_lvit_dataset(a)
    assert [len(d[k]) for k in ("training", "validation", "test")] == [3, 1, 0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_refuses_foreign_folder_and_bad_params(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(DuSSSError, match="refusing to overwrite"):
        generate_demo_dataset(tmp_path / "mine", n_train=2, n_val=0, n_test=0, image_size=64)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"
    with pytest.raises(ConfigError):
        generate_demo_dataset(tmp_path / "x", n_train=0)
    with pytest.raises(ConfigError):
        generate_demo_dataset(tmp_path / "x", image_size=8)
