"""The model zoo's own bundle check, ``ci/verify_bundle.py`` in ``min`` and full mode, on all three bundles.

The zoo runs it from its repository root on ``models/<bundle>/``; here a temporary folder is laid out the same way:
``ci/`` (the zoo's scripts, from ``../shared/monai/zoo_ci/``), ``models/model_info.json`` and a copy of each bundle
with the metadata schema at ``eval/schema.json`` (so nothing is downloaded). A bundle that ships no weights gets
stand-in weights made from its ``network_def``, as the zoo's ``_produce_fake_weights`` does. Skips where the zoo's
scripts are absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
ZOO_CI = REPO_ROOT.parent / "shared" / "monai" / "zoo_ci"
SCHEMA = REPO_ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"
BUNDLES = ("dussss_qata_cov19", "dussss_monuseg", "dussss_bmseg")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    if not (ZOO_CI / "verify_bundle.py").is_file() or not SCHEMA.is_file():
        pytest.skip(f"the model zoo's verify_bundle.py or its schema is not at {ZOO_CI} (see its README)")
    root = tmp_path_factory.mktemp("zoo")
    shutil.copytree(ZOO_CI, root / "ci")
    (root / "models").mkdir()
    (root / "models" / "model_info.json").write_text("{}")
    return root


def _stand_in_weights(bundle: Path) -> None:
    """Random weights of the bundle's network_def (the zoo's _produce_fake_weights)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_bundle_min_and_full(zoo, bundle):
    target = zoo / "models" / bundle
    shutil.copytree(
        REPO_ROOT / "bundles" / bundle, target, ignore=shutil.ignore_patterns("runs", "eval", "__pycache__")
    )
    (target / "eval").mkdir()
    shutil.copy(SCHEMA, target / "eval" / "schema.json")
    if not (target / "models" / "model.pt").is_file():
        _stand_in_weights(target)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(target), str(REPO_ROOT)]))
    for mode in ("min", "full"):
        proc = subprocess.run([sys.executable, "ci/verify_bundle.py", "-b", bundle, "-m", mode], cwd=zoo, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{mode}: " + proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "metadata format is verified correctly." in proc.stdout
    assert "export weights into TorchScript module successfully." in proc.stdout
