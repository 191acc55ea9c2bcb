"""`make demo`'s pipeline (dussss_monai.demo): a one-epoch run end to end, and its report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dussss_monai import demo
from dussss_monai.errors import DuSSSError


def test_report_lists_every_method_with_its_scores():
    results = {
        "dussss": {"mean_dice": 0.7086, "mean_iou": 0.5652, "std_dice": 0.1484, "n": 40},
        "supervised": {"mean_dice": 0.7097, "mean_iou": 0.5643, "std_dice": 0.1397, "n": 40},
    }
    args = argparse.Namespace(labeled_ratio=0.25, seed=3, pretrain_epochs=40, epochs=30)
    text = demo._report(results, args, 168.0, Path("runs/demo"))
    assert "| DuSSS | 70.86 ± 14.84 | 56.52 | 40 |" in text
    assert "| Supervised only | 70.97 ± 13.97 | 56.43 | 40 |" in text
    assert "seed 3" in text and "2.8 min" in text and "docs/benchmarks.md" in text


def test_demo_runs_end_to_end_in_one_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the demo runs the bundles from the project root
    work, data = tmp_path / "work", tmp_path / "data"
    rc = demo.main(["--workdir", str(work), "--dataset_dir", str(data), "--pretrain_epochs", "1", "--epochs", "1",
                    "--methods", "dussss,mean_teacher"])
    assert rc == 0
    report = (work / "report.md").read_text()
    assert "| DuSSS |" in report and "| Mean teacher |" in report
    for method in ("dussss", "mean_teacher"):
        summary = json.loads((work / method / "eval" / "summary.json").read_text())
        assert summary["n"] == 40 and 0.0 <= summary["mean_dice"] <= 1.0
        assert (work / method / "models" / "model.pt").is_file()
    assert (work / "models" / "vlm.pt").is_file()
    assert "validation Dice" in capsys.readouterr().out


def test_run_bundle_failure_names_the_log(tmp_path):
    log = tmp_path / "logs" / "bad.log"
    with pytest.raises(DuSSSError, match="bad.log"):
        demo.run_bundle(tmp_path / "missing.json", "training", {}, log)
