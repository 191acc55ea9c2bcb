"""Synthetic QaTa-COV19-like demo dataset: grey chest X-rays, infection masks and LViT-style text.

The generated folder has LViT's QaTa layout (``{Train,Val,Test}_Folder/img/*.png``,
``labelcol/mask_<image name>`` with values 0/255, and ``Train_text.xlsx`` etc. with columns ``Image``
(the mask file name, as in QaTa) and ``Description``), so every reader and bundle runs on it exactly
as on the real data.

What an image holds: a body with a brighter mediastinum, heart and spine, two dark lung fields with
rib shadows, film noise and random exposure. Infected areas are diffuse, irregular, soft-edged
opacities inside the lungs, each in one zone (upper, middle or lower third of one lung); they are the
mask. *Distractors* are opacities of similar brightness that are not infections: at the demo's difficulty
rounder, more homogeneous and sharper-edged nodules, always placed in a lung zone that has no infection. The mask
excludes them and the sentence does not mention them, so the text (which zones are infected) carries
information that the image alone does not make obvious, as the method needs.

Text template (QaTa-COV19's): ``"<Bilateral|Unilateral> pulmonary infection, <n> infected area(s),
<zones> left lung and <zones> right lung."``, e.g. ``"Bilateral pulmonary infection, two infected
areas, lower left lung and upper right lung."``; zones are listed as ``upper``, ``middle``, ``lower``.

Left/right: the radiological convention of PA chest X-rays is used, as in QaTa-COV19: the
patient's LEFT lung is on the image's RIGHT side (larger column index), the patient's right lung on
the image's left. The heart bulges toward the patient's left (image right).

Difficulty: how often distractors appear, how bright, large, round and sharp-edged lesions and distractors are,
and the noise, are the fields of :class:`DemoDifficulty`; its defaults are the ``make demo`` data, and
:data:`DIFFICULTIES` names settings (``"text_benchmark"``: the text benchmark of
``docs/notebook/2026-12-06_text_benchmark.md``).

Command line::

    python -m dussss_monai.data.demo --output_dir demo_data [--n_train 160 --n_val 40 --n_test 40 --image_size 128 --seed 0]
        [--difficulty text_benchmark | --difficulty '{"distractor_counts": [0.1, 0.5, 0.4]}']

Generation is deterministic from the parameters, takes seconds for a few hundred images, writes into a
temporary folder renamed at the end (a crash leaves nothing partial) and is skipped when
``output_dir`` already holds a complete dataset made with the same parameters (``demo_manifest.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dussss_monai.errors import ConfigError, DuSSSError

__all__ = [
    "DEMO_VERSION",
    "MANIFEST_NAME",
    "DemoDifficulty",
    "DIFFICULTIES",
    "parse_difficulty",
    "DemoSample",
    "render_sample",
    "regenerate_sample",
    "describe",
    "number_word",
    "NO_INFECTION",
    "generate_demo_dataset",
    "main",
]

#: bump when the rendering changes, so that old demo folders are regenerated
DEMO_VERSION = 1
MANIFEST_NAME = "demo_manifest.json"
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIDES: tuple[str, ...] = ("left", "right")  # the patient's side
_NUMBERS = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
}
#: the sentence of an image without infected area
NO_INFECTION = "No pulmonary infection."
_SPLITS = (("Train_Folder", "Train", "train"), ("Val_Folder", "Val", "val"), ("Test_Folder", "Test", "test"))


@dataclass(frozen=True)
class DemoDifficulty:
    """What makes the generated data easy or hard: the defaults render the ``make demo`` data exactly.

    Sizes and widths are fractions of the image side; brightness is on the image's ``[0, 1]`` scale (the lung
    field is about 0.25 darker than the body; the added opacity of an infection is its peak). ``(low, high)``
    pairs are the range a value is drawn from, uniformly, per lesion or distractor.

    Attributes:
        distractor_counts: probability of 0, 1, 2, ... distractors in an image (capped by the lung zones
            without infection); the length sets the most distractors an image can have.
        distractor_opacity: peak brightness added by a distractor.
        distractor_radius: radius of a distractor.
        distractor_edge: width of a distractor's edge (sigmoid scale; small = sharp). Lesions fade over
            about their blob width, 0.025-0.05.
        distractor_aspect: horizontal stretch of a distractor (1 = round).
        distractor_texture: patchiness of a distractor, from 0 (homogeneous) to 1 (as patchy as a lesion).
        lesion_opacity: peak brightness added by an infected area.
        lesion_blobs: how many Gaussian blobs make up an infected area (inclusive range).
        lesion_blob_sigma: width of each blob.
        lesion_spread: standard deviation of the blobs' offsets from the area's centre (irregularity).
        texture: amplitude of the soft-tissue texture over the whole image.
        noise: standard deviation of the film noise (per pixel).
    """

    distractor_counts: tuple[float, ...] = (0.25, 0.45, 0.30)
    distractor_opacity: tuple[float, float] = (0.17, 0.24)
    distractor_radius: tuple[float, float] = (0.03, 0.05)
    distractor_edge: tuple[float, float] = (0.004, 0.010)
    distractor_aspect: tuple[float, float] = (0.85, 1.15)
    distractor_texture: float = 0.0
    lesion_opacity: tuple[float, float] = (0.17, 0.24)
    lesion_blobs: tuple[int, int] = (3, 5)
    lesion_blob_sigma: tuple[float, float] = (0.025, 0.05)
    lesion_spread: float = 0.035
    texture: float = 0.03
    noise: float = 0.02

    def __post_init__(self) -> None:
        counts = tuple(_at_least_zero("distractor_counts", p) for p in self.distractor_counts)
        if not counts or abs(sum(counts) - 1.0) > 1e-6:
            raise ConfigError(
                f"distractor_counts must be probabilities of 0, 1, 2, ... distractors summing to 1, got {counts}"
            )
        object.__setattr__(self, "distractor_counts", counts)
        for name in ("distractor_opacity", "distractor_radius", "distractor_edge", "distractor_aspect",
                     "lesion_opacity", "lesion_blobs", "lesion_blob_sigma"):  # fmt: skip
            low, high = _range(name, getattr(self, name))
            if name in ("distractor_radius", "distractor_edge", "distractor_aspect", "lesion_blob_sigma") and low <= 0:
                raise ConfigError(f"{name} must be above 0, got {getattr(self, name)!r}")
            if name == "lesion_blobs" and (low < 1 or int(low) != low or int(high) != high):
                raise ConfigError(f"lesion_blobs must be whole numbers >= 1, got {self.lesion_blobs!r}")
            object.__setattr__(self, name, (int(low), int(high)) if name == "lesion_blobs" else (low, high))
        for name in ("distractor_texture", "lesion_spread", "texture", "noise"):
            object.__setattr__(self, name, _at_least_zero(name, getattr(self, name)))
        if self.distractor_texture > 1:
            raise ConfigError(f"distractor_texture must be at most 1, got {self.distractor_texture!r}")


def _at_least_zero(name: str, value: Any) -> float:
    """``value`` as a finite number ``>= 0``.

    Raises:
        ConfigError: anything else.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (np.isfinite(number) and number >= 0):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    return number


def _range(name: str, value: Any) -> tuple[float, float]:
    """``value`` as a range ``(low, high)`` with ``0 <= low <= high``.

    Raises:
        ConfigError: anything else.
    """
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a range [low, high], got {value!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low <= high):
        raise ConfigError(f"{name} must be a range [low, high] with 0 <= low <= high, got {value!r}")
    return low, high


#: named difficulties: ``demo`` (the defaults, ``make demo``) and ``text_benchmark``
#: (docs/notebook/2026-12-06_text_benchmark.md): distractors in 87 % of the images instead of 68 %, as large as the
#: infections, softer-edged, elongated up to 1.7 : 1 and a little patchy, so that no single image statistic tells
#: them from infections with an AUC above 0.71 (all six together: 0.86; the demo's: 0.97)
DIFFICULTIES: dict[str, DemoDifficulty] = {
    "demo": DemoDifficulty(),
    "text_benchmark": DemoDifficulty(
        distractor_counts=(0.10, 0.35, 0.35, 0.20),
        distractor_opacity=(0.18, 0.25),
        distractor_radius=(0.035, 0.065),
        distractor_edge=(0.005, 0.015),
        distractor_aspect=(0.6, 1.7),
        distractor_texture=0.25,
    ),
}


def parse_difficulty(value: str | DemoDifficulty | None) -> DemoDifficulty:
    """A difficulty from a name of :data:`DIFFICULTIES` or a JSON object of fields (the rest: the demo's).

    Raises:
        ConfigError: an unknown name or field, or a value out of range.
    """
    if value is None:
        return DemoDifficulty()
    if isinstance(value, DemoDifficulty):
        return value
    text = value.strip()
    if not text.startswith("{"):
        if text not in DIFFICULTIES:
            raise ConfigError(
                f"unknown difficulty {text!r}: give one of {', '.join(DIFFICULTIES)} or a JSON object of fields "
                "such as '{\"distractor_counts\": [0.1, 0.5, 0.4]}'"
            )
        return DIFFICULTIES[text]
    try:
        given = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"difficulty is not valid JSON ({e}): {text!r}") from e
    known = {f.name for f in fields(DemoDifficulty)}
    unknown = sorted(set(given) - known) if isinstance(given, dict) else []
    if not isinstance(given, dict) or unknown:
        raise ConfigError(
            f"difficulty: unknown field(s) {', '.join(map(repr, unknown)) or '(not an object)'}; "
            f"the fields are {', '.join(sorted(known))}"
        )
    try:
        return replace(DemoDifficulty(), **given)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"difficulty: {e}") from e


@dataclass(frozen=True)
class DemoSample:
    """One rendered sample.

    Attributes:
        image: ``uint8`` array ``(H, W)``.
        mask: ``uint8`` array ``(H, W)``, 0/255, the infected areas.
        distractor_mask: ``bool`` array ``(H, W)``, the distractor nodules (not in ``mask``).
        infected: ``(side, zone)`` pairs of the infected areas (patient's side).
        text: the description.
        zone_map: ``int8`` array ``(H, W)``: ``3 * side + zone`` inside a lung (side 0 the patient's left, zone 0
            the upper third of that lung), -1 outside the lungs.
    """

    image: np.ndarray
    mask: np.ndarray
    distractor_mask: np.ndarray
    infected: tuple[tuple[str, str], ...]
    text: str
    zone_map: np.ndarray | None = None


def number_word(n: int) -> str:
    """``n`` in words up to ten (``"three"``), in digits above."""
    return _NUMBERS.get(n, str(n))


def describe(infected: Sequence[tuple[str, str]], n_areas: int | None = None) -> str:
    """QaTa-COV19 sentence for the infected ``(side, zone)`` pairs (left lung first, zones top-down).

    Args:
        infected: the ``(side, zone)`` pairs, patient's side (``"left"``, ``"right"``) and zone (``"upper"``,
            ``"middle"``, ``"lower"``); empty: :data:`NO_INFECTION`.
        n_areas: the number of infected areas the sentence states (default: one per pair, as the generator
            places them; an area spanning two zones makes fewer areas than pairs).

    Returns:
        e.g. ``"Bilateral pulmonary infection, two infected areas, lower left lung and upper right lung."``.

    Raises:
        ValueError: ``n_areas`` below 1 for a non-empty ``infected``.
    """
    if not infected:
        return NO_INFECTION
    sides = [s for s in SIDES if any(side == s for side, _ in infected)]
    lat = "Bilateral" if len(sides) == 2 else "Unilateral"
    n = len(infected) if n_areas is None else int(n_areas)
    if n < 1:
        raise ValueError(f"n_areas must be >= 1 for an infected image, got {n_areas!r}")
    parts = []
    for s in sides:
        zones = [z for z in ZONES if (s, z) in infected]
        parts.append(f"{' '.join(zones)} {s} lung")
    return f"{lat} pulmonary infection, {number_word(n)} infected area{'s' if n > 1 else ''}, {' and '.join(parts)}."


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a ``cells x cells`` grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 1.5


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def render_sample(rng: np.random.Generator, size: int = 128, difficulty: DemoDifficulty | None = None) -> DemoSample:
    """Render one synthetic chest X-ray with its infection mask and sentence.

    Args:
        rng: the random generator (the only source of randomness).
        size: image side in pixels.
        difficulty: the lesions, distractors and noise (default: the demo's).

    Returns:
        a :class:`DemoSample`.
    """
    d = difficulty if difficulty is not None else DemoDifficulty()
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
        for _ in range(int(rng.integers(d.lesion_blobs[0], d.lesion_blobs[1] + 1))):
            oy, ox = rng.normal(0, d.lesion_spread, size=2)
            sig = rng.uniform(*d.lesion_blob_sigma)
            field += np.exp(-(((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2 * sig**2)))
        field *= 0.75 + 0.5 * (0.5 + 0.5 * _smooth_noise(rng, s, 10))  # irregular, patchy
        field = np.clip(field, 0, None) / max(float(field.max()), 1e-6)
        area = (field > 0.45) & (lung > 0.5)
        if not area.any():  # degenerate placement: force a small area at the centre
            area = (_ellipse(yy, xx, cy, cx, 0.03, 0.03) < 1) & (lung > 0.2)
        mask |= area
        opacity = np.maximum(opacity, rng.uniform(*d.lesion_opacity) * np.clip(field / 0.6, 0, 1) ** 1.5 * lung)

    # distractors in zones WITHOUT infection (at the demo's difficulty: round, homogeneous, sharper-edged nodules)
    free = [(li, z) for li in range(2) for z in range(3) if (li, z) not in infected]
    n_dis = min(len(free), int(rng.choice(np.arange(len(d.distractor_counts)), p=list(d.distractor_counts))))
    distractor = np.zeros((s, s), dtype=bool)
    for j in rng.permutation(len(free))[:n_dis].tolist():
        li, z = free[j]
        lung = lungs[li][5]
        cy, cx = zone_point(li, z, 0.05)
        r = rng.uniform(*d.distractor_radius)
        sharp = rng.uniform(*d.distractor_edge)
        dist = np.sqrt((yy - cy) ** 2 + ((xx - cx) / rng.uniform(*d.distractor_aspect)) ** 2)
        blob = _sigmoid((r - dist) / sharp) * (lung > 0.3)
        distractor |= (blob > 0.5) & ~mask
        if d.distractor_texture > 0:  # patchy like an infection (no draw at the demo's 0: its data stay the same)
            blob = blob * (1.0 + 0.25 * d.distractor_texture * _smooth_noise(rng, s, 10))
        opacity = np.maximum(opacity, rng.uniform(*d.distractor_opacity) * blob * np.where(mask, 0.0, 1.0))

    img += opacity
    img += d.texture * _smooth_noise(rng, s, 16)  # soft-tissue texture
    gain, bias, gamma = rng.uniform(0.85, 1.1), rng.uniform(-0.04, 0.04), rng.uniform(0.85, 1.2)
    img = np.clip(img * gain + bias, 0, 1) ** gamma
    img += rng.normal(0, d.noise, size=img.shape)  # film noise
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    zone_map = np.full((s, s), -1, dtype=np.int8)
    for li, (_, cy, _, ry, _, lung) in enumerate(lungs):
        zone = np.clip(np.floor((yy - (cy - ry)) / (2 * ry / 3)), 0, 2).astype(np.int8)
        inside = (lung > 0.5) & (zone_map < 0)
        zone_map[inside] = 3 * li + zone[inside]
    pairs = tuple((SIDES[0] if li == 0 else SIDES[1], ZONES[z]) for li, z in infected)
    return DemoSample(image, (mask.astype(np.uint8) * 255), distractor, pairs, describe(pairs), zone_map)


def _params(
    n_train: int, n_val: int, n_test: int, image_size: int, seed: int, difficulty: DemoDifficulty
) -> dict[str, Any]:
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
    params: dict[str, Any] = {"version": DEMO_VERSION, "n_train": int(n_train), "n_val": int(n_val),
                              "n_test": int(n_test), "image_size": int(image_size), "seed": int(seed)}  # fmt: skip
    if difficulty != DemoDifficulty():  # the demo's manifest stays as it was
        params["difficulty"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(difficulty).items()}
    return params


def _is_complete(out: Path, params: dict[str, Any]) -> bool:
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


def _render_item(params: dict[str, Any], split: int, index: int, settings: DemoDifficulty) -> DemoSample:
    """Image ``index`` of split ``split`` (0 train, 1 validation, 2 test): it depends only on these and the seed."""
    return render_sample(np.random.default_rng([params["seed"], split, index]), params["image_size"], settings)


def regenerate_sample(dataset_dir: str | os.PathLike, name: str) -> DemoSample:
    """Render again the sample behind image ``name`` of a generated dataset, from its manifest: what is not written
    to disk (the distractor mask, the lung zones) for benchmarks that score by region.

    Args:
        dataset_dir: a folder written by :func:`generate_demo_dataset`.
        name: an image file name of it, e.g. ``covid_demo_train_0005.png``.

    Returns:
        the :class:`DemoSample`, identical to the one written.

    Raises:
        DuSSSError: no manifest in ``dataset_dir``, or ``name`` not one of its images.
    """
    manifest_path = Path(dataset_dir) / MANIFEST_NAME
    try:
        params = json.loads(manifest_path.read_text(encoding="utf-8"))["params"]
    except (OSError, ValueError, KeyError) as e:
        raise DuSSSError(f"{manifest_path}: not a generated demo dataset ({e})") from e
    shorts = [short for _, _, short in _SPLITS]
    found = re.fullmatch(r"covid_demo_(" + "|".join(shorts) + r")_(\d+)", Path(name).stem)
    if found is None:
        raise DuSSSError(f"{name!r} is not an image name of the generated dataset {dataset_dir}")
    split, index = shorts.index(found.group(1)), int(found.group(2))
    difficulty = params.get("difficulty")
    settings = parse_difficulty(json.dumps(difficulty) if difficulty else None)
    return _render_item(params, split, index, settings)


def generate_demo_dataset(
    output_dir: str | os.PathLike,
    n_train: int = 160,
    n_val: int = 40,
    n_test: int = 40,
    image_size: int = 128,
    seed: int = 0,
    difficulty: DemoDifficulty | str | None = None,
) -> Path:
    """Write the synthetic demo dataset in LViT's QaTa layout (idempotent).

    Args:
        output_dir: destination folder; must not exist, be empty, or hold a previous demo dataset
            (anything else is refused rather than overwritten).
        n_train, n_val, n_test: images per split (a split with 0 images is not written).
        image_size: image side in pixels.
        seed: the generation seed; image ``i`` of a split depends only on (seed, split, i).
        difficulty: a :class:`DemoDifficulty`, a name of :data:`DIFFICULTIES` or a JSON object of fields
            (default: the demo's). A non-default difficulty is recorded in the manifest.

    Returns:
        the output folder.

    Raises:
        ConfigError: bad parameters.
        DuSSSError: ``output_dir`` holds something other than a demo dataset, or cannot be written.
    """
    settings = parse_difficulty(difficulty)
    params = _params(n_train, n_val, n_test, image_size, seed, settings)
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
            (tmp / folder / "img").mkdir(parents=True)
            (tmp / folder / "labelcol").mkdir(parents=True)
            rows = []
            for i in range(n):
                sample = _render_item(params, _SPLITS.index((folder, prefix, short)), i, settings)
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
    parser.add_argument(
        "--difficulty",
        default=None,
        help=f"{' or '.join(DIFFICULTIES)} (default demo), or a JSON object of DemoDifficulty fields",
    )
    args = parser.parse_args(argv)
    try:
        out = generate_demo_dataset(
            args.output_dir, args.n_train, args.n_val, args.n_test, args.image_size, args.seed, args.difficulty
        )
    except DuSSSError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(
        f"demo dataset ready in {out} ({args.n_train} train, {args.n_val} val, {args.n_test} test, {args.image_size} px)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
