"""Tests of ``dussss_monai.bundle``, the helpers that bundle configs call."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dussss_monai.bundle import (
    bundle_root,
    latest_checkpoint,
    load_stage1_model,
    load_state_dict_into,
)
from dussss_monai.errors import CheckpointError, ConfigError


def test_bundle_root_from_command_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bundles" / "b" / "configs" / "train.json"
    assert bundle_root(argv=["x", "run", "training", "--config_file", str(cfg)]) == str(tmp_path / "bundles" / "b")
    assert bundle_root(argv=["x", f"--config_file={cfg}"]) == str(tmp_path / "bundles" / "b")
    listed = f"['{cfg}','{cfg.parent / 'multi_gpu_train.json'}']"
    assert bundle_root(argv=["x", "--config_file", listed]) == str(tmp_path / "bundles" / "b")
    assert bundle_root(default="fallback", argv=["pytest"]) == "fallback"


def test_latest_checkpoint_picks_newest(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    old, new = tmp_path / "training_checkpoint_epoch=1.pt", tmp_path / "training_checkpoint_epoch=2.pt"
    old.write_bytes(b"a")
    new.write_bytes(b"b")
    past = time.time() - 100
    os.utime(old, (past, past))
    (tmp_path / ".partial.pt.tmp").write_bytes(b"c")
    assert latest_checkpoint(tmp_path) == str(new)


def test_load_state_dict_into_reports_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    net = load_state_dict_into(nn.Linear(3, 2), path)
    assert torch.equal(net.weight, torch.load(path)["weight"])
    with pytest.raises(CheckpointError, match="holds another network than this config builds"):
        load_state_dict_into(nn.Linear(4, 2), path)
    with pytest.raises(CheckpointError, match="no entry 'student'"):
        load_state_dict_into(nn.Linear(3, 2), path, key="student")


def test_missing_stage1_checkpoint_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "sys.argv", ["monai.bundle", "run", "training", "--config_file", "bundles/b/configs/train.json"]
    )
    with pytest.raises(CheckpointError) as e:
        load_stage1_model(nn.Linear(2, 2), tmp_path / "vlm.pt")
    msg = str(e.value)
    assert (
        "vlm.pt" in msg and "python -m monai.bundle run training --config_file bundles/b/configs/pretrain.json" in msg
    )
    assert "\n" not in msg


def test_load_stage1_model_loads_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "vlm.pt"
    saved = nn.Linear(2, 2)
    torch.save(saved.state_dict(), path)
    vlm = load_stage1_model(nn.Linear(2, 2), path)
    assert torch.equal(vlm.weight, saved.weight)


def test_config_from_command_line_applies_overrides(tmp_path: Path) -> None:
    import json

    from dussss_monai.bundle import config_from_command_line

    cfg = tmp_path / "configs" / "train.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"lr": 0.1, "net": {"channels": [1, 2]}, "method": "dussss"}))
    argv = [
        "m",
        "run",
        "training",
        "--config_file",
        str(cfg),
        "--lr",
        "0.5",
        "--net#channels",
        "[4,8]",
        "--method=supervised",
    ]
    merged = config_from_command_line(argv)
    merged.pop("_meta_", None)
    assert merged == {"lr": 0.5, "net": {"channels": [4, 8]}, "method": "supervised"}
    assert config_from_command_line(["pytest"]) is None


def test_matched_epoch_length_is_the_same_for_every_method():
    from dussss_monai.bundle import matched_epoch_length

    datalist = {"labeled": list(range(40)), "unlabeled": list(range(120))}
    assert matched_epoch_length(datalist, 16) == 8  # ceil(120 / 16): the unlabeled stream is longer
    assert matched_epoch_length(datalist, 16, unlabeled_batch_size=32) == 4  # max(ceil(40/16)=3, ceil(120/32)=4)
    assert matched_epoch_length(datalist, 16, world_size=2) == 4  # 60 unlabeled items per rank
    assert matched_epoch_length(datalist, 16, world_size=3) == 3  # 40 per rank -> 3, labeled 14 per rank -> 1
    assert matched_epoch_length({"labeled": [1, 2, 3]}, 2) == 2  # fully labeled: labeled stream only
    assert matched_epoch_length({"labeled": [], "unlabeled": []}, 2) == 1


def test_matched_epoch_length_errors():
    from dussss_monai.bundle import matched_epoch_length
    from dussss_monai.errors import ConfigError

    with pytest.raises(ConfigError, match="batch sizes"):
        matched_epoch_length({"labeled": [1]}, 0)
    with pytest.raises(ConfigError, match="labeled"):
        matched_epoch_length({"training": [1]}, 2)


def test_feature_perturbation_is_off_at_zero_and_refuses_rates_outside_0_to_1() -> None:
    from dussss_monai.bundle import feature_perturbation
    from dussss_monai.engines import FeatureDropout

    assert feature_perturbation(0.0) is None
    built = feature_perturbation(0.3)
    assert isinstance(built, FeatureDropout) and built.p == 0.3
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="feature_dropout must be 0 .off. or in .0, 1.*--feature_dropout 0.5"):
            feature_perturbation(rate)


def test_make_inferer_matches_training_mode() -> None:
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    from dussss_monai.bundle import make_inferer

    assert isinstance(make_inferer(None), SimpleInferer)
    sw = make_inferer(16, sw_batch_size=2)
    assert isinstance(sw, SlidingWindowInferer) and tuple(sw.roi_size) == (16, 16)
    # a network that sees its whole input predicts the same through 16 x 16 windows as at once
    net = nn.Conv2d(1, 1, 1)
    x = torch.rand(1, 1, 40, 28)
    with torch.no_grad():
        assert torch.allclose(sw(x, net), net(x), atol=1e-5)
    for bad in (0, (16,), "16", True):
        with pytest.raises(ConfigError, match="patch_size"):
            make_inferer(bad)
    with pytest.raises(ConfigError, match="overlap"):
        make_inferer(16, overlap=1.0)


def test_scoring_postprocessing_puts_prediction_and_mask_on_the_score_grid() -> None:
    from dussss_monai.bundle import scoring_postprocessing

    label = torch.zeros(1, 100, 60)
    label[:, 20:60, 10:30] = 1
    item = {"pred": (label * 8 - 4).clone(), "label": label.clone(), "image": torch.rand(3, 100, 60)}
    out = scoring_postprocessing(32)(dict(item))
    assert tuple(out["pred"].shape[-2:]) == (32, 32) and tuple(out["label"].shape[-2:]) == (32, 32)
    assert tuple(out["image"].shape) == (3, 32, 32)
    assert set(torch.unique(out["pred"]).tolist()) == {0.0, 1.0}
    assert torch.equal(out["pred"], out["label"])  # the same resize for both
    native = scoring_postprocessing(None)(dict(item))
    assert tuple(native["pred"].shape[-2:]) == (100, 60) and torch.equal(native["pred"], label)


def test_training_scalars_reads_the_first_decollated_item_and_keeps_only_scalars():
    from dussss_monai.bundle import training_scalars

    item = {"loss": torch.tensor(0.5), "loss_text": 0.25, "weight": 0.1, "fg_fraction_text": torch.tensor(0.0),
            "pred": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4), "image": torch.zeros(1, 4, 4),
            "loss_vector": torch.ones(3), "flag": True}  # fmt: skip
    expected = {"loss": 0.5, "loss_text": 0.25, "weight": 0.1, "fg_fraction_text": 0.0}
    assert training_scalars([item, {"loss": 9.0}]) == expected
    assert training_scalars(item) == expected
    assert training_scalars([]) == {} and training_scalars(None) == {}


def test_check_command_line_refuses_none_overrides_that_monai_bundle_would_drop():
    from dussss_monai.bundle import check_command_line

    base = ["monai.bundle", "run", "training", "--config_file", "train.json"]
    check_command_line(base + ["--pseudo_label_threshold", "$None", "--patch_size=256"])  # fine
    with pytest.raises(ConfigError, match=r"--pseudo_label_threshold None.*--pseudo_label_threshold '\$None'"):
        check_command_line(base + ["--pseudo_label_threshold", "None"])
    with pytest.raises(ConfigError, match="--patch_size None, --score_size None"):
        check_command_line(base + ["--patch_size=None", "--max_epochs", "3", "--score_size", "None"])
    check_command_line(["my_script.py", "--anything", "None"])  # not a bundle command line: not checked


def test_run_record_leaves_out_none_overrides_as_monai_bundle_does(tmp_path):
    from dussss_monai.bundle import config_from_command_line

    config = tmp_path / "c.json"
    config.write_text('{"threshold": 0.95, "size": 8}')
    record = config_from_command_line(["x", "--config_file", str(config), "--threshold", "None", "--size", "16"])
    assert record["threshold"] == 0.95 and record["size"] == 16


def test_check_command_line_refuses_json_spelled_literals_that_fire_reads_as_strings():
    """``--use_text_loss false`` reached the trainer as the string "false" (truthy) and changed nothing."""
    from dussss_monai.bundle import check_command_line

    base = ["monai.bundle", "run", "training", "--config_file", "train.json"]
    check_command_line(base + ["--use_text_loss", "False", "--strong_view=True", "--run_name", "falsehood"])  # fine
    with pytest.raises(
        ConfigError,
        match=r"--use_text_loss false, --strong_view true: .*string.*--use_text_loss False --strong_view True",
    ):
        check_command_line(base + ["--use_text_loss", "false", "--strong_view", "true"])
    with pytest.raises(ConfigError, match=r"--patch_size null.*--patch_size '\$None'"):
        check_command_line(base + ["--patch_size=null"])
    with pytest.raises(ConfigError, match=r"--a None.*'\$None'; --b FALSE.*--b False"):  # both problems in one message
        check_command_line(base + ["--a", "None", "--b", "FALSE"])
