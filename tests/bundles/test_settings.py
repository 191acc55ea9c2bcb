"""Every setting checked before anything runs, from one declared list; the network settings recorded beside a
model; the device and tracking a machine can run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dussss_monai.bundle import SETTINGS, apply_model_record, check_settings, read_model_record, write_model_record
from dussss_monai.bundle.cli import check_device, check_tracking
from dussss_monai.bundle.settings import COMPONENTS
from dussss_monai.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_key_of_every_bundle_config_is_declared():
    undeclared = set()
    for path in sorted(REPO_ROOT.glob("bundles/*/configs/*.json")):
        if path.name == "metadata.json":
            continue
        for key in json.loads(path.read_text()):
            top = key.split("#", 1)[0]
            if top not in SETTINGS and top not in COMPONENTS:
                undeclared.add(f"{path.parent.parent.name}/{path.name}: {key}")
    assert not undeclared, "declare these in dussss_monai/bundle/settings.py: " + ", ".join(sorted(undeclared))


def test_unknown_settings_are_named_with_the_nearest_known_one():
    config = {"learning_rate": 0.001, "max_epochs": 10, "train": {"dataloader": {}}}
    with pytest.raises(ConfigError) as e:
        check_settings(config, overrides=["lerning_rate", "max_epoch", "train#dataloader#num_workers", "zzz"])
    message = str(e.value)
    assert "3 setting problems" in message
    assert "--lerning_rate: this config has no setting 'lerning_rate' (did you mean --learning_rate?)" in message
    assert "--max_epoch: this config has no setting 'max_epoch' (did you mean --max_epochs?)" in message
    assert "--zzz: this config has no setting 'zzz';" not in message and "'zzz'" in message
    assert "train#dataloader" not in message  # a nested key of a known component is the user's business


def test_a_misspelt_component_is_named_with_the_component_not_a_nearby_setting():
    config = {"consistency_weight": 1.0, "consistency_loss": {"_target_": "torch.nn.BCEWithLogitsLoss"},
              "method": "dussss", "grounding_context": True}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        check_settings(config, overrides=["consistency_los", "grounding_contxt"])
    message = str(e.value)
    assert "(did you mean --consistency_loss?)" in message  # not --consistency_weight
    # a method's key is never offered: it is refused with the config layer to use
    assert "--grounding_contxt: this config has no setting 'grounding_contxt';" in message + ";"


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("max_epochs", "ten", "--max_epochs 'ten': must be an integer >= 1, not text (epochs to train"),
        ("max_epochs", -1, "--max_epochs -1: must be an integer >= 1"),
        ("batch_size", 0, "--batch_size 0: must be an integer >= 1"),
        ("labeled_ratio", 1.5, "--labeled_ratio 1.5: must be a number > 0 and <= 1"),
        ("perturbation", "mixup", "--perturbation 'mixup': must be one of none, cutmix, copy_paste"),
        ("resume", "yes", "--resume 'yes': must be True or False, not text"),
        ("unet_channels", [16, -2], "--unet_channels [16, -2]: must be a list of positive integers"),
    ],
)
def test_types_and_ranges_are_checked(key, value, words):
    with pytest.raises(ConfigError) as e:
        check_settings({key: value})
    assert words in str(e.value)


def test_the_method_is_a_config_layer_not_a_setting():
    with pytest.raises(ConfigError, match=r"--method: the method is chosen by its config layer.*mean_teacher\.json"):
        check_settings({"method": "dussss"}, overrides=["method"])
    check_settings({"method": "mean_teacher"})  # set by the layer, not on the command line


def test_expressions_and_good_values_pass():
    check_settings({"max_epochs": 3, "device": "$torch.device('cpu')", "ema_decay": "$0.9 if True else 0.99"})
    check_settings({"patch_size": None, "columns": {"image": "filename"}, "labeled_ratio": 1})


def test_a_model_record_sets_the_network_settings_and_refuses_others(tmp_path):
    from monai.bundle import ConfigParser

    model = tmp_path / "models" / "model.pt"
    write_model_record(model, {"unet_channels": [4, 8], "in_channels": 3, "learning_rate": 1.0})
    assert read_model_record(model) == {"unet_channels": [4, 8], "in_channels": 3}
    parser = ConfigParser({"unet_channels": [32, 64], "in_channels": 1, "network_def": {"channels": "@unet_channels"}})
    assert apply_model_record(model, parser, overridden={"in_channels": 3}) == {
        "unet_channels": [4, 8],
        "in_channels": 3,
    }
    assert parser.get_parsed_content("network_def", instantiate=False)["channels"] == [4, 8]
    with pytest.raises(ConfigError, match=r"unet_channels=\[16, 32\] \(the model was trained with \[4, 8\]\)"):
        apply_model_record(model, parser, overridden={"unet_channels": [16, 32]})
    assert apply_model_record(tmp_path / "elsewhere.pt", parser, overridden={}) == {}  # no record: the config's own


def test_cuda_on_a_cpu_build_is_one_line_with_the_install_command():
    if torch.version.cuda is not None:
        pytest.skip("this PyTorch is a CUDA build")
    with pytest.raises(ConfigError, match=r"CPU build\. Install a CUDA build, e\.g\. make install TORCH="):
        check_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        check_device("gpu")
    check_device("cpu")


def test_tracking_with_mlflow_missing_is_one_line():
    try:
        import mlflow  # noqa: F401
    except ImportError:
        with pytest.raises(
            ConfigError, match=r"--tracking mlflow needs the mlflow package.*pip install -e \"\.\[mlflow\]\""
        ):
            check_tracking("mlflow")
    else:
        check_tracking("mlflow")
    check_tracking(None)
