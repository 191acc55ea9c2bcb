"""Inference speed of the bundles' student network, and whether data loading is the bottleneck.

Builds the network of a bundle's ``inference.json`` (MONAI ``UNet``; weights are random unless
``--checkpoint`` is given: speed does not depend on them), reads the validation images of a dataset in LViT's
layout through the project's evaluation transforms, and measures, each on its own:

1. **loading**: seconds per image to read + resize from disk (``dussss_monai.data.eval_transforms``), what a
   plain ``Dataset`` pays every epoch;
2. **cached loading**: seconds per image to fetch the same items from a ``CacheDataset`` (what the training
   and evaluation configs use: images are decoded once);
3. **network**: images per second of the forward pass alone at the bundle's size (``--size``, 224 by default)
   and batch (``--batch``), on ``--device``; peak memory (CUDA: allocated; CPU: resident set size).

If (2) is far below (3)'s seconds per image, data loading is not the bottleneck.

Usage::

    python benchmarks/inference_throughput.py --dataset_dir ../shared/data/monuseg --bundle bundles/dussss_monuseg
    python benchmarks/inference_throughput.py --device cuda --batch 32   # on a GPU

Measured: see docs/notebook/2026-11-27_benchmarks.md ("Inference and data loading").
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, Dataset

from dussss_monai.data import eval_transforms, prepare_datalist
from dussss_monai.errors import DuSSSError


def _per_item_seconds(dataset: Dataset, repeats: int = 1) -> float:
    """Mean seconds to fetch one item of ``dataset`` (``repeats`` passes)."""
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(dataset)):
            dataset[i]
    return (time.perf_counter() - start) / (repeats * max(len(dataset), 1))


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print one JSON line per measurement; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", default="../shared/data/monuseg", help="a dataset in LViT's layout")
    p.add_argument("--bundle", default="bundles/dussss_monuseg", help="bundle whose inference.json gives the network")
    p.add_argument("--checkpoint", default=None, help="optional model.pt to load")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=10, help="timed forward passes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="runs/benchmarks/inference", help="where the datalist is written")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = Path(args.bundle) / "configs" / "inference.json"
    if not config.is_file():
        raise DuSSSError(f"{config} not found: --bundle must be a bundle folder")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["device"] = f"$torch.device('{args.device}')"
    channels = int(parser["in_channels"])
    net = parser.get_parsed_content("network_def").to(args.device).eval()
    if args.checkpoint:
        net.load_state_dict(torch.load(args.checkpoint, map_location=args.device, weights_only=True))

    datalist = prepare_datalist(args.dataset_dir, args.workdir, labeled_ratio=1.0, seed=0, channels=channels)
    items = datalist["validation"] or datalist["training"]
    transform = eval_transforms(args.size, channels)
    load_s = _per_item_seconds(Dataset(items, transform))
    cached = CacheDataset(items, transform, cache_rate=1.0, num_workers=0, progress=False)
    cached_s = _per_item_seconds(cached, repeats=5)
    print(
        json.dumps(
            {
                "measure": "loading",
                "images": len(items),
                "s_per_image_disk": round(load_s, 4),
                "s_per_image_cached": round(cached_s, 6),
            }
        )
    )

    device = torch.device(args.device)
    x = torch.rand(args.batch, channels, args.size, args.size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    per_image = seconds / (args.iters * args.batch)
    print(
        json.dumps(
            {
                "measure": "network",
                "device": args.device,
                "size": args.size,
                "batch": args.batch,
                "images_per_s": round(1 / per_image, 2),
                "s_per_image": round(per_image, 4),
                "peak_mib": round(peak),
                "threads": args.threads,
            }
        )
    )
    print(
        json.dumps(
            {
                "measure": "verdict",
                "cached_loading_share": round(cached_s / (cached_s + per_image), 4),
                "disk_loading_share": round(load_s / (load_s + per_image), 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DuSSSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
