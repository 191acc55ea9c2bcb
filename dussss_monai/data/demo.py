"""Synthetic QaTa-COV19-like demo dataset: grey chest X-rays, infection masks and LViT-style text.

The generated folder has LViT's QaTa layout (``{Train,Val,Test}_Folder/img/*.png``,
``labelcol/mask_<image name>`` with values 0/255, and ``Train_text.xlsx`` etc. with columns ``Image``
(the mask file name, as in QaTa) and ``Description``), so every reader and bundle runs on it exactly
as on the real data.

What an image holds: a body with a brighter mediastinum, heart and spine, two dark lung fields with
rib shadows, film noise and random exposure. Infected areas are diffuse, irregular, soft-edged
opacities inside the lungs, each in one zone (upper, middle or lower third of one lung); they are the
mask. *Distractors* are opacities of similar brightness that are not infections: rounder, more
homogeneous and sharper-edged nodules, always placed in a lung zone that has no infection. The mask
excludes them and the sentence does not mention them, so the text (which zones are infected) carries
information that the image alone does not make obvious, as the method needs.

Text template (QaTa-COV19's): ``"<Bilateral|Unilateral> pulmonary infection, <n> infected area(s),
<zones> left lung and <zones> right lung."``, e.g. ``"Bilateral pulmonary infection, two infected
areas, lower left lung and upper right lung."``; zones are listed as ``upper``, ``middle``, ``lower``.

Left/right: the radiological convention of PA chest X-rays is used, as in QaTa-COV19: the
patient's LEFT lung is on the image's RIGHT side (larger column index), the patient's right lung on
the image's left. The heart bulges toward the patient's left (image right).

Command line::

    python -m dussss_monai.data.demo --output_dir demo_data [--n_train 160 --n_val 40 --n_test 40 --image_size 128 --seed 0]

Generation is deterministic from the parameters, takes seconds for a few hundred images, writes into a
temporary folder renamed at the end (a crash leaves nothing partial) and is skipped when
``output_dir`` already holds a complete dataset made with the same parameters (``demo_manifest.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dussss_monai.errors import ConfigError, DuSSSError

__all__ = ["DEMO_VERSION", "MANIFEST_NAME", "DemoSample", "render_sample", "describe", "generate_demo_dataset", "main"]

#: bump when the rendering changes, so that old demo folders are regenerated
DEMO_VERSION = 1
MANIFEST_NAME = "demo_manifest.json"
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIDES: tuple[str, ...] = ("left", "right")  # the patient's side
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_SPLITS = (("Train_Folder", "Train", "train"), ("Val_Folder", "Val", "val"), ("Test_Folder", "Test", "test"))


@dataclass(frozen=True)
class DemoSample:
    """One rendered sample.

    Attributes:
        image: ``uint8`` array ``(H, W)``.
        mask: ``uint8`` array ``(H, W)``, 0/255, the infected areas.
        distractor_mask: ``bool`` array ``(H, W)``, the distractor nodules (not in ``mask``).
        infected: ``(side, zone)`` pairs of the infected areas (patient's side).
        text: the description.
    """

    image: np.ndarray
    mask: np.ndarray
    distractor_mask: np.ndarray
    infected: tuple[tuple[str, str], ...]
    text: str


def describe(infected: Sequence[tuple[str, str]]) -> str:
    """QaTa-COV19 sentence for the infected ``(side, zone)`` pairs (left lung first, zones top-down)."""
    if not infected:
        raise ValueError("at least one infected area is needed")
    sides = [s for s in SIDES if any(side == s for side, _ in infected)]
    lat = "Bilateral" if len(sides) == 2 else "Unilateral"
    n = len(infected)
    parts = []
    for s in sides:
        zones = [z for z in ZONES if (s, z) in infected]
        parts.append(f"{' '.join(zones)} {s} lung")
    return f"{lat} pulmonary infection, {_NUMBERS[n]} infected area{'s' if n > 1 else ''}, {' and '.join(parts)}."


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a ``cells x cells`` grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 1.5


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def render_sample(rng: np.random.Generator, size: int = 128) -> DemoSample:
    """Render one synthetic chest X-ray with its infection mask and sentence.

    Args:
        rng: the random generator (the only source of randomness).
        size: image side in pixels.

    Returns:
        a :class:`DemoSample`.
    """
    s = size
    yy, xx = np.meshgrid((np.arange(s) + 0.5) / s, (np.arange(s) + 0.5) / s, indexing="ij")
    yy = yy.astype(np.float32)
    xx = xx.astype(np.float32)
    edge = 1.5 / s  # soft-edge width of anatomy, about a pixel and a half

    # body, mediastinum/spine, heart
    dx, dy, sc = rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(0.93, 1.05)
    body = _sigmoid((1.0 - _ellipse(yy, xx, 0.56 + dy, 0.5 + dx, 0.52 * sc, 0.47 * sc)) / (4 * edge))
    img = 0.08 + 0.47 * body
    spine = _sigmoid((0.06 * sc - np.abs(xx - 0.5 - dx)) / (2 * edge)) * body
    img += 0.18 * spine
    heart = _sigmoid((1.0 - _ellipse(yy, xx, 0.68 + dy, 0.56 + dx, 0.13 * sc, 0.13 * sc)) / (6 * edge))
    img += 0.12 * heart

    # lungs: index 0 = patient's left = image right; index 1 = patient's right = image left
    lungs = []
    lung_field = np.zeros_like(img)
    for side_sign, side in ((+1, "left"), (-1, "right")):
        cx = 0.5 + dx + side_sign * rng.uniform(0.18, 0.22) * sc
        cy = 0.46 + dy + rng.uniform(-0.02, 0.02)
        rx = rng.uniform(0.11, 0.14) * sc
        ry = rng.uniform(0.26, 0.31) * sc
        lung = _sigmoid((1.0 - _ellipse(yy, xx, cy, cx, ry, rx)) / (5 * edge)) * (1.0 - 0.8 * heart)
        lungs.append((side, cy, cx, ry, rx, lung))
        lung_field = np.maximum(lung_field, lung)
    img -= 0.30 * lung_field

    # ribs: curved bright bands, seen over the lungs
    phase = rng.uniform(0, 2 * np.pi)
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (yy * 7.0 + 1.6 * (xx - 0.5 - dx) ** 2) + phase)
    img += 0.07 * _sigmoid((ribs - 0.7) * 12) * lung_field

    # infections: choose lungs and zones
    bilateral = rng.random() < 0.55
    side_idx = [0, 1] if bilateral else [int(rng.integers(2))]
    infected: list[tuple[int, int]] = []
    for li in side_idx:
        k = int(rng.choice([1, 2], p=[0.6, 0.4])) if bilateral else int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        for z in sorted(rng.choice(3, size=k, replace=False).tolist()):
            infected.append((li, z))

    def zone_point(li: int, z: int, margin: float) -> tuple[float, float]:
        _, cy, cx, ry, rx, _ = lungs[li]
        top = cy - ry
        y = top + (z + rng.uniform(0.25, 0.75)) * (2 * ry / 3)
        half = rx * np.sqrt(max(1e-3, 1.0 - ((y - cy) / ry) ** 2))
        x = cx + rng.uniform(-1, 1) * max(0.0, half - margin)
        return float(y), float(x)

    mask = np.zeros((s, s), dtype=bool)
    opacity = np.zeros_like(img)
    for li, z in infected:
        lung = lungs[li][5]
        cy, cx = zone_point(li, z, 0.03)
        field = np.zeros_like(img)
        for _ in range(int(rng.integers(3, 6))):
            oy, ox = rng.normal(0, 0.035, size=2)
            sig = rng.uniform(0.025, 0.05)
            field += np.exp(-(((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2 * sig**2)))
        field *= 0.75 + 0.5 * (0.5 + 0.5 * _smooth_noise(rng, s, 10))  # irregular, patchy
        field = np.clip(field, 0, None) / max(float(field.max()), 1e-6)
        area = (field > 0.45) & (lung > 0.5)
        if not area.any():  # degenerate placement: force a small area at the centre
            area = (_ellipse(yy, xx, cy, cx, 0.03, 0.03) < 1) & (lung > 0.2)
        mask |= area
        opacity = np.maximum(opacity, rng.uniform(0.17, 0.24) * np.clip(field / 0.6, 0, 1) ** 1.5 * lung)

    # distractors: round, homogeneous, sharper-edged nodules in zones WITHOUT infection
    free = [(li, z) for li in range(2) for z in range(3) if (li, z) not in infected]
    n_dis = min(len(free), int(rng.choice([0, 1, 2], p=[0.25, 0.45, 0.30])))
    distractor = np.zeros((s, s), dtype=bool)
    for j in rng.permutation(len(free))[:n_dis].tolist():
        li, z = free[j]
        lung = lungs[li][5]
        cy, cx = zone_point(li, z, 0.05)
        r = rng.uniform(0.03, 0.05)
        sharp = rng.uniform(0.004, 0.010)
        d = np.sqrt((yy - cy) ** 2 + ((xx - cx) / rng.uniform(0.85, 1.15)) ** 2)
        blob = _sigmoid((r - d) / sharp) * (lung > 0.3)
        distractor |= (blob > 0.5) & ~mask
        opacity = np.maximum(opacity, rng.uniform(0.17, 0.24) * blob * np.where(mask, 0.0, 1.0))

    img += opacity
    img += 0.03 * _smooth_noise(rng, s, 16)  # soft-tissue texture
    gain, bias, gamma = rng.uniform(0.85, 1.1), rng.uniform(-0.04, 0.04), rng.uniform(0.85, 1.2)
    img = np.clip(img * gain + bias, 0, 1) ** gamma
    img += rng.normal(0, 0.02, size=img.shape)  # film noise
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    pairs = tuple((SIDES[0] if li == 0 else SIDES[1], ZONES[z]) for li, z in infected)
    return DemoSample(image, (mask.astype(np.uint8) * 255), distractor, pairs, describe(pairs))


def _params(n_train: int, n_val: int, n_test: int, image_size: int, seed: int) -> dict[str, int]:
    for name, v, low in (
        ("n_train", n_train, 1),
        ("n_val", n_val, 0),
        ("n_test", n_test, 0),
        ("image_size", image_size, 32),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return {"version": DEMO_VERSION, "n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test),
            "image_size": int(image_size), "seed": int(seed)}  # fmt: skip


def _is_complete(out: Path, params: dict[str, int]) -> bool:
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("params") != params:
        return False
    for (folder, prefix, _), n in zip(_SPLITS, (params["n_train"], params["n_val"], params["n_test"])):
        if n == 0:
            continue
        d = out / folder
        if not (d / f"{prefix}_text.xlsx").is_file():
            return False
        if len(list((d / "img").glob("*.png"))) != n or len(list((d / "labelcol").glob("*.png"))) != n:
            return False
    return True


def _write_text(path: Path, rows: list[tuple[str, str]]) -> None:
    import datetime

    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(["Image", "Description"])
    for r in rows:
        ws.append(list(r))
    stamp = datetime.datetime(2024, 1, 1)
    wb.properties.created = stamp
    wb.properties.modified = stamp
    wb.save(path)


def generate_demo_dataset(
    output_dir: str | os.PathLike,
    n_train: int = 160,
    n_val: int = 40,
    n_test: int = 40,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write the synthetic demo dataset in LViT's QaTa layout (idempotent).

    Args:
        output_dir: destination folder; must not exist, be empty, or hold a previous demo dataset
            (anything else is refused rather than overwritten).
        n_train, n_val, n_test: images per split (a split with 0 images is not written).
        image_size: image side in pixels.
        seed: the generation seed; image ``i`` of a split depends only on (seed, split, i).

    Returns:
        the output folder.

    Raises:
        ConfigError: bad parameters.
        DuSSSError: ``output_dir`` holds something other than a demo dataset, or cannot be written.
    """
    params = _params(n_train, n_val, n_test, image_size, seed)
    out = Path(output_dir)
    if out.is_dir() and _is_complete(out, params):
        return out
    if out.exists() and not out.is_dir():
        raise DuSSSError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise DuSSSError(f"{out} is not empty and holds no demo dataset ({MANIFEST_NAME}); refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for (folder, prefix, short), n in zip(_SPLITS, (n_train, n_val, n_test)):
            if n == 0:
                continue
            split_seed = [params["seed"], _SPLITS.index((folder, prefix, short))]
            (tmp / folder / "img").mkdir(parents=True)
            (tmp / folder / "labelcol").mkdir(parents=True)
            rows = []
            for i in range(n):
                rng = np.random.default_rng(split_seed + [i])
                sample = render_sample(rng, image_size)
                name = f"covid_demo_{short}_{i:04d}.png"
                Image.fromarray(sample.image, mode="L").save(tmp / folder / "img" / name)
                Image.fromarray(sample.mask, mode="L").save(tmp / folder / "labelcol" / f"mask_{name}")
                rows.append((f"mask_{name}", sample.text))
            _write_text(tmp / folder / f"{prefix}_text.xlsx", rows)
        manifest = {"generator": "dussss_monai.data.demo", "params": params,
                    "left_right": "radiological: the patient's left lung is on the image's right"}  # fmt: skip
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        old = None
        if out.exists():
            old = out.parent / f"{tmp.name}-old"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DuSSSError(f"could not write the demo dataset to {out}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 on a configuration or write problem)."""
    parser = argparse.ArgumentParser(
        prog="python -m dussss_monai.data.demo", description="Generate the synthetic QaTa-like demo dataset."
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--n_train", type=int, default=160)
    parser.add_argument("--n_val", type=int, default=40)
    parser.add_argument("--n_test", type=int, default=40)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = generate_demo_dataset(args.output_dir, args.n_train, args.n_val, args.n_test, args.image_size, args.seed)
    except DuSSSError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(
        f"demo dataset ready in {out} ({args.n_train} train, {args.n_val} val, {args.n_test} test, {args.image_size} px)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
