"""CT volumes end to end through the BM-Seg bundle's configs: slices drawn for training, whole volumes segmented
slice by slice, the mask written on the input's own grid with its header, 3D and per-slice Dice.

The phantoms (``tests/volume_phantoms.py``) hold an L-shaped lesion at a known place in patient coordinates, stored
either in LPS order or with permuted and flipped axes and other voxel sizes (ASR), so that a flip or a transpose
anywhere between the file and the written mask is caught.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from volume_phantoms import write_pair

from bundle_cli import run_bundle_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "bundles" / "dussss_bmseg" / "configs"
#: a network that marks the voxels at or above 0.5 after scaling: logit = 20 x - 10 (a 1 x 1 convolution)
THRESHOLD_NET = '{"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 1}'

pytestmark = pytest.mark.slow


def _assert_same_grid(mask_path: Path, image_path: Path) -> np.ndarray:
    """The written mask has the input's array shape, affine, qform/sform codes and voxel size; returns its voxels."""
    image, mask = nib.load(str(image_path)), nib.load(str(mask_path))
    assert mask.shape == image.shape
    assert np.allclose(mask.affine, image.affine)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(image.affine)
    assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (1, 1)
    assert mask.header.get_zooms() == image.header.get_zooms()
    data = np.asarray(mask.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data).tolist()) <= {0, 1}
    return data


def test_a_volume_is_segmented_on_its_own_grid_whatever_its_axes(tmp_path):
    """A fixed threshold network: the written mask must equal the stored lesion voxel for voxel, for an LPS volume
    and for the same patient stored with permuted, flipped axes and other voxel sizes."""
    inputs = tmp_path / "in"
    pairs = {layout: write_pair(inputs, f"ct_{layout}", layout) for layout in ("LPS", "ASR")}
    for layout in pairs:  # only the images are segmented
        (inputs / "masks" / f"ct_{layout}.nii.gz").rename(tmp_path / f"truth_{layout}.nii.gz")
    model = tmp_path / "model.pt"
    torch.save({"weight": torch.full((1, 1, 1, 1), 20.0), "bias": torch.tensor([-10.0])}, model)
    out = tmp_path / "masks"
    overrides = {
        "input_dir": str(inputs / "images"),
        "checkpoint": str(model),
        "output_dir": str(out),
        "network_def": THRESHOLD_NET,
        "patch_size": "16",  # native resolution, windows of 16: the threshold is exact at every voxel
        "intensity_window": "[0, 1000]",
        "num_workers": "0",
    }
    res = run_bundle_cli(None, CONFIGS / "inference.json", overrides, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["ct_ASR_mask.nii.gz", "ct_LPS_mask.nii.gz"]
    for layout, (image, _) in pairs.items():
        written = _assert_same_grid(out / f"ct_{layout}_mask.nii.gz", image)
        truth = np.asarray(nib.load(str(tmp_path / f"truth_{layout}.nii.gz")).dataobj)
        assert np.array_equal(written, truth), layout


def test_volumes_train_evaluate_and_segment_with_the_bundle_commands(tmp_path):
    """A few steps of supervised training on slices of six volumes (two stored ASR), then evaluation per volume and
    per slice, and inference of a volume the network never saw, resized to the network's size and back."""
    data = tmp_path / "data"
    items = []
    for i in range(6):
        image, mask = write_pair(data, f"case{i}", "ASR" if i % 3 == 0 else "LPS")
        items.append({"image": str(image), "label": str(mask), "text": "One lesion in the left anterior upper part."})
    datalist = data / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:4], "validation": items[4:5], "test": items[5:]}))
    small = {"image_size": "16", "unet_channels": "[8,16]", "unet_strides": "[2]", "num_workers": "0"}
    train_files = [CONFIGS / "train.json", CONFIGS / "supervised.json"]
    common = {
        **small,
        "dataset_dir": str(datalist),
        "bundle_root": str(tmp_path / "b"),
        "intensity_window": "[0, 1000]",
    }
    train = {**common, "batch_size": "8", "max_epochs": "15", "slices_per_volume": "4", "learning_rate": "0.01"}
    res = run_bundle_cli("training", train_files, {**train, "labeled_ratio": "1.0"}, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = tmp_path / "b" / "runs" / "supervised_ratio1.0_seed0"
    record = json.loads((run / "models" / "model.json").read_text())
    assert (record["intensity_window"], record["slice_axis"]) == ([0, 1000], "axial")

    evaluate = {"dataset_dir": str(datalist), "bundle_root": str(tmp_path / "b"), "split": "test", "num_workers": "0"}
    res = run_bundle_cli(
        "evaluating", [*train_files, CONFIGS / "evaluate.json"], {**evaluate, "labeled_ratio": "1.0"}, cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = run / "eval_test"
    summary = json.loads((report / "summary.json").read_text())
    slices = list(csv.DictReader(open(report / "per_slice_metrics.csv", newline="")))
    assert summary["n"] == 1 and summary["n_slices"] == len(slices) == 10
    assert summary["n_slices_with_foreground"] == 3 and summary["mean_dice"] > 0.8  # 3D Dice of the test volume

    res = run_bundle_cli(
        None,
        CONFIGS / "inference.json",
        {
            "input_dir": items[5]["image"],
            "checkpoint": str(run / "models" / "model.pt"),
            "output_dir": str(tmp_path / "out"),
            "num_workers": "0",
        },
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    written = _assert_same_grid(tmp_path / "out" / "case5_mask.nii.gz", Path(items[5]["image"]))
    truth = np.asarray(nib.load(items[5]["label"]).dataobj) > 0
    dice = 2 * np.logical_and(written > 0, truth).sum() / (written.sum() + truth.sum())
    assert dice > 0.8, dice  # the lesion found at the same voxels (resized to 16 px and back)
