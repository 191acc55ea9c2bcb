"""The pictures of README.md and docs/results.md.

``overlays``: a model's masks over validation tiles. The inference bundle segments the tiles (as a user runs it);
each panel shows a crop of a tile with the pixels both masks mark in yellow, the true nuclei the model missed in
green and its false positives in red, and the tile's Dice in the title.

``curves``: validation Dice per epoch of training runs, read from their TensorBoard logs (``val_mean_dice``).

Usage::

    python benchmarks/figures.py overlays --dataset_dir ../shared/data/monuseg --out docs/figures/monuseg_shipped_model.png
    python benchmarks/figures.py curves --run supervised=runs/a/run --run "mean teacher=runs/b/run" \\
        --title "MoNuSeg, 25 % of the masks, seed 0" --out docs/figures/monuseg_learning_curves.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MONUSEG = REPO / "bundles" / "dussss_monuseg"


def tile_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``image`` (RGB, uint8) with both-marked pixels yellow, missed ones green and false ones red, half opaque."""
    out = image.astype(np.float32).copy()
    for mask, colour in ((truth & pred, (255, 220, 0)), (truth & ~pred, (0, 200, 0)), (~truth & pred, (230, 0, 0))):
        out[mask] = 0.5 * out[mask] + 0.5 * np.asarray(colour, np.float32)
    return out.astype(np.uint8)


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    total = truth.sum() + pred.sum()
    return 100.0 if total == 0 else 200.0 * float((truth & pred).sum()) / float(total)


def overlays(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import monai.bundle
    from PIL import Image

    from dussss_monai.data import read_evaluation_items

    items = read_evaluation_items(args.dataset_dir, split="validation", channels=3)[: args.tiles]
    with tempfile.TemporaryDirectory() as tmp:
        tiles = Path(tmp) / "tiles"
        tiles.mkdir()
        for item in items:
            (tiles / Path(item["image"]).name).symlink_to(item["image"])
        monai.bundle.run(
            config_file=str(MONUSEG / "configs" / "inference.json"),
            input_dir=str(tiles),
            output_dir=str(Path(tmp) / "masks"),
            checkpoint=str(Path(args.checkpoint).resolve()),
        )
        fig, axes = plt.subplots(1, len(items), figsize=(4 * len(items), 4.4))
        for ax, item in zip(np.atleast_1d(axes), items):
            image = np.asarray(Image.open(item["image"]).convert("RGB"))
            truth = np.asarray(Image.open(item["label"])) > 0
            mask = Path(tmp) / "masks" / f"{Path(item['image']).stem}_mask.png"
            pred = np.asarray(Image.open(mask)) > 0
            truth = truth[..., 0] if truth.ndim == 3 else truth
            c = args.crop
            ax.imshow(tile_overlay(image, truth, pred)[:c, :c])
            ax.set_title(f"{Path(item['image']).stem[:12]}: Dice {dice(truth, pred):.1f} (whole tile)", fontsize=9)
            ax.axis("off")
    fig.suptitle("yellow: nuclei found, green: missed, red: false positives", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


def validation_curve(run_folder: str | Path, tag: str = "val_mean_dice") -> tuple[list[int], list[float]]:
    """``(epochs, values)`` of ``tag`` in the TensorBoard logs of a run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted(Path(run_folder).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            points.update({int(e.step): float(e.value) for e in accumulator.Scalars(tag)})
    if not points:
        raise SystemExit(f"{run_folder}: no '{tag}' in its TensorBoard logs")
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def curves(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for spec in args.run:
        name, _, folder = spec.partition("=")
        epochs, values = validation_curve(folder)
        ax.plot(epochs, [100 * v for v in values], label=name, marker="o", markersize=3)
    ax.set_xlabel("epoch (25 iterations)")
    ax.set_ylabel("validation Dice (%)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="figure", required=True)
    o = sub.add_parser("overlays", help="a model's masks over validation tiles")
    o.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "monuseg"))
    o.add_argument("--checkpoint", default=str(MONUSEG / "models" / "model.pt"))
    o.add_argument("--tiles", type=int, default=3)
    o.add_argument("--crop", type=int, default=400, help="the top-left crop of each tile shown, in pixels")
    o.add_argument("--out", required=True)
    o.add_argument("--dpi", type=int, default=90)
    c = sub.add_parser("curves", help="validation Dice per epoch of runs")
    c.add_argument("--run", action="append", required=True, help="NAME=RUN_FOLDER (its TensorBoard logs)")
    c.add_argument("--title", default="")
    c.add_argument("--out", required=True)
    c.add_argument("--dpi", type=int, default=90)
    args = parser.parse_args(argv)
    return overlays(args) if args.figure == "overlays" else curves(args)


if __name__ == "__main__":
    sys.exit(main())
