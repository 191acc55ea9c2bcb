"""MaskWriter and the inference inputs: masks named after the inputs, at their original sizes, PNG/NIfTI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from dussss_monai.data.inference_io import RecordOriginald, inference_transforms, list_images
from dussss_monai.errors import ConfigError, DatasetError, DuSSSError
from dussss_monai.handlers.mask_writer import MaskWriter, resize_mask


class LeftHalf(torch.nn.Module):
    """Logits +4 on the left half of the input, -4 on the right half."""

    def forward(self, x):
        out = torch.full((x.shape[0], 1, *x.shape[-2:]), -4.0)
        out[..., : x.shape[-1] // 2] = 4.0
        return out + 0 * x.sum()


def _png(path, h, w, rgb=False):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _nifti(path, shape=(30, 20, 1), affine=None):
    affine = np.diag([0.7, 0.8, 2.5, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.random.default_rng(1).normal(size=shape).astype(np.float32), affine), str(path))
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _png(d / "a.png", 30, 40)
    _png(d / "b.tif", 64, 50, rgb=True)
    _nifti(d / "c.nii.gz")  # data (i=30, j=20): read as H=20 rows, W=30 columns
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.png").write_bytes(b"")
    return d


def test_list_images_folder_file_and_errors(folder, tmp_path):
    items = list_images(folder)
    assert [i["name"] for i in items] == ["a.png", "b.tif", "c.nii.gz"]
    assert all(i["image"].startswith("/") for i in items)
    assert list_images(folder / "a.png") == [{"image": str((folder / "a.png").resolve()), "name": "a.png"}]
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        list_images(tmp_path / "empty")
    with pytest.raises(DatasetError, match="unsupported input"):
        list_images(folder / "notes.txt")


def test_list_images_datalist(folder, tmp_path):
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"test": [{"image": "in/a.png", "text": "t"}], "training": []}))
    items = list_images(dl)
    assert items == [{"image": str((folder / "a.png").resolve()), "name": "a.png"}]  # inference reads no text
    with pytest.raises(DatasetError, match="'validation' is empty"):
        list_images(dl, split="validation")
    with pytest.raises(ConfigError):
        list_images(dl, split="train")


def test_record_originald(folder):
    d = RecordOriginald()({"image": str(folder / "c.nii.gz")})
    assert d["orig_size"].tolist() == [20, 30] and d["image_path"].endswith("c.nii.gz")
    with pytest.raises(ConfigError, match="before the image is loaded"):
        RecordOriginald()({"image": torch.zeros(1, 4, 4)})


def test_resize_mask_nearest():
    m = np.zeros((4, 4), bool)
    m[:, :2] = True
    big = resize_mask(m, (8, 6))
    assert big.shape == (8, 6) and big[:, :3].all() and not big[:, 3:].any()


def test_inference_end_to_end_with_evaluator(folder, tmp_path):
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Activationsd

    items = list_images(folder)
    ds = Dataset(items, transform=inference_transforms(image_size=32, channels=1))
    out = tmp_path / "masks"
    writer = MaskWriter(out)
    ev = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(ds, batch_size=2),
        network=LeftHalf(),
        postprocessing=Activationsd("pred", sigmoid=True),
        val_handlers=[writer],
    )
    ev.run()
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "b_mask.png", "c_mask.nii.gz"]
    a = np.asarray(Image.open(out / "a_mask.png"))
    assert a.shape == (30, 40) and a.dtype == np.uint8 and set(np.unique(a)) == {0, 255}
    assert (a[:, :20] == 255).all() and (a[:, 20:] == 0).all()
    b = np.asarray(Image.open(out / "b_mask.png"))
    assert b.shape == (64, 50) and (b[:, :25] == 255).all() and (b[:, 25:] == 0).all()
    c = nib.load(str(out / "c_mask.nii.gz"))
    ref = nib.load(str(folder / "c.nii.gz"))
    assert c.shape == ref.shape == (30, 20, 1)
    np.testing.assert_allclose(c.affine, ref.affine)
    data = np.asarray(c.dataobj)[..., 0]
    # the image's columns are the NIfTI's first axis: left half of the image = i < 15
    assert set(np.unique(data)) == {0, 1} and (data[:15] == 1).all() and (data[15:] == 0).all()


def test_forced_formats_and_name_collisions(tmp_path, folder):
    writer = MaskWriter(tmp_path / "o", output_format="nifti")
    writer._started()
    pred = torch.zeros(1, 8, 8)
    pred[..., :4] = 1.0
    p1 = writer.write_item({"pred": pred, "image_path": str(folder / "a.png"), "orig_size": torch.tensor([30, 40])})
    p2 = writer.write_item({"pred": pred, "image_path": "/elsewhere/a.png", "orig_size": torch.tensor([30, 40])})
    assert (p1.name, p2.name) == ("a_mask.nii.gz", "a_1_mask.nii.gz")
    from dussss_monai.data.image_io import read_mask_2d

    back = read_mask_2d(p1)[0]  # NIfTI written for a PNG input reads back in the image's orientation
    assert back.shape == (30, 40) and back[:, :20].all() and not back[:, 20:].any()
    png = MaskWriter(tmp_path / "p", output_format="png")
    png._started()
    assert (
        png.write_item({"pred": pred, "image_path": str(folder / "c.nii.gz"), "orig_size": [20, 30]}).name
        == "c_mask.png"
    )


def test_errors(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(DuSSSError, match="file.txt"):
        MaskWriter(blocker / "masks")._started()
    with pytest.raises(ConfigError):
        MaskWriter(tmp_path, output_format="jpeg")
    w = MaskWriter(tmp_path / "m")
    with pytest.raises(ConfigError, match="RecordOriginald"):
        w.write_item({"pred": torch.zeros(1, 4, 4)})
    with pytest.raises(ConfigError, match="logits"):
        w.write_item({"pred": torch.full((1, 4, 4), 3.0), "image_path": "x.png", "orig_size": [4, 4]})


def test_a_volume_mask_keeps_the_input_header_and_refuses_another_grid(tmp_path):
    volume = _nifti(tmp_path / "ct.nii.gz", shape=(12, 10, 6, 1), affine=np.diag([-0.7, -0.8, 2.5, 1.0]))
    size = RecordOriginald("image")({"image": str(volume)})["orig_size"]
    assert size.tolist() == [12, 10, 6, 1]  # the stored shape, singleton dimension included
    writer = MaskWriter(tmp_path / "out")
    pred = torch.zeros(1, 12, 10, 6)
    pred[0, 8:, :3, 4] = 0.9  # probabilities on the input's grid, in its array order
    path = writer.write_item({"pred": pred, "image_path": str(volume), "orig_size": size})
    written = nib.load(str(path))
    assert path.name == "ct_mask.nii.gz" and written.shape == (12, 10, 6, 1)
    assert np.allclose(written.affine, nib.load(str(volume)).affine)
    assert np.array_equal(np.asarray(written.dataobj)[..., 0], (pred[0] >= 0.5).numpy().astype(np.uint8))
    with pytest.raises(ConfigError, match="is not the volume's"):
        writer.write_item({"pred": torch.zeros(1, 10, 12, 6), "image_path": str(volume), "orig_size": size})
