"""MoNuSeg validation under stain shift: how much of a run's Dice survives tiles stained as other tiles are.

The validation tiles share hospitals and stains with the training tiles; tiles from elsewhere do not. This
benchmark writes a copy of the dataset whose validation folder holds every validation tile re-stained with the
H&E stain of each other validation tile (``dussss_monai.data.stain_transfer.restain``: Macenko stain matrices and
maximal concentrations of the whole tiles; 6 tiles give 30 shifted tiles, the masks unchanged), then scores each
run's best student on it with the bundle's own ``evaluate.json`` (sliding window, no TTA). The validation tiles' stains
are never among the references of ``stain_transfer_prob`` (those are the unlabeled training tiles'), so the shift
is unseen by every method. A proxy for unseen stains, not a held-out estimate: the tissue is the validation's.

Usage (from the repository root; each ``--run`` is a method folder of ``benchmarks/monuseg_table.py``)::

    python benchmarks/stain_shift_eval.py --dataset_dir ../shared/data/monuseg --workdir runs/stain_shift \\
        --run runs/monuseg_r25/seed0/supervised --run runs/monuseg_r25/seed0/mean_teacher
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import openpyxl
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bundle_runner import run_bundle  # noqa: E402

from dussss_monai.data import read_image_2d, read_lvit_dataset  # noqa: E402
from dussss_monai.data.stain_transfer import estimate_he_stain, restain  # noqa: E402
from dussss_monai.errors import ConfigError  # noqa: E402
from dussss_monai.utils.io import atomic_write_json  # noqa: E402

CONFIGS = REPO / "bundles" / "dussss_monuseg" / "configs"


def write_shifted_dataset(dataset_dir: Path, out: Path) -> int:
    """``out``: ``Train_Folder`` linked from ``dataset_dir``, ``Val_Folder`` with each validation tile re-stained
    with every other validation tile's stain. Returns the number of shifted tiles.

    Raises:
        ConfigError: fewer than two validation tiles.
    """
    items = read_lvit_dataset(dataset_dir, check=False)["validation"]
    if len(items) < 2:
        raise ConfigError(f"{dataset_dir}: stain shift needs at least 2 validation tiles, got {len(items)}")
    images = [read_image_2d(item["image"], channels=3) for item in items]
    stains = [estimate_he_stain(x) for x in images]
    target = out / "Val_Folder"
    for sub in ("img", "labelcol"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    if not (out / "Train_Folder").exists():
        os.symlink((dataset_dir / "Train_Folder").resolve(), out / "Train_Folder")
    book = openpyxl.Workbook()
    book.active.append(["Image", "Description"])
    for i, item in enumerate(items):
        for j, stain in enumerate(stains):
            if i == j:
                continue
            shifted = f"{Path(item['name']).stem}_stain{j}.png"
            rgb = restain(images[i], stains[i], stain).numpy().transpose(1, 2, 0)
            Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(target / "img" / shifted)
            Image.open(item["label"]).save(target / "labelcol" / shifted)
            book.active.append([shifted, item["text"]])
    book.save(target / "Val_text.xlsx")
    return len(items) * (len(items) - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, type=Path)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--run", action="append", required=True, type=Path, help="a monuseg_table method folder")
    args = parser.parse_args(argv)
    data = args.workdir / "data"
    if not (data / "Val_Folder" / "Val_text.xlsx").is_file():
        print(f"shifted tiles: {write_shifted_dataset(args.dataset_dir, data)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = {}
    for run in args.run:
        if not (run / "models" / "model.pt").is_file() or not (run / "result.json").is_file():
            raise ConfigError(f"{run}: not a finished monuseg_table run (models/model.pt and result.json)")
        out = args.workdir / "_".join(run.resolve().parts[-3:])  # workdir_seed_method of monuseg_table
        summary = out / "summary.json"
        if not summary.is_file():
            # only the student is evaluated: the supervised configuration builds it and nothing else
            overrides = {
                "dataset_dir": str(data.resolve()), "bundle_root": str(run.resolve()), "method": "supervised",
                "ckpt_dir": str((run / "models").resolve()), "split": "validation", "eval_dir": str(out.resolve()),
                "flip_tta": False,
            }  # fmt: skip
            layered = [CONFIGS / "train.json", CONFIGS / "evaluate.json"]
            run_bundle(layered, "evaluating", overrides, out.with_suffix(".log"), env)
        shifted = json.loads(summary.read_text())["mean_dice"]
        original = json.loads((run / "result.json").read_text())["mean_dice"]
        results[str(run)] = {"validation": round(100 * original, 2), "stain_shifted": round(100 * shifted, 2)}
        print(f"{run}: validation {100 * original:.2f}, stain-shifted {100 * shifted:.2f}", flush=True)
    atomic_write_json(args.workdir / "results.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
