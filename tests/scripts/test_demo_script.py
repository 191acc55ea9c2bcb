"""`make demo`'s pipeline (scripts/demo.py): a one-epoch run end to end from another directory, and its report."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dussss_monai.errors import DuSSSError

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
_spec = importlib.util.spec_from_file_location("demo_script", SCRIPTS / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

import bundle_runner  # noqa: E402


def test_report_lists_every_method_and_seed_with_the_mean_over_seeds():
    results = {
        "dussss": {
            0: {"mean_dice": 0.7086, "mean_iou": 0.5652, "n": 40},
            1: {"mean_dice": 0.6886, "mean_iou": 0.5452, "n": 40},
        },
        "supervised": {
            0: {"mean_dice": 0.7097, "mean_iou": 0.5643, "n": 40},
            1: {"mean_dice": 0.6697, "mean_iou": 0.5243, "n": 40},
        },
    }
    args = argparse.Namespace(labeled_ratio=0.25, seed=3, pretrain_epochs=40, epochs=30)
    text = demo._report(results, args, 168.0, Path("runs/demo"))
    assert "| method | seed 0 | seed 1 | mean ± sd over seeds | mean IoU | images |" in text
    assert "| DuSSS | 70.86 | 68.86 | 69.86 ± 1.41 | 55.52 | 40 |" in text
    assert "| Supervised only | 70.97 | 66.97 | 68.97 ± 2.83 | 54.43 | 40 |" in text
    # ranked by the mean over seeds, not by seed 0 (where supervised is ahead)
    assert "Order of the means: DuSSS (69.86) > Supervised only (68.97)." in text
    # paired by seed: ahead on average, but only at one of the two seeds
    assert "- DuSSS - Supervised only: +0.89 points on average, ahead at 1 of 2 seeds." in text
    assert "data and stage-1 seed 3" in text and "2.8 min" in text and "docs/results.md" in text


def test_report_of_one_seed_has_no_spread():
    results = {"mean_teacher": {5: {"mean_dice": 0.5, "mean_iou": 0.4, "n": 4}}}
    args = argparse.Namespace(labeled_ratio=0.5, seed=0, pretrain_epochs=1, epochs=1)
    text = demo._report(results, args, 60.0, Path("w"))
    assert "| Mean teacher | 50.00 | 50.00 | 40.00 | 4 |" in text
    assert "One seed ranks nothing" in text and "SEEDS=0,1,2" in text


def test_report_of_several_seeds_does_not_ask_for_more():
    results = {
        "supervised": {0: {"mean_dice": 0.5, "mean_iou": 0.4, "n": 4}, 1: {"mean_dice": 0.6, "mean_iou": 0.5, "n": 4}}
    }
    args = argparse.Namespace(labeled_ratio=0.5, seed=0, pretrain_epochs=1, epochs=1)
    assert "One seed ranks nothing" not in demo._report(results, args, 60.0, Path("w"))


def test_bad_seed_list_is_a_clear_error_before_any_work(tmp_path, capsys):
    assert demo.main(["--seeds", "0,x", "--workdir", str(tmp_path / "w"), "--dataset_dir", str(tmp_path / "d")]) == 1
    assert "--seeds expects comma-separated integers" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no data generated, no stage 1 run


def test_demo_runs_end_to_end_in_one_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo finds the bundles from its own location, not the working directory
    work, data = tmp_path / "work", tmp_path / "data"
    rc = demo.main(
        [
            "--workdir",
            str(work),
            "--dataset_dir",
            str(data),
            "--pretrain_epochs",
            "1",
            "--epochs",
            "1",
            "--methods",
            "dussss,mean_teacher",
            "--seeds",
            "4",
        ]
    )
    assert rc == 0
    report = (work / "report.md").read_text()
    assert "| DuSSS |" in report and "| Mean teacher |" in report
    for method in ("dussss", "mean_teacher"):
        summary = json.loads((work / method / "seed4" / "eval" / "summary.json").read_text())
        assert summary["n"] == 40 and 0.0 <= summary["mean_dice"] <= 1.0
        assert (work / method / "seed4" / "models" / "model.pt").is_file()
        run = json.loads((work / method / "seed4" / "run" / "run.json").read_text())
        assert run["identity"]["settings"]["seed"] == 4 and run["status"] == "finished"  # the stage-2 seed arrived
    assert (work / "models" / "vlm.pt").is_file()
    assert "Validation Dice (%) of the student" in capsys.readouterr().out  # the report is printed too


def test_run_bundle_failure_names_the_log(tmp_path):
    log = tmp_path / "logs" / "bad.log"
    with pytest.raises(DuSSSError, match="bad.log"):
        bundle_runner.run_bundle(tmp_path / "missing.json", "training", {}, log)


def test_bundle_command_writes_none_as_a_config_expression_and_lists_compactly():
    cmd = bundle_runner.bundle_command(
        Path("train.json"), "training", {"pseudo_label_threshold": None, "sizes": [1, 2]}
    )
    assert cmd[-4:] == ["--pseudo_label_threshold", "$None", "--sizes", "[1,2]"]
    layered = bundle_runner.bundle_command([Path("a/train.json"), Path("a/evaluate.json")], "evaluating", {})
    assert layered[layered.index("--config_file") + 1] == '["a/train.json", "a/evaluate.json"]'


def test_bundle_command_dicts_keep_their_booleans_and_none_through_fire():
    from fire.parser import DefaultParseValue

    loss = {"_target_": "DiceCELoss", "sigmoid": True, "weight": None, "scales": [0.5, 1], "name": "a b"}
    cmd = bundle_runner.bundle_command(Path("train.json"), "training", {"loss": loss, "flags": [True, False]})
    assert DefaultParseValue(cmd[cmd.index("--loss") + 1]) == loss
    assert DefaultParseValue(cmd[cmd.index("--flags") + 1]) == [True, False]
