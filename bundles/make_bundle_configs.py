"""Write the derived parts of the bundles' configs, so that nothing is defined twice by hand.

The QaTa-COV19 bundle (``bundles/dussss_qata_cov19/configs``) is the one that is edited by hand; the other
bundles take its ``pretrain.json``, ``train.json``, ``multi_gpu_train.json``, ``evaluate.json`` and
``inference.json`` with only the dataset-specific values below replaced, so that they cannot drift apart.
Within every bundle, two definitions are copied so that each config file still runs on its own:

- the vision-language model (``vlm_def`` and its settings, :data:`VLM_KEYS`) is written in ``pretrain.json``
  (stage 1 owns it) and copied into ``train.json`` (stage 2 loads the stage-1 weights into it);
- the student network (``network_def`` and its settings, :data:`NETWORK_KEYS`) is written in ``train.json`` and
  copied into ``inference.json``, which the model zoo runs alone. ``evaluate.json`` is layered on
  ``train.json`` (``--config_file "['configs/train.json','configs/evaluate.json']"``) and needs no copy.

``metadata.json``, ``logging.conf``, ``LICENSE`` and ``docs/`` of each bundle are written by hand.

    python bundles/make_bundle_configs.py          # rewrite the derived configs
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
SOURCE = "dussss_qata_cov19"
FILES = ("pretrain.json", "train.json", "multi_gpu_train.json", "evaluate.json", "inference.json")

# Stage 1 of the paper for every dataset: Adam 3e-5, batch 32 (method.md, "Training set-up reported").
STAGE1 = {"learning_rate": 3e-05, "batch_size": 32}

# Per bundle: values common to its configs, and the stage-2 training values (train.json only).
# The text encoder stays the offline default (``text_encoder: null``) for every dataset; the paper's clinical
# BERT is ``--text_encoder emilyalsentzer/Bio_ClinicalBERT`` (see each bundle's docs/README.md).
BUNDLES: dict[str, dict[str, dict[str, Any]]] = {
    SOURCE: {"common": {}, "train": {}},
    "dussss_monuseg": {
        "common": {"dataset_dir": "data/MoNuSeg", "in_channels": 3},
        # native 256-pixel patches of the 1000-pixel tiles, predicted by sliding window and scored on the 224 grid;
        # an epoch is 25 iterations of random labeled crops; a U-Net with instance norm and MONAI's Dice + CE
        # (nuclei are a quarter of a tile, not the 2 % the class-balanced loss was made for): docs/results.md
        "train": {
            "learning_rate": 0.001,
            "batch_size": 4,
            "augment_flip": True,
            "augment_rot90": True,
            "augment_degrees": 0.0,
            "stain_jitter": 0.05,
            "strong_view": True,
            "strong_stain_jitter": 0.1,
            "perturbation": "cutmix",
            # the teacher's EMA: 0.95 for the mean teacher (ahead of 0.99 at every seed on two CPUs, +0.22 on
            # average); DuSSS keeps 0.99, its validated value (0.95 is level with it): docs/results.md
            "ema_decay": "$0.95 if @method == 'mean_teacher' else 0.99",
            # L_merged only: f_g's text mask, L_text's target, is far less accurate than the teacher on MoNuSeg
            # (benchmarks/pseudo_label_quality.py; docs/results.md)
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
        "inference": {"patch_size": 256, "flip_tta": True},
        # stage 1 on the whole tiles at 384 px (nuclei stay visible), a small convolutional image encoder trained
        # from scratch (a ViT-B/16 does not learn from 24 tiles); 24 training tiles are fewer than the batch of 32:
        # keep the one partial batch per epoch
        "pretrain": {
            "train#dataloader#drop_last": "$len(@train#dataset) > @batch_size",
            "image_size": 384,
            "image_encoder": "conv",
            "conv_channels": [16, 32, 64, 128],
            "conv_hidden_size": 128,
            "embed_dim": 64,
            "learning_rate": 0.001,
            "max_epochs": 60,
        },
    },
    "dussss_bmseg": {
        "common": {"dataset_dir": "data/BM-Seg", "in_channels": 1},
        "train": {"learning_rate": 0.0003, "batch_size": 16, "augment_flip": True, "augment_rot90": True},
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


def _copy_keys(source: dict[str, Any], target: dict[str, Any], keys: tuple[str, ...], names: str) -> None:
    """Replace ``target[key]`` with ``source[key]`` for every key (both must have it)."""
    for key in keys:
        if key not in source or key not in target:
            raise KeyError(f"{names}: key {key!r} is missing; update make_bundle_configs.py")
        target[key] = copy.deepcopy(source[key])


def _override(config: dict[str, Any], values: dict[str, Any], name: str) -> dict[str, Any]:
    """Replace existing keys (``a#b`` names a nested key, as on MONAI's command line); a key missing from the
    source config is an error (the source drifted)."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        *parents, last = key.split("#")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise KeyError(f"{SOURCE}/configs/{name} has no key {key!r} to override; update make_bundle_configs.py")
        node[last] = value
    return out


def derived_configs(bundle: str, source_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The configs of ``bundle`` (file name -> content) derived from the QaTa-COV19 configs."""
    spec = BUNDLES[bundle]
    src = source_dir or BUNDLES_DIR / SOURCE / "configs"
    out: dict[str, dict[str, Any]] = {}
    for name in FILES:
        config = json.loads((src / name).read_text())
        common = spec["common"]
        if name in ("multi_gpu_train.json", "evaluate.json"):
            values: dict[str, Any] = {}  # layered on train.json: the dataset's values come from there
        elif name == "inference.json":
            # inference reads --input_dir, not the dataset
            values = {**{k: v for k, v in common.items() if k == "in_channels"}, **spec.get("inference", {})}
        elif name == "pretrain.json":
            values = {**common, **STAGE1, **spec.get("pretrain", {})}
        elif name == "train.json":
            values = {**common, **spec["train"]}
        else:
            values = common
        out[name] = _override(config, values, name)
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
        for name, config in derived_configs(bundle).items():
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
