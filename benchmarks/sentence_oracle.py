"""How much can MoNuSeg's sentences tell a segmentation network? Two measurements, no training.

MoNuSeg's sentences (LViT's) say where nuclei are dense: "The nuclei density in the upper right is high.", "The
nuclei are evenly distributed.", "... sparsely ...", "... irregularly ...". They name at most a region of the tile.

1. **Do the sentences match the masks?** For every tile with a sentence that names a region (upper / lower /
   left / right and their combinations), the share of nucleus pixels of the named region against the rest of the
   tile, and whether the named region is the densest of the candidates (chance: one in as many candidates).
2. **An upper bound of region-level information.** A trained student predicts the validation tiles; an *oracle*
   that knows the ground truth then adds the best single logit offset per tile, or per quadrant of the tile, to
   the student's logits (grid search of the offset that maximises the tile's Dice). No sentence can carry more
   than such an oracle: a sentence knows less than the best offset of each quadrant. If the per-quadrant oracle
   gains little over the student, the text cannot gain more.

Usage::

    python benchmarks/sentence_oracle.py --dataset_dir ../shared/data/monuseg \\
        --checkpoint runs/monuseg/seed0/supervised/models/model.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dussss_monai.errors import DuSSSError  # noqa: E402

#: the candidate regions a sentence can name, as (rows, cols) slices of a tile split in halves
REGIONS = {
    "upper left": (slice(0, 1), slice(0, 1)),
    "upper right": (slice(0, 1), slice(1, 2)),
    "lower left": (slice(1, 2), slice(0, 1)),
    "lower right": (slice(1, 2), slice(1, 2)),
    "upper": (slice(0, 1), slice(0, 2)),
    "lower": (slice(1, 2), slice(0, 2)),
    "left": (slice(0, 2), slice(0, 1)),
    "right": (slice(0, 2), slice(1, 2)),
}
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
HALVES = ("upper", "lower", "left", "right")
OFFSETS = np.linspace(-4.0, 4.0, 33)


def named_region(sentence: str) -> str | None:
    """The region a sentence says is dense, or ``None``."""
    text = sentence.lower()
    for name in QUADRANTS + HALVES:  # the two-word names first
        if f"in the {name}" in text:
            return name
    return None


def region_share(mask: np.ndarray, name: str) -> float:
    """Nucleus share of the pixels of region ``name`` of a mask (the tile split into halves)."""
    h, w = mask.shape
    rows, cols = REGIONS[name]
    part = mask[rows.start * h // 2 : rows.stop * h // 2, cols.start * w // 2 : cols.stop * w // 2]
    return float(part.mean())


def sentence_agreement(items: Sequence[dict]) -> dict:
    """Measurement 1 on the LViT items (``label``, ``text``)."""
    from dussss_monai.data.image_io import read_mask_2d

    rows = []
    for item in items:
        name = named_region(item["text"])
        if name is None:
            continue
        mask = read_mask_2d(item["label"])[0]
        candidates = QUADRANTS if name in QUADRANTS else HALVES
        shares = {c: region_share(mask, c) for c in candidates}
        rows.append({"name": item.get("name"), "region": name, "share": shares[name],
                     "tile": float(mask.mean()), "densest": max(shares, key=shares.get) == name})  # fmt: skip
    return {
        "tiles_naming_a_region": len(rows),
        "named_region_is_densest": sum(r["densest"] for r in rows),
        "mean_share_named_region": statistics.fmean(r["share"] for r in rows) if rows else None,
        "mean_share_tile": statistics.fmean(r["tile"] for r in rows) if rows else None,
        "rows": rows,
    }


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    s = pred.sum() + truth.sum()
    return float(2 * (pred & truth).sum() / s) if s else 1.0


def best_offset(logits: np.ndarray, truth: np.ndarray, region: tuple[slice, slice] | None = None) -> np.ndarray:
    """``logits`` with the offset (in :data:`OFFSETS`) inside ``region`` (the whole map for ``None``) that gives the
    best Dice of the whole map."""
    best, best_dice = logits, -1.0
    h, w = logits.shape
    for offset in OFFSETS:
        trial = logits.copy()
        if region is None:
            trial += offset
        else:
            rows, cols = region
            trial[rows.start * h // 2 : rows.stop * h // 2, cols.start * w // 2 : cols.stop * w // 2] += offset
        d = dice(trial > 0, truth)
        if d > best_dice:
            best, best_dice = trial, d
    return best


def oracle_gains(checkpoint: Path, items: Sequence[dict], patch: int, score: int) -> dict:
    """Measurement 2: the student's Dice on the scoring grid, and with the oracle offsets."""
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet

    from dussss_monai.bundle import load_state_dict_into
    from dussss_monai.data.image_io import read_image_2d, read_mask_2d

    net = UNet(2, 3, 1, (32, 64, 128, 256, 512), (2, 2, 2, 2), num_res_units=2)
    load_state_dict_into(net, checkpoint).eval()
    inferer = SlidingWindowInferer((patch, patch), sw_batch_size=4, overlap=0.25, mode="gaussian")
    student, per_tile, per_quadrant = [], [], []
    for item in items:
        image = torch.from_numpy(read_image_2d(item["image"], channels=3))[None]
        with torch.no_grad():
            prob = torch.sigmoid(inferer(image, net))
        prob = F.interpolate(prob, size=(score, score), mode="bilinear", align_corners=False)[0, 0].numpy()
        logits = np.log(np.clip(prob, 1e-6, 1 - 1e-6) / np.clip(1 - prob, 1e-6, 1))
        truth = torch.from_numpy(read_mask_2d(item["label"]))[None].float()
        truth = F.interpolate(truth, size=(score, score), mode="nearest-exact")[0, 0].numpy() > 0.5
        student.append(dice(logits > 0, truth))
        per_tile.append(dice(best_offset(logits, truth) > 0, truth))
        quadrant = logits
        for name in QUADRANTS:  # coordinate ascent, one quadrant at a time
            quadrant = best_offset(quadrant, truth, REGIONS[name])
        per_quadrant.append(dice(quadrant > 0, truth))
    return {
        "student_dice": 100 * statistics.fmean(student),
        "oracle_offset_per_tile": 100 * statistics.fmean(per_tile),
        "oracle_offset_per_quadrant": 100 * statistics.fmean(per_quadrant),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "monuseg"))
    parser.add_argument("--checkpoint", default=None, help="a MoNuSeg student (models/model.pt) for measurement 2")
    parser.add_argument("--patch_size", type=int, default=256)
    parser.add_argument("--score_size", type=int, default=224)
    args = parser.parse_args(argv)
    try:
        from dussss_monai.data import read_lvit_dataset

        data = read_lvit_dataset(args.dataset_dir, channels=3)
        out: dict = {
            "train": sentence_agreement(data["training"]),
            "validation": sentence_agreement(data["validation"]),
        }
        if args.checkpoint:
            out["oracle"] = oracle_gains(Path(args.checkpoint), data["validation"], args.patch_size, args.score_size)
    except DuSSSError as e:
        print(f"sentence_oracle: {e}", file=sys.stderr)
        return 1
    for split in ("train", "validation"):
        out[split].pop("rows")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
