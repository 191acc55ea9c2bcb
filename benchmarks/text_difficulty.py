"""How hard the generated data is without its sentences: lesions against distractors, measured without long training.

Three measurements on images of the generator (``dussss_monai.data.demo``), rendered as ``generate_demo_dataset``
renders them (image ``i`` of the training split from the seed ``[seed, 0, i]``, of the validation split from
``[seed, 1, i]``) and resized to the network's input size as the pipelines do (bilinear, masks nearest):

1. Per object: every connected lesion of the mask and every distractor, with six statistics of the image under
   its true outline (so an oracle's outline, the best case for the image alone): ``contrast`` (mean inside minus
   the mean of a 3-pixel ring of lung around it), ``edge`` (mean gradient on the outline over the contrast),
   ``halo`` (how bright the 1-2 pixels outside are, over the contrast: soft edges are bright there),
   ``roundness`` (area over the disc through the farthest pixel), ``texture`` (standard deviation inside over the
   contrast) and ``area``. Each statistic's AUC for lesion against distractor (0.5: no information, 1: perfect;
   the better of the two directions), and the cross-validated AUC of a logistic regression on all six.
2. Per image: the Dice of three oracles against the lesion mask: every opacity (lesions and distractors: an
   image-only model that finds every opacity but cannot tell them apart), every opacity inside the lung zones the
   sentence names (what the sentence can add to it), and the named zones alone (the sentence without the image).
3. With ``--probe_steps N``: a small supervised U-Net (the demo's) trained for N steps on the labeled share of the
   training images, scored on the validation images: Dice, the share of distractor pixels it marks, and the Dice
   of its prediction restricted to the named zones (what a perfect use of the sentence would add to it).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/text_difficulty.py --difficulty text_benchmark --size 224 --net_size 96 \\
        --n_images 200 [--probe_steps 300 --n_labeled 150 --n_val 100]

Prints one JSON object. Figures: ``docs/notebook/2026-12-06_text_benchmark.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.stats import mannwhitneyu

from dussss_monai.data.demo import SIDES, ZONES, DemoDifficulty, DemoSample, parse_difficulty, render_sample
from dussss_monai.errors import DuSSSError

STATISTICS = ("contrast", "edge", "halo", "roundness", "texture", "area")
_EIGHT = np.ones((3, 3), dtype=bool)


def _resize(array: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size, size), method))


def sample_at(sample: DemoSample, size: int) -> dict[str, np.ndarray]:
    """The sample at the network's size: ``image`` float in [0, 1], ``lesion``, ``distractor``, ``named`` (the
    lung zones the sentence names) and ``lung`` as boolean arrays."""
    assert sample.zone_map is not None
    zones = _resize((sample.zone_map + 1).astype(np.uint8), size, nearest=True).astype(np.int16) - 1
    named = [3 * SIDES.index(side) + ZONES.index(zone) for side, zone in sample.infected]
    return {
        "image": _resize(sample.image, size).astype(np.float32) / 255.0,
        "lesion": _resize(sample.mask, size, nearest=True) > 0,
        "distractor": _resize(sample.distractor_mask.astype(np.uint8) * 255, size, nearest=True) > 0,
        "named": np.isin(zones, named),
        "lung": zones >= 0,
    }


def object_statistics(image: np.ndarray, objects: np.ndarray, others: np.ndarray, lung: np.ndarray) -> list[dict]:
    """The statistics of :data:`STATISTICS` of every connected object (8-connectivity) of ``objects``.

    Args:
        image: float image ``(H, W)``.
        objects: the objects' mask.
        others: pixels that belong to no background ring (the other kind of object).
        lung: the lung fields (rings are taken inside them).

    Returns:
        one dict per object of at least 4 pixels with a ring of at least 3 pixels.
    """
    labels, n = ndimage.label(objects, structure=_EIGHT)
    gy, gx = np.gradient(image)
    gradient = np.hypot(gy, gx)
    out = []
    for k in range(1, n + 1):
        inside = labels == k
        area = int(inside.sum())
        ring = ndimage.binary_dilation(inside, iterations=3) & ~inside & ~others & lung
        if area < 4 or ring.sum() < 3:
            continue
        contrast = float(image[inside].mean() - image[ring].mean())
        scale = max(abs(contrast), 1e-3)
        outline = ndimage.binary_dilation(inside) & ~ndimage.binary_erosion(inside)
        near = ndimage.binary_dilation(inside, iterations=2) & ~inside & ~others & lung
        far = ndimage.binary_dilation(inside, iterations=6) & ~ndimage.binary_dilation(inside, iterations=4)
        far &= ~others & lung
        halo = (image[near].mean() - image[far].mean()) / scale if near.sum() > 2 and far.sum() > 2 else 0.0
        yy, xx = np.nonzero(inside)
        reach = float(((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2).max()) + 0.5
        out.append(
            {
                "contrast": contrast,
                "edge": float(gradient[outline].mean() / scale),
                "halo": float(halo),
                "roundness": area / (np.pi * reach),
                "texture": float(image[inside].std() / scale),
                "area": area / image.size,
            }
        )
    return out


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The area under the ROC curve of one statistic, in the better of its two directions (0.5 to 1)."""
    u = float(mannwhitneyu(positive, negative).statistic) / (len(positive) * len(negative))
    return max(u, 1.0 - u)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (prediction & truth).sum() / total)


def _samples(difficulty: DemoDifficulty, size: int, seed: int, split: int, n: int) -> list[DemoSample]:
    return [render_sample(np.random.default_rng([seed, split, i]), size, difficulty) for i in range(n)]


def separability(difficulty: DemoDifficulty, size: int, net_size: int, n_images: int, seed: int) -> dict[str, Any]:
    """Measurements 1 and 2 (module docstring) on the first ``n_images`` training images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lesions: list[dict] = []
    distractors: list[dict] = []
    oracle: dict[str, list[float]] = {"opacities": [], "opacities_in_named_zones": [], "named_zones": []}
    with_distractor = 0
    for sample in _samples(difficulty, size, seed, 0, n_images):
        s = sample_at(sample, net_size)
        lesions += object_statistics(s["image"], s["lesion"], s["distractor"], s["lung"])
        distractors += object_statistics(s["image"], s["distractor"], s["lesion"], s["lung"])
        with_distractor += int(s["distractor"].any())
        opacities = s["lesion"] | s["distractor"]
        oracle["opacities"].append(dice(opacities, s["lesion"]))
        oracle["opacities_in_named_zones"].append(dice(opacities & s["named"], s["lesion"]))
        oracle["named_zones"].append(dice(s["named"], s["lesion"]))
    result: dict[str, Any] = {
        "images_with_distractor": round(with_distractor / n_images, 3),
        "lesions": len(lesions),
        "distractors": len(distractors),
        "oracle_dice": {k: round(100 * float(np.mean(v)), 2) for k, v in oracle.items()},
    }
    if lesions and distractors:
        result["auc"] = {k: round(auc([o[k] for o in lesions], [o[k] for o in distractors]), 3) for k in STATISTICS}
        result["median_lesion"] = {k: round(float(np.median([o[k] for o in lesions])), 4) for k in STATISTICS}
        result["median_distractor"] = {k: round(float(np.median([o[k] for o in distractors])), 4) for k in STATISTICS}
        x = np.array([[o[k] for k in STATISTICS] for o in lesions + distractors])
        y = np.array([1] * len(lesions) + [0] * len(distractors))
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        p = cross_val_predict(model, x, y, cv=5, method="predict_proba")[:, 1]
        result["auc_all_statistics"] = round(auc(p[y == 1], p[y == 0]), 3)
    return result


def supervised_probe(
    difficulty: DemoDifficulty, size: int, net_size: int, n_labeled: int, n_val: int, steps: int, seed: int
) -> dict[str, Any]:
    """Measurement 3 (module docstring): the demo's U-Net and loss, Adam 3e-3, batches of 16, no augmentation."""
    import torch
    from monai.networks.nets import UNet

    from dussss_monai.losses import SegmentationLoss

    torch.manual_seed(seed)
    train = [sample_at(s, net_size) for s in _samples(difficulty, size, seed, 0, n_labeled)]
    val = [sample_at(s, net_size) for s in _samples(difficulty, size, seed, 1, n_val)]
    images = torch.from_numpy(np.stack([t["image"] for t in train]))[:, None]
    masks = torch.from_numpy(np.stack([t["lesion"] for t in train]).astype(np.float32))[:, None]
    net = UNet(2, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch")
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_function = SegmentationLoss()
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(train), (16,), generator=generator)
        optimizer.zero_grad()
        loss = loss_function(net(images[idx]), masks[idx])
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(np.stack([v["image"] for v in val]))[:, None])
    predicted = (logits[:, 0] > 0).numpy()
    scores: dict[str, list[float]] = {"dice": [], "dice_in_named_zones": []}
    marked = distractor_pixels = found = lesion_pixels = 0
    for p, v in zip(predicted, val):
        scores["dice"].append(dice(p, v["lesion"]))
        scores["dice_in_named_zones"].append(dice(p & v["named"], v["lesion"]))
        marked += int((p & v["distractor"]).sum())
        distractor_pixels += int(v["distractor"].sum())
        found += int((p & v["lesion"]).sum())
        lesion_pixels += int(v["lesion"].sum())
    return {
        "steps": steps,
        "train_seconds": round(time.time() - start, 1),
        **{k: round(100 * float(np.mean(v)), 2) for k, v in scores.items()},
        "distractor_pixels_marked": round(100 * marked / max(distractor_pixels, 1), 2),
        "lesion_pixels_found": round(100 * found / max(lesion_pixels, 1), 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--difficulty", default="demo", help="a named difficulty or a JSON object of fields")
    parser.add_argument("--size", type=int, default=224, help="the generated image size")
    parser.add_argument("--net_size", type=int, default=96, help="the network's input size")
    parser.add_argument("--n_images", type=int, default=200, help="training images for the separability")
    parser.add_argument("--seed", type=int, default=0, help="the generation seed")
    parser.add_argument("--probe_steps", type=int, default=0, help="train the supervised probe this many steps")
    parser.add_argument("--n_labeled", type=int, default=150)
    parser.add_argument("--n_val", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        difficulty = parse_difficulty(args.difficulty)
    except DuSSSError as e:
        print(f"text_difficulty: {e}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"difficulty": args.difficulty, "size": args.size, "net_size": args.net_size}
    result.update(separability(difficulty, args.size, args.net_size, args.n_images, args.seed))
    if args.probe_steps > 0:
        result["probe"] = supervised_probe(
            difficulty, args.size, args.net_size, args.n_labeled, args.n_val, args.probe_steps, args.seed
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
