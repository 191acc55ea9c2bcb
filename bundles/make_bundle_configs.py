"""Write each bundle's configs from the neutral template and the bundle's own small set of values.

``bundles/template/configs`` holds the configs every bundle shares: stage 1 (``pretrain.json``), stage 2 with DuSSS
(``train.json``), one layer per other method (``mean_teacher.json``, ``supervised.json``), the multi-GPU and
evaluation layers, and inference. This script writes ``bundles/<bundle>/configs/*.json`` as the template with
:data:`BUNDLES`' values for that bundle: values of existing keys, nested keys (``a#b``, as on MONAI's command line)
and, for a dataset that needs them, new settings and components (the MoNuSeg bundle's H&E stain augmentation). Why
each bundle has its values is written in that bundle's ``docs/README.md``, where its users read it.

Within every bundle, two definitions are copied so that each config file still runs on its own:

- the vision-language model (``vlm_def`` and its settings, :data:`VLM_KEYS`) is written in ``pretrain.json``
  (stage 1 owns it) and copied into ``train.json`` (stage 2 loads the stage-1 weights into it);
- the student network (``network_def`` and its settings, :data:`NETWORK_KEYS`) is written in ``train.json`` and
  copied into ``inference.json``, which the model zoo runs alone.

``metadata.json``, ``logging.conf``, ``LICENSE`` and ``docs/`` of each bundle are written by hand.

    python bundles/make_bundle_configs.py          # rewrite the bundles' configs
    python bundles/make_bundle_configs.py --check  # exit 1 when a committed config differs (CI)

A test (``tests/bundles/test_bundle_configs.py``) checks that the committed files equal this script's output.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

BUNDLES_DIR = Path(__file__).resolve().parent
TEMPLATE = BUNDLES_DIR / "template" / "configs"
FILES = (
    "pretrain.json",
    "train.json",
    "mean_teacher.json",
    "supervised.json",
    "multi_gpu_train.json",
    "evaluate.json",
    "inference.json",
)

#: H&E stain augmentation (RGB histology): jitter and transfer of labeled crops and of the student's strong view
HE_STAIN: dict[str, Any] = {
    "stain_jitter": 0.05,
    "stain_transfer_prob": 0.0,
    "strong_stain_jitter": 0.1,
    "strong_stain_transfer_prob": 0.0,
    "stain_references": {
        "_target_": "dussss_monai.data.he_stain_references",
        "images": "$@datalist['unlabeled']",
        "transfer_prob": "@stain_transfer_prob",
    },
    "strong_stain_references": {
        "_target_": "dussss_monai.data.he_stain_references",
        "images": "$@datalist['training']",
        "transfer_prob": "@strong_stain_transfer_prob",
    },
    "train#preprocessing#stain_jitter": "@stain_jitter",
    "train#preprocessing#stain_references": "@stain_references",
    "train#preprocessing#stain_transfer_prob": "@stain_transfer_prob",
    "train#unlabeled_preprocessing#stain_jitter": "@strong_stain_jitter",
    "train#unlabeled_preprocessing#stain_references": "@strong_stain_references",
    "train#unlabeled_preprocessing#stain_transfer_prob": "@strong_stain_transfer_prob",
}

#: per bundle, per config file: the values that differ from the template ("common": every file that has the key)
BUNDLES: dict[str, dict[str, dict[str, Any]]] = {
    "dussss_qata_cov19": {
        "common": {"dataset_dir": "demo_data/qata_cov19"},
        "pretrain.json": {"max_epochs": 50},
        "train.json": {
            "learning_rate": 0.0003,
            "use_text_loss": True,
            # reports name the infected zones: f_g's spatial prior, and a cross-entropy on the refined targets
            "decoder_prior_grid": 8,
            "consistency_loss": {"_target_": "torch.nn.BCEWithLogitsLoss"},
        },
        # the mean teacher's own targets: the squared error it was validated with
        "mean_teacher.json": {"consistency_loss": {"_target_": "dussss_monai.losses.ProbabilityMSELoss"}},
    },
    "dussss_monuseg": {
        "common": {"dataset_dir": "data/MoNuSeg", "in_channels": 3},
        "pretrain.json": {
            "train#dataloader#drop_last": "$len(@train#dataset) > @batch_size",
            "image_size": 384,
            "image_encoder": "conv",
            "conv_channels": [16, 32, 64, 128],
            "conv_hidden_size": 128,
            "embed_dim": 64,
            "learning_rate": 0.001,
            "max_epochs": 60,
        },
        "train.json": {
            **HE_STAIN,
            "learning_rate": 0.001,
            "batch_size": 4,
            "augment_flip": True,
            "augment_rot90": True,
            "augment_degrees": 0.0,
            "strong_view": True,
            "perturbation": "cutmix",
            "use_text_loss": False,
            "flip_tta": True,
            "patch_size": 256,
            "score_size": 224,
            "epoch_length": 25,
            "max_epochs": 24,
            "early_stop_patience": 24,
            "unet_norm": "instance",
            "image_size": 384,
            "decoder_channels": 32,
            "decoder_image_skip_channels": 16,
            "decoder_crop_size": 128,
            "loss": {"_target_": "DiceCELoss", "sigmoid": True},
            "train#lr_scheduler": {
                "_target_": "torch.optim.lr_scheduler.ConstantLR",
                "optimizer": "@optimizer",
                "factor": 1.0,
                "total_iters": 0,
            },
        },
        "mean_teacher.json": {"ema_decay": 0.95},
        "inference.json": {"patch_size": 256, "flip_tta": True},
    },
    "dussss_bmseg": {
        # CT volumes: the bone window (level 400, width 1800 HU); 2D slices keep their own scaling
        "common": {"dataset_dir": "data/BM-Seg", "intensity_window": [-500, 1300]},
        "pretrain.json": {"max_epochs": 50},
        "train.json": {"learning_rate": 0.0003, "batch_size": 16, "augment_flip": True, "augment_rot90": True},
    },
}

#: the VLM's definition and settings: written in pretrain.json, copied into train.json
VLM_KEYS = (
    "text_encoder",
    "text_max_length",
    "image_encoder",
    "vit_patch_size",
    "vit_hidden_size",
    "vit_mlp_dim",
    "vit_num_layers",
    "vit_num_heads",
    "conv_channels",
    "conv_hidden_size",
    "conv_pool",
    "embed_dim",
    "momentum",
    "vlm_def",
)
#: the student network's definition and settings: written in train.json, copied into inference.json
NETWORK_KEYS = ("unet_channels", "unet_strides", "unet_norm", "network_def")
#: where new top-level keys of a bundle go: settings after this setting, components and expressions after this one
NEW_SETTINGS_AFTER, NEW_COMPONENTS_AFTER = "augment_degrees", "datalist"


def _copy_keys(source: dict[str, Any], target: dict[str, Any], keys: tuple[str, ...], names: str) -> None:
    """Replace ``target[key]`` with ``source[key]`` for every key (both must have it)."""
    for key in keys:
        if key not in source or key not in target:
            raise KeyError(f"{names}: key {key!r} is missing; update make_bundle_configs.py")
        target[key] = copy.deepcopy(source[key])


def _insert_after(config: dict[str, Any], anchor: str, key: str, value: Any) -> dict[str, Any]:
    """``config`` with ``key`` after ``anchor``, or last where there is no ``anchor`` (a layer of a few keys)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        out[k] = v
        if k == anchor:
            out[key] = value
    out.setdefault(key, value)
    return out


def _is_component(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, str) and value.startswith(("$", "@")))


def apply_values(config: dict[str, Any], values: dict[str, Any], name: str) -> dict[str, Any]:
    """``config`` with ``values``: an existing key is replaced; ``a#b`` sets ``b`` in the existing ``a``; a new
    top-level key is inserted after :data:`NEW_SETTINGS_AFTER` (a value) or :data:`NEW_COMPONENTS_AFTER`, or last in a
    layer that has neither."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        *parents, last = key.split("#")
        if not parents and last not in out:
            new = [k for k in values if "#" not in k and k not in config]
            anchor = NEW_COMPONENTS_AFTER if _is_component(value) else NEW_SETTINGS_AFTER
            earlier = [k for k in new[: new.index(last)] if _is_component(values[k]) == _is_component(value)]
            out = _insert_after(out, earlier[-1] if earlier else anchor, last, copy.deepcopy(value))
            continue
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise KeyError(f"template/configs/{name} has no key {'#'.join(parents)!r}; update make_bundle_configs.py")
        node[last] = copy.deepcopy(value)
    return out


def bundle_configs(bundle: str, template_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The configs of ``bundle`` (file name -> content): the template with the bundle's values."""
    spec = BUNDLES[bundle]
    src = template_dir or TEMPLATE
    out: dict[str, dict[str, Any]] = {}
    for name in FILES:
        template = json.loads((src / name).read_text())
        common = {k: v for k, v in spec.get("common", {}).items() if k in template}
        out[name] = apply_values(template, {**common, **spec.get(name, {})}, name)
    _copy_keys(out["pretrain.json"], out["train.json"], VLM_KEYS, f"{bundle}: pretrain.json -> train.json")
    _copy_keys(out["train.json"], out["inference.json"], NETWORK_KEYS, f"{bundle}: train.json -> inference.json")
    return out


def render(config: dict[str, Any]) -> str:
    """The exact text written for a config."""
    return json.dumps(config, indent=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    args = parser.parse_args(argv)
    stale = []
    for bundle in BUNDLES:
        folder = BUNDLES_DIR / bundle / "configs"
        for name, config in bundle_configs(bundle).items():
            path = folder / name
            text = render(config)
            if path.is_file() and path.read_text() == text:
                continue
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        print(("differs: " if args.check else "wrote: ") + str(path.relative_to(BUNDLES_DIR.parent)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
