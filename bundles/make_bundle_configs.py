"""Write the configs of the MoNuSeg and BM-Seg bundles from those of the QaTa-COV19 bundle.

The QaTa-COV19 bundle (``bundles/dussss_qata_cov19/configs``) is the one that is edited by hand; the other
bundles take its ``pretrain.json``, ``train.json``, ``multi_gpu_train.json``, ``evaluate.json`` and
``inference.json`` with only the dataset-specific values below replaced, so that they cannot drift apart.
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
    "dussss_monuseg": {
        "common": {"dataset_dir": "data/MoNuSeg", "in_channels": 3},
        # the paper's flips and rot90; the QaTa-COV19 bundle turns them off because its sentences name sides
        "train": {"learning_rate": 0.001, "batch_size": 4, "augment_flip": True, "augment_rot90": True},
        # 24 training tiles are fewer than the stage-1 batch of 32: keep the one partial batch per epoch
        "pretrain": {"train#dataloader#drop_last": "$len(@train#dataset) > @batch_size"},
    },
    "dussss_bmseg": {
        "common": {"dataset_dir": "data/BM-Seg", "in_channels": 1},
        "train": {"learning_rate": 0.0003, "batch_size": 16, "augment_flip": True, "augment_rot90": True},
    },
}


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
        if name == "multi_gpu_train.json":
            values: dict[str, Any] = {}  # dataset-independent: merged on top of train.json
        elif name == "inference.json":
            values = {"in_channels": spec["common"]["in_channels"]}  # inference reads --input_dir, not the dataset
        elif name == "pretrain.json":
            values = {**common, **STAGE1, **spec.get("pretrain", {})}
        elif name == "train.json":
            values = {**common, **spec["train"]}
        else:
            values = common
        out[name] = _override(config, values, name)
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
