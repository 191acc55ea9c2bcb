"""Image and mask reading: scaling, channels, NIfTI, and every file-level error."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from dussss_monai.data.image_io import read_image_2d, read_image_info, read_mask_2d
from dussss_monai.errors import ConfigError, DatasetError


def _error(fn, *args, **kw) -> str:
    with pytest.raises(DatasetError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_uint8_grey_and_rgb_scaling_and_channels(tmp_path, png):
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    rgb = np.stack([grey, np.zeros_like(grey), np.full_like(grey, 255)], -1)
    g, c = png(tmp_path / "g.png", grey), png(tmp_path / "c.png", rgb)

    x = read_image_2d(g)
    assert x.shape == (1, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], grey[0] / 255.0, atol=1e-6)
    assert read_image_2d(g, channels=3).shape == (3, 16, 16)
    np.testing.assert_array_equal(read_image_2d(g, channels=3)[2], x[0])

    y = read_image_2d(c)
    assert y.shape == (3, 16, 16)
    np.testing.assert_allclose(y[2], 1.0)
    lum = read_image_2d(c, channels=1)
    np.testing.assert_allclose(lum[0], 0.299 * grey / 255.0 + 0.114, atol=1e-5)


def test_16bit_image_loads_scaled_by_dtype_range(tmp_path, png):
    a = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    p = png(tmp_path / "i16.png", a)
    assert Image.open(p).mode.startswith("I")  # really stored as 16-bit
    x = read_image_2d(p)
    assert x.dtype == np.float32 and x.shape == (1, 32, 32)
    np.testing.assert_allclose(x[0], a / 65535.0, atol=1e-6)
    assert read_image_info(p).dtype == "uint16"
    # per-image min-max on request: a 12-bit image stored in 16 bits fills [0, 1]
    b = (a // 16).astype(np.uint16)
    q = png(tmp_path / "i12.png", b)
    assert read_image_2d(q).max() < 0.07
    assert read_image_2d(q, scaling="minmax").max() == pytest.approx(1.0)


def test_float_nifti_minmax_and_window_and_orientation(tmp_path):
    data = np.zeros((20, 12, 1), np.float32)  # x=20 columns, y=12 rows, singleton z
    data[:, :, 0] = np.linspace(-1000, 2000, 20)[:, None]
    p = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    x = read_image_2d(p)
    assert x.shape == (1, 12, 20)
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)
    np.testing.assert_allclose(x[0, 0], np.linspace(0, 1, 20), atol=1e-6)  # x runs along columns
    w = read_image_2d(p, window=(-1000, 1000))
    assert w[0, 0, -1] == 1.0 and w[0, 0, 0] == 0.0
    assert read_image_info(p).height == 12 and read_image_info(p).width == 20


def test_nifti_volume_is_refused(tmp_path):
    p = tmp_path / "vol.nii"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.float32), np.eye(4)), p)
    msg = _error(read_image_2d, p)
    assert "vol.nii" in msg and "not a 2D slice" in msg


def test_nifti_mask(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 3:9] = 1
    p = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(m, np.eye(4)), p)
    y = read_mask_2d(p)
    assert y.shape == (1, 16, 16) and y.sum() == 18
    np.testing.assert_array_equal(y[0], m.T)


@pytest.mark.parametrize("fg", [1, 255])
def test_binary_masks_01_and_0255(tmp_path, png, fg):
    m = np.zeros((16, 16), np.uint8)
    m[4:8, 4:8] = fg
    y = read_mask_2d(png(tmp_path / "m.png", m))
    assert y.shape == (1, 16, 16) and y.dtype == np.float32
    assert set(np.unique(y).tolist()) == {0.0, 1.0} and y.sum() == 16


def test_non_binary_mask_is_refused(tmp_path, png):
    m = np.zeros((16, 16), np.uint8)
    m[2, 2], m[3, 3] = 128, 255
    msg = _error(read_mask_2d, png(tmp_path / "gray_mask.png", m))
    assert "gray_mask.png" in msg and "not binary" in msg and "3 distinct values" in msg


def test_three_channel_mask(tmp_path, png):
    m = np.zeros((16, 16, 3), np.uint8)
    m[4:8, 4:8] = 255
    assert read_mask_2d(png(tmp_path / "same.png", m)).sum() == 16  # identical channels: accepted
    m[0, 0, 1] = 255
    msg = _error(read_mask_2d, png(tmp_path / "colour.png", m))
    assert "colour.png" in msg and "3 colour channels that differ" in msg


def test_corrupt_empty_missing_unsupported(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really" + bytes(range(256)))
    assert "corrupt.png" in (m := _error(read_image_2d, bad)) and "unreadable" in m
    empty = tmp_path / "empty.png"
    empty.touch()
    assert "empty.png: file is empty (0 bytes)" in _error(read_mask_2d, empty)
    assert "does not exist" in _error(read_image_2d, tmp_path / "nothere.png")
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    assert "unsupported file type '.txt'" in _error(read_image_2d, txt)


def test_truncated_png_is_unreadable(tmp_path, png):
    p = png(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    t = tmp_path / "truncated.png"
    t.write_bytes(p.read_bytes()[:300])
    assert "truncated.png" in (m := _error(read_image_2d, t)) and "corrupt or truncated" in m
    assert "truncated.png" in _error(read_image_info, t)


def test_too_small_image(tmp_path, png):
    p = png(tmp_path / "dot.png", np.zeros((1, 1), np.uint8))
    msg = _error(read_image_2d, p)
    assert "dot.png" in msg and "too small (1x1 pixels" in msg
    assert "too small" in _error(read_mask_2d, p)


def test_huge_image_fails_fast_from_header(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("1", (10000, 10000)).save(p)  # 1-bit: a few kB on disk, 100 megapixels in its header
    assert p.stat().st_size < 100_000
    t = time.perf_counter()
    for fn in (read_image_2d, read_mask_2d, read_image_info):
        msg = _error(fn, p)
        assert "huge.png" in msg and "too large (10000x10000 pixels" in msg
    assert time.perf_counter() - t < 1.0


def test_bad_arguments():
    with pytest.raises(ConfigError):
        read_image_2d("x.png", channels=2)
    with pytest.raises(ConfigError):
        read_image_2d("x.png", window=(5, 1))
