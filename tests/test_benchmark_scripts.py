"""The benchmark scripts stay runnable: their command construction and errors (no training here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dussss_monai.data.demo import generate_demo_dataset

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_monuseg_table_dry_run_lists_each_run_once_and_writes_nothing(tmp_path, capsys):
    data = generate_demo_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=0, image_size=32)
    bench = _load("monuseg_table")
    work = tmp_path / "work"
    args = ["--dry_run", "--dataset_dir", str(data), "--seeds", "0,1", "--workdir", str(work),
            "--methods", "supervised,mean_teacher,dussss,dussss_rotated"]  # fmt: skip
    assert bench.main(args) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if "-m monai.bundle run" in line]
    assert sum("pretrain.json" in c for c in commands) == 1  # stage 1 once, shared by every DuSSS run
    train = [c for c in commands if "run training" in c and "pretrain.json" not in c]
    assert len(train) == 8  # 2 seeds x 4 methods
    assert sum("supervised.json" in c for c in train) == sum("mean_teacher.json" in c for c in train) == 2
    assert sum("--rotate_texts True" in c for c in train) == 2
    assert sum("run evaluating" in c for c in commands) == 16  # with and without flip TTA
    assert not (work / "results.json").exists()  # a dry run writes no result


def test_monuseg_table_names_a_missing_dataset(tmp_path, capsys):
    bench = _load("monuseg_table")
    absent = tmp_path / "absent"
    args = ["--dry_run", "--dataset_dir", str(absent), "--workdir", str(tmp_path / "w"), "--methods", "supervised"]
    assert bench.main(args) != 0
    err = capsys.readouterr().err
    assert f"{absent} is not a MoNuSeg folder" in err and "Traceback" not in err


def test_grounding_probe_trains_f_g_alone_and_scores_right_and_rotated_sentences(tmp_path, capsys):
    """grounding_probe.py end to end on tiny generated data and a random stage-1 model (a few seconds)."""
    import json

    import torch
    from monai.bundle import ConfigParser

    probe = _load("grounding_probe")
    assert probe.parse_overrides(["a=1", "b=[2,3]", "c=x"]) == {"a": 1, "b": [2, 3], "c": "x"}
    with pytest.raises(probe.ConfigError, match="KEY=VALUE"):
        probe.parse_overrides(["no_equals_sign"])
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1
    logits = torch.full((2, 1, 4, 4), -1.0)
    logits[0, 0, :2, :] = 1.0  # image 0: 4 of 8 marked pixels right -> 2*4/(8+4); image 1: both empty -> 100
    assert probe.dice(logits, target) == pytest.approx(100 * (8 / 12 + 1) / 2)

    data = generate_demo_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=0, image_size=32, seed=0)
    tiny = {
        "image_size": 32,
        "num_workers": 0,
        "vit_patch_size": 8,
        "vit_hidden_size": 32,
        "vit_mlp_dim": 64,
        "vit_num_layers": 1,
        "vit_num_heads": 2,
        "embed_dim": 16,
        "text_max_length": 16,
        "decoder_channels": 8,
        "unet_channels": [4, 8],
        "unet_strides": [2],
        "dataset_dir": str(data),
        "labeled_ratio": 0.5,
        "decoder_image_skip_channels": 4,
    }
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "dussss_qata_cov19" / "configs" / "train.json"))
    for k, v in tiny.items():
        parser[k] = v
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("vlm_def").state_dict(), tmp_path / "vlm.pt")
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    sets = [f"--set={k}={json.dumps(v)}" for k, v in tiny.items()]
    rc = probe.main(
        [
            "--vlm_checkpoint",
            str(tmp_path / "vlm.pt"),
            "--teacher",
            str(tmp_path / "model.pt"),
            "--steps",
            "3",
            "--batch_size",
            "2",
            *sets,
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {
        "text_mask_dice",
        "text_mask_dice_rotated",
        "text_mask_foreground",
        "truth_foreground",
        "text_logit_max",
        "teacher_dice",
        "merged_dice",
        "merged_dice_rotated",
    }
    assert all(0 <= result[k] <= 100 for k in result if k != "text_logit_max")
    assert 0 < result["truth_foreground"] < 20  # the generated lesions: a few per cent of the image

    assert probe.main(["--vlm_checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no stage-1 checkpoint" in capsys.readouterr().err


def test_monuseg_table_collect_merges_workdirs_into_one_table(tmp_path, capsys):
    """--collect merges methods run in separate workdirs, per seed, into one table written to --workdir; a folder
    without results.json is named with the fix and nothing is written."""
    import json

    bench = _load("monuseg_table")
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    a.mkdir()
    b.mkdir()
    (a / "results.json").write_text(json.dumps({"reference": {"0": {"dice": 77.5, "seconds": 60.0}}}))
    (b / "results.json").write_text(
        json.dumps({"supervised": {"0": {"dice": 78.25, "seconds": 120.0}, "1": {"dice": 79.75, "seconds": 120.0}}})
    )
    assert bench.main(["--collect", str(b), str(a), "--workdir", str(out)]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| plain MONAI U-Net (reference) | 77.50 | – |")  # reference first, seed 1 missing
    assert rows[2].startswith("| supervised | 78.25 | 79.75 | 79.00 ± 1.06 |")
    assert (out / "results.md").read_text() == table.rstrip("\n") + "\n"
    assert set(json.loads((out / "results.json").read_text())) == {"reference", "supervised"}

    missing = tmp_path / "missing"
    assert bench.main(["--collect", str(a), str(missing), "--workdir", str(tmp_path / "other")]) == 1
    assert f"--workdir {missing} first" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_stain_shift_writes_every_validation_tile_in_every_other_tiles_stain(tmp_path):
    import numpy as np
    import openpyxl
    from PIL import Image

    shift = _load("stain_shift_eval")
    data = generate_demo_dataset(tmp_path / "data", n_train=4, n_val=3, n_test=0, image_size=32, seed=0)
    rng = np.random.default_rng(0)
    for path in sorted((data / "Val_Folder" / "img").iterdir()):  # H&E-like colours instead of grey
        Image.fromarray(rng.integers(60, 250, (32, 32, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "shifted"
    assert shift.write_shifted_dataset(data, out) == 6
    rows = list(openpyxl.load_workbook(out / "Val_Folder" / "Val_text.xlsx").active.iter_rows(values_only=True))
    names = sorted(str(r[0]) for r in rows[1:])
    assert names == sorted(p.name for p in (out / "Val_Folder" / "img").iterdir())
    assert names == sorted(p.name for p in (out / "Val_Folder" / "labelcol").iterdir())
    assert all("_stain" in n for n in names) and (out / "Train_Folder" / "img").is_dir()
    source = sorted((data / "Val_Folder" / "img").iterdir())[0]
    first = sorted((out / "Val_Folder" / "img").glob(f"{source.stem}_stain*.png"))
    assert len(first) == 2 and not np.array_equal(np.asarray(Image.open(first[0])), np.asarray(Image.open(source)))


def test_text_benchmark_dry_run_lists_every_command_and_writes_nothing(tmp_path, capsys):
    bench = _load("text_benchmark")
    work, data = tmp_path / "work", tmp_path / "data"
    rc = bench.main(["--dry_run", "--workdir", str(work), "--dataset_dir", str(data), "--seeds", "0,1"])
    out = capsys.readouterr().out
    assert rc == 0
    commands = [line for line in out.splitlines() if line.startswith("$ python")]
    pretrain = [c for c in commands if "pretrain.json" in c]
    train = [c for c in commands if " run training " in c and "pretrain.json" not in c]
    evaluate = [c for c in commands if " run evaluating " in c]
    assert len(pretrain) == 1 and "--max_epochs 30" in pretrain[0]  # stage 1 once, shared by every seed
    assert len(train) == 8 and all("--labeled_ratio 0.25" in c and "--max_epochs 20" in c for c in train)
    assert sum("--seed 0 " in c for c in train) == sum("--seed 1 " in c for c in train) == 4
    layers = [("mean_teacher.json" in c, "supervised.json" in c) for c in train]
    assert layers.count((True, False)) == layers.count((False, True)) == 2  # one layer per method and seed
    rotated = [c for c in train if "--rotate_texts True" in c]
    assert len(rotated) == 2 and all(layer == (False, False) for c, layer in zip(train, layers) if c in rotated)
    assert [("--vlm_checkpoint" in c) for c in train] == [layer == (False, False) for layer in layers]
    assert len(evaluate) == 16 and sum("--split test" in c for c in evaluate) == 8
    assert all("evaluate.json" in c for c in evaluate)
    assert "'difficulty': 'text_benchmark'" in out and "'n_train': 600" in out
    assert not data.exists() and not work.exists()

    assert bench.main(["--dry_run", "--workdir", str(work), "--dataset_dir", str(data), "--methods", "supervised"]) == 0
    assert "pretrain.json" not in capsys.readouterr().out  # no stage 1 for methods that read no text
    assert bench.main(["--dry_run", "--workdir", str(work), "--methods", "supervised,unet"]) == 1
    assert "unknown method 'unet'; choose from supervised, mean_teacher" in capsys.readouterr().err


def test_text_benchmark_report_means_and_paired_gaps():
    bench = _load("text_benchmark")

    def run(val, test):
        return {"validation": {"mean_dice": val}, "test": {"mean_dice": test}, "train_seconds": 600}

    results = {
        "mean_teacher": {0: run(0.60, 0.58), 1: run(0.62, 0.60)},
        "dussss": {0: run(0.63, 0.57), 1: run(0.64, 0.62)},
    }
    text = bench.report(results, [0, 1], "cmd")
    assert "| DuSSS | 63.00 | 64.00 | 63.50 ± 0.71 | 57.00 | 62.00 | 59.50 ± 3.54 | 10.0 |" in text
    assert "- DuSSS - mean teacher, validation: +2.50 (+3.00, +2.00), ahead at 2 of 2 seeds" in text
    assert "- DuSSS - mean teacher, test: +0.50 (-1.00, +2.00), ahead at 1 of 2 seeds" in text


def test_text_difficulty_statistics_oracles_and_probe(capsys):
    import json

    import numpy as np

    bench = _load("text_difficulty")
    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 36
    image = np.where(disc, 0.8, 0.3).astype(np.float32)
    (stats,) = bench.object_statistics(image, disc, np.zeros_like(disc), np.ones_like(disc))
    assert stats["contrast"] == pytest.approx(0.5, abs=1e-6) and stats["roundness"] > 0.85 and stats["texture"] < 1e-5
    assert stats["area"] == pytest.approx(disc.sum() / 1600)
    assert bench.auc([3, 4, 5], [0, 1, 2]) == bench.auc([0, 1, 2], [3, 4, 5]) == 1.0
    assert bench.dice(disc, disc) == 1.0 and bench.dice(disc, ~disc) == 0.0

    argv = ["--difficulty", "text_benchmark", "--size", "64", "--net_size", "32", "--n_images", "12"]
    assert bench.main([*argv, "--probe_steps", "2", "--n_labeled", "4", "--n_val", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    oracle = result["oracle_dice"]
    assert oracle["opacities"] < oracle["opacities_in_named_zones"] <= 100  # distractors lie outside the named zones
    assert set(result["auc"]) == set(bench.STATISTICS) and all(0.5 <= v <= 1 for v in result["auc"].values())
    assert set(result["probe"]) >= {"dice", "dice_in_named_zones", "distractor_pixels_marked", "lesion_pixels_found"}
    assert bench.main(["--difficulty", "hardest"]) == 2
    assert "unknown difficulty 'hardest'" in capsys.readouterr().err


def test_text_benchmark_diagnostic_table_one_row_per_run_and_target():
    bench = _load("text_benchmark")
    f = {"dice": 62.494, "lesion_found_pct": 95.61, "distractor_marked_pct": 41.06, "background_marked_pct": 2.504}
    table = bench.diagnostic_report({1: {"dussss_rotated": {"merged": f}}, 0: {"dussss": {"teacher": f, "text": f}}})
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| 0", "DuSSS", "teacher"], ["| 0", "DuSSS", "text"], ["| 1", "DuSSS, rotated sentences (control)", "merged"],
    ]  # fmt: skip
    assert rows[0].endswith("| 62.49 | 95.6 % | 41.1 % | 2.50 % |")
