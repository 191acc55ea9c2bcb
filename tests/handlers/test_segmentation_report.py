"""SegmentationReport: per-image Dice/IoU by hand, empty-mask convention, files written, engine use."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dussss_monai.errors import ConfigError, DuSSSError
from dussss_monai.handlers.segmentation_report import SegmentationReport, binarize, dice_iou, iterate_items


def _half_overlap():
    """Ground truth: left half of an 8x8 image (32 px); prediction: the middle 4 columns (32 px, 16 shared)."""
    gt = np.zeros((8, 8), bool)
    gt[:, :4] = True
    pred = np.zeros((8, 8), bool)
    pred[:, 2:6] = True
    return pred, gt


def test_dice_iou_by_hand():
    pred, gt = _half_overlap()
    dice, iou = dice_iou(pred, gt)
    assert dice == pytest.approx(2 * 16 / (32 + 32))  # 0.5
    assert iou == pytest.approx(16 / 48)  # 1/3
    assert dice_iou(gt, gt) == (1.0, 1.0)


def test_empty_masks_convention():
    empty = np.zeros((8, 8), bool)
    full = np.ones((8, 8), bool)
    assert dice_iou(empty, empty) == (1.0, 1.0)
    assert dice_iou(empty, full) == (0.0, 0.0)
    assert dice_iou(full, empty) == (0.0, 0.0)


def test_binarize_probabilities_logits_and_misuse():
    probs = torch.tensor([[[0.2, 0.5], [0.7, 1.0]]])
    assert binarize(probs).tolist() == [[False, True], [True, True]]
    logits = torch.tensor([[[-3.0, 0.0], [2.0, 5.0]]])
    assert binarize(logits, logits=True).tolist() == [[False, True], [True, True]]
    with pytest.raises(ConfigError, match="logits"):
        binarize(logits)  # logits scored as probabilities would be wrong: refused
    with pytest.raises(ConfigError, match="one-channel"):
        binarize(torch.zeros(2, 4, 4))


def _items(n_extra_empty=True):
    pred, gt = _half_overlap()
    items = [
        {
            "name": "a.png",
            "text": "Left lung, one area, lower.",
            "image": torch.rand(1, 8, 8),
            "pred": torch.from_numpy(pred[None].astype(np.float32)),
            "label": torch.from_numpy(gt[None].astype(np.float32)),
        },
        {
            "name": "b.png",
            "text": "No infection, text, with comma",
            "image": torch.rand(3, 8, 8),
            "pred": torch.zeros(1, 8, 8),
            "label": torch.zeros(1, 8, 8),
        },
    ]
    return items


def test_update_and_write_files(tmp_path):
    rep = SegmentationReport(tmp_path / "eval", overlay_dir="overlays")
    rep._started()
    rep.update(_items())
    summary = rep.write()
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image_metrics.csv", newline="")))
    assert [r["name"] for r in rows] == ["a.png", "b.png"]
    assert float(rows[0]["dice"]) == pytest.approx(0.5) and float(rows[0]["iou"]) == pytest.approx(1 / 3)
    assert float(rows[1]["dice"]) == 1.0 and float(rows[1]["iou"]) == 1.0  # empty vs empty
    assert rows[1]["text"] == "No infection, text, with comma"
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved == summary
    assert saved["n"] == 2
    assert saved["mean_dice"] == pytest.approx(0.75) and saved["std_dice"] == pytest.approx(0.25)
    assert saved["mean_iou"] == pytest.approx((1 / 3 + 1) / 2)
    overlays = sorted(p.name for p in (tmp_path / "eval" / "overlays").iterdir())
    assert overlays == ["a_overlay.png", "b_overlay.png"]
    im = np.asarray(Image.open(tmp_path / "eval" / "overlays" / "a_overlay.png").convert("RGB"))
    assert (im == [0, 255, 0]).all(-1).any() and (im == [255, 0, 0]).all(-1).any()  # both contours drawn
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "eval").iterdir())


def test_max_overlays_and_no_overlays(tmp_path):
    rep = SegmentationReport(tmp_path / "r", overlay_dir=tmp_path / "ov", max_overlays=1)
    rep._started()
    rep.update(_items())
    assert len(list((tmp_path / "ov").iterdir())) == 1
    rep2 = SegmentationReport(tmp_path / "r2")
    rep2._started()
    rep2.update(_items())
    rep2.write()
    assert sorted(p.name for p in (tmp_path / "r2").iterdir()) == ["per_image_metrics.csv", "summary.json"]


def test_iterate_items_batched_and_decollated():
    batched = {"name": ["a", "b"], "text": ["t1", "t2"], "image": torch.zeros(2, 1, 4, 4)}
    out = {"pred": torch.zeros(2, 1, 4, 4), "label": torch.ones(2, 1, 4, 4)}
    items = iterate_items(batched, out)
    assert [i["name"] for i in items] == ["a", "b"] and items[1]["text"] == "t2"
    assert items[0]["pred"].shape == (1, 4, 4)
    dec = iterate_items([{"name": "a"}, {"name": "b"}], [{"pred": 1}, {"pred": 2}])
    assert dec == [{"name": "a", "pred": 1}, {"name": "b", "pred": 2}]


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rep = SegmentationReport(blocker / "eval")
    with pytest.raises(DuSSSError, match="file.txt"):
        rep._started()


def test_with_monai_evaluator(tmp_path):
    """Attached to a SupervisedEvaluator with sigmoid + threshold postprocessing: one CSV row per image."""
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Activationsd, AsDiscreted, Compose

    class Fixed(torch.nn.Module):  # logits: +5 on the middle 4 columns, -5 elsewhere
        def forward(self, x):
            out = torch.full((x.shape[0], 1, 8, 8), -5.0)
            out[..., 2:6] = 5.0
            return out + 0 * x.sum()

    gt = torch.zeros(1, 8, 8)
    gt[:, :, :4] = 1
    data = [
        {"image": torch.rand(1, 8, 8), "label": gt.clone(), "name": f"img{i}.png", "text": f"text {i}"}
        for i in range(3)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    rep = SegmentationReport(tmp_path / "eval", overlay_dir="overlays", max_overlays=2)
    post = Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)])
    ev = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=Fixed(), postprocessing=post, val_handlers=[rep]
    )
    ev.run()
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image_metrics.csv", newline="")))
    assert [r["name"] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all(float(r["dice"]) == pytest.approx(0.5) for r in rows)
    assert rows[2]["text"] == "text 2"
    assert ev.state.metrics["report_mean_dice"] == pytest.approx(0.5)
    assert len(list((tmp_path / "eval" / "overlays").iterdir())) == 2
    ev.run()  # a second evaluation rewrites the report instead of appending
    assert len(list(csv.DictReader(open(tmp_path / "eval" / "per_image_metrics.csv", newline="")))) == 3


def test_volumes_are_scored_in_3d_and_per_slice(tmp_path):
    label = torch.zeros(1, 8, 8, 4)
    label[0, 2:6, 2:6, 1:3] = 1  # 32 voxels on slices 1 and 2
    pred = torch.zeros(1, 8, 8, 4)
    pred[0, 2:6, 2:6, 1] = 1  # slice 1 right, slice 2 missed, 4 false voxels on slice 3
    pred[0, 0, 0:4, 3] = 1
    report = SegmentationReport(tmp_path, overlay_dir="overlays")
    (row,) = report.update([{"name": "ct.nii.gz", "pred": pred, "label": label, "image": torch.rand(1, 8, 8, 4)}])
    assert row["dice"] == pytest.approx(2 * 16 / (20 + 32))  # over all voxels of the volume
    summary = report.write()
    slices = list(csv.DictReader(open(tmp_path / "per_slice_metrics.csv", newline="")))
    assert [float(r["dice"]) for r in slices] == [1.0, 1.0, 0.0, 0.0]
    assert summary["n_slices"] == 4 and summary["n_slices_with_foreground"] == 2
    assert summary["mean_slice_dice_with_foreground"] == pytest.approx(0.5)
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["ct_slice001_overlay.png"]
