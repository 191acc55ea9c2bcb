"""Every bundle's configs are the neutral template with the bundle's own values (bundles/make_bundle_configs.py);
within a bundle the VLM and the student network are copied from the file that defines them; a method is one config
layer, with no conditional on a method's name anywhere; every bundle's configs agree with its metadata."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = REPO_ROOT / "bundles"
ALL = ("dussss_qata_cov19", "dussss_monuseg", "dussss_bmseg")
FILES = (
    "pretrain.json",
    "train.json",
    "mean_teacher.json",
    "supervised.json",
    "multi_gpu_train.json",
    "evaluate.json",
    "inference.json",
)
#: the workflows that run alone (the others are layers over train.json)
WORKFLOWS = ("pretrain.json", "train.json", "inference.json")


def _generator():
    spec = importlib.util.spec_from_file_location("make_bundle_configs", BUNDLES / "make_bundle_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(bundle: str, name: str) -> dict:
    return json.loads((BUNDLES / bundle / "configs" / name).read_text())


@pytest.mark.parametrize("bundle", ALL)
def test_committed_configs_equal_generator_output(bundle):
    gen = _generator()
    for name, config in gen.bundle_configs(bundle).items():
        path = BUNDLES / bundle / "configs" / name
        assert path.read_text() == gen.render(config), f"{path} is stale: run python bundles/make_bundle_configs.py"


def test_generator_check_mode_passes():
    assert _generator().main(["--check"]) == 0


@pytest.mark.parametrize("bundle", ALL)
def test_the_vlm_and_the_network_are_defined_once_and_copied(bundle):
    gen = _generator()
    pretrain, train, inference = (_load(bundle, n) for n in ("pretrain.json", "train.json", "inference.json"))
    assert all(train[k] == pretrain[k] for k in gen.VLM_KEYS)
    assert all(inference[k] == train[k] for k in gen.NETWORK_KEYS)
    # evaluate.json is layered on train.json: it defines neither
    evaluate = _load(bundle, "evaluate.json")
    assert not set(evaluate) & (set(gen.VLM_KEYS) | set(gen.NETWORK_KEYS) | {"dataset_dir", "image_size"})


@pytest.mark.parametrize(
    "bundle, dataset_dir, channels, lr, batch, stage1_lr",
    [("dussss_monuseg", "data/MoNuSeg", 3, 1e-3, 4, 1e-3), ("dussss_bmseg", "data/BM-Seg", 1, 3e-4, 16, 3e-5)],
)
def test_dataset_values(bundle, dataset_dir, channels, lr, batch, stage1_lr):
    """Stage 1 of the paper (Adam 3e-5) fine-tunes a pre-trained ViT; MoNuSeg's small conv encoder starts from scratch."""
    train, pretrain = _load(bundle, "train.json"), _load(bundle, "pretrain.json")
    assert (train["learning_rate"], train["batch_size"], train["in_channels"]) == (lr, batch, channels)
    assert (pretrain["learning_rate"], pretrain["batch_size"], pretrain["in_channels"]) == (stage1_lr, 32, channels)
    for name in ("pretrain.json", "train.json"):
        assert _load(bundle, name)["dataset_dir"] == dataset_dir
    assert _load(bundle, "inference.json")["in_channels"] == channels
    assert train["text_encoder"] is None and pretrain["text_encoder"] is None  # offline default
    # QaTa's sentences name the lung side and zone, so its bundle does not flip; the others keep the paper's flips
    qata = _load("dussss_qata_cov19", "train.json")
    assert (qata["augment_flip"], qata["augment_rot90"]) == (False, False)
    assert (train["augment_flip"], train["augment_rot90"]) == (True, True)


@pytest.mark.parametrize("bundle", ALL)
def test_a_bundle_is_the_template_with_its_own_values_only(bundle):
    gen = _generator()
    spec = gen.BUNDLES[bundle]
    for name in FILES:
        template = json.loads((BUNDLES / "template" / "configs" / name).read_text())
        config = _load(bundle, name)
        own = {k.split("#")[0] for k in {**spec.get("common", {}), **spec.get(name, {})}}
        copied = (
            set(gen.VLM_KEYS) if name == "train.json" else set(gen.NETWORK_KEYS) if name == "inference.json" else set()
        )
        differ = {k for k in set(template) | set(config) if template.get(k) != config.get(k)}
        assert differ <= own | copied, f"{bundle}/{name}: {sorted(differ - own - copied)} differ from the template"


def test_only_histology_carries_stain_settings():
    stain = {"stain_jitter", "stain_transfer_prob", "strong_stain_jitter", "strong_stain_transfer_prob"}
    assert stain <= set(_load("dussss_monuseg", "train.json"))
    for bundle in ("dussss_qata_cov19", "dussss_bmseg"):
        assert not stain & set(_load(bundle, "train.json")), bundle


@pytest.mark.parametrize("bundle", ALL)
def test_no_config_compares_the_method_by_name(bundle):
    """A method is one place: its trainer class and its layer (train.json trains DuSSS)."""
    for name in FILES:
        assert "@method ==" not in (BUNDLES / bundle / "configs" / name).read_text()
        assert "@method !=" not in (BUNDLES / bundle / "configs" / name).read_text()
    trainers = {
        name: _load(bundle, name)["train#trainer"]["_target_"] for name in ("mean_teacher.json", "supervised.json")
    }
    assert trainers == {
        "mean_teacher.json": "dussss_monai.engines.MeanTeacherTrainer",
        "supervised.json": "SupervisedTrainer",
    }
    assert _load(bundle, "train.json")["train"]["trainer"]["_target_"] == "dussss_monai.engines.DuSSSTrainer"


def test_train_json_holds_small_expressions_only():
    """Components are built by ``_target_`` with named arguments; ``$`` expressions are small (docs/architecture.md)."""
    text = (BUNDLES / "dussss_monuseg" / "configs" / "train.json").read_text()
    expressions = [line.strip() for line in text.splitlines() if '"$' in line]
    assert len(expressions) <= 36, len(expressions)  # 9 of them the workflow steps (initialize, training, run)
    assert max(len(e) for e in expressions) < 200


@pytest.mark.parametrize("bundle", ALL)
def test_configs_agree_with_metadata(bundle):
    meta = _load(bundle, "metadata.json")
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    for name in FILES:
        config = _load(bundle, name)
        if name == "pretrain.json":  # stage 1's image encoder reads the whole image at its own size
            continue
        if "in_channels" in config:
            assert config["in_channels"] == image["num_channels"], name
        if "image_size" in config:  # the network's input: the patch in patch training, else the resized image
            size = config.get("patch_size") or config["image_size"]
            assert [size] * 2 == image["spatial_shape"] == pred["spatial_shape"], name
    inference = _load(bundle, "inference.json")
    assert inference["network_def"]["out_channels"] == pred["num_channels"] == 1
    for name in ("logging.conf",):
        assert (BUNDLES / bundle / "configs" / name).read_text() == (BUNDLES / ALL[0] / "configs" / name).read_text()
    assert (BUNDLES / bundle / "LICENSE").read_text() == (BUNDLES / ALL[0] / "LICENSE").read_text()


@pytest.mark.parametrize("name", [*WORKFLOWS, "evaluate.json", "multi_gpu_train.json"])
def test_every_workflow_checks_its_command_line_first(name):
    """`--key None` is dropped by monai.bundle; every workflow refuses it (and installs the hook that ends a failed
    run on our message) before doing anything else."""
    for bundle in ALL:
        assert _load(bundle, name)["initialize"][0] == "$dussss_monai.bundle.prepare_run()"


@pytest.mark.parametrize(
    "key, typed, fix",
    [
        ("pseudo_label_threshold", "None", "--pseudo_label_threshold '$None'"),
        ("use_text_loss", "false", "--use_text_loss False"),
    ],
)
def test_a_misread_override_stops_a_bundle_run_with_the_spelling_that_works(tmp_path, key, typed, fix):
    from bundle_cli import run_bundle_cli

    proc = run_bundle_cli("training", BUNDLES / "dussss_qata_cov19" / "configs" / "train.json",
                          {key: typed, "dataset_dir": str(tmp_path / "none")}, cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    assert fix in proc.stderr + proc.stdout


@pytest.mark.parametrize("bundle", ["dussss_monuseg", "dussss_bmseg"])
def test_stage2_defaults_are_soft_pseudo_labels_with_the_squared_error_consistency(bundle):
    """The validated default of bundle 0.4.0 (docs/notebook/2026-11-27_benchmarks.md, row 35 and "Pseudo-label targets on MoNuSeg")."""
    train = _load(bundle, "train.json")
    assert train["pseudo_label_threshold"] is None
    assert train["decoder_prior_grid"] == 0
    assert train["consistency_loss"] == {"_target_": "dussss_monai.losses.ProbabilityMSELoss"}
    assert train["train"]["trainer"]["consistency_loss_function"] == "@consistency_loss"
    assert "consistency_loss" not in _load(bundle, "mean_teacher.json")


@pytest.mark.parametrize("layers, expected", [
    ([], "BCEWithLogitsLoss"), (["mean_teacher.json"], "ProbabilityMSELoss"), (["supervised.json"], None),
])  # fmt: skip
def test_qata_refined_targets_take_cross_entropy_and_the_mean_teacher_keeps_the_squared_error(layers, expected):
    """The text benchmark's validated recipe (docs/results.md, "Text benchmark"): DuSSS on QaTa-like reports learns its
    text-refined soft targets by cross-entropy with f_g's spatial prior on; the mean teacher keeps its own best loss."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "dussss_qata_cov19" / "configs" / n) for n in ["train.json", *layers]])
    assert parser["pseudo_label_threshold"] is None
    if expected is None:  # supervised training has no unlabeled term
        assert "consistency_loss_function" not in parser["train#trainer"]
        return
    assert parser["train#trainer#consistency_loss_function"] == "@consistency_loss"
    assert type(parser.get_parsed_content("consistency_loss")).__name__ == expected
    assert parser["decoder_prior_grid"] == 8  # f_g is built by DuSSS only; the setting is inert for the others


@pytest.mark.parametrize("bundle", ALL)
def test_feature_dropout_is_off_by_default_and_builds_the_perturbation_when_set(bundle):
    from monai.bundle import ConfigParser

    from dussss_monai.engines import FeatureDropout

    parser = ConfigParser(_load(bundle, "train.json"))
    key = "train#trainer#feature_perturbation"
    assert parser.get_parsed_content(key) is None  # the default: no feature-perturbed stream
    parser = ConfigParser(_load(bundle, "train.json"))
    parser["feature_dropout"] = 0.5
    built = parser.get_parsed_content(key)
    assert isinstance(built, FeatureDropout) and built.p == 0.5


@pytest.mark.parametrize("layers, override, expected", [
    (["mean_teacher.json"], None, 0.95), ([], None, 0.99), (["mean_teacher.json"], 0.9, 0.9), ([], 0.9, 0.9),
])  # fmt: skip
def test_monuseg_teacher_ema_is_the_validated_one_of_each_method(layers, override, expected):
    """docs/results.md: EMA 0.95 is ahead of 0.99 for the mean teacher on MoNuSeg, level for DuSSS; a given value wins."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "dussss_monuseg" / "configs" / n) for n in ["train.json", *layers]])
    if override is not None:
        parser["ema_decay"] = override
    assert parser.get_parsed_content("train#trainer#ema_decay") == expected
