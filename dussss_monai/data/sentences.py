"""Draft one sentence per mask: a benchmark's text, or a starting point for reports.

A sentence drawn from a mask says nothing the mask does not: DuSSS gains from text on the images that have no
mask, so drafts serve to build a benchmark (every image has a mask, a share is used) or to start reports a
clinician corrects; they never replace real reports. Connected areas are found with ``scipy.ndimage.label``
(8-connectivity); areas smaller than ``min_area`` (a share of the image, default 0.05 %) are specks and ignored.

Templates (``TEMPLATES``):

- ``qata``: QaTa-COV19's, through :func:`dussss_monai.data.demo.describe`: ``"Bilateral pulmonary infection, two
  infected areas, lower left lung and upper right lung."``; ``"No pulmonary infection."`` for an empty mask.
  Sides follow the radiological convention of PA chest X-rays, as the demo generator: the image's RIGHT half is
  the patient's LEFT lung. The zones are the upper, middle and lower thirds of the rows the lungs span,
  ``lung_rows`` (fractions of the image height; default 0.18-0.75, the demo generator's lungs: measure yours). An
  area is named in every zone (and side) that holds at least ``zone_share`` of its pixels (default 0.35, so at
  most two), and always in the one holding most; "two infected areas" counts connected areas, so one area may name
  two zones. On 500 demo masks the drafts repeat the generator's own sentence in 84 % of the images (zones 91 %,
  count 91 %: touching infections merge, a few split; the generator names only each infection's centre zone).
- ``generic``: count, size and place on a 3 x 3 grid of the image (the viewer's left and right, not the patient's):
  ``"Two lesions: a large one in the upper left and a small one in the centre."`` Sizes by share of the image:
  small below 1 %, medium 1-5 %, large from 5 %. Listed from the largest; above four areas, counted per place
  instead (``"Nine lesions: five in the upper left, ..."``). ``"No lesion."`` for an empty mask.

The output is a CSV table ``image,mask,text`` (``split`` too when the input had several splits), paths relative
to the table's folder, that ``--dataset_dir`` reads as it is (no ``--columns``, ``--image_dir`` or ``--mask_dir``).
From a folder of masks without ``image_dir``, the image column holds the mask's file name without ``mask_``: read
the table with ``--image_dir`` then.

Command line::

    python -m dussss_monai.data.sentences --mask_dir masks --template generic --output reports.csv [--image_dir images]
    python -m dussss_monai.data.sentences --dataset_dir table.csv [--columns ... --mask_dir ...] --template qata --output ...
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from dussss_monai.data.datalist import DatasetSource, read_dataset
from dussss_monai.data.demo import SIDES, ZONES, describe, number_word
from dussss_monai.data.image_io import SUPPORTED_EXTENSIONS, file_extension, is_supported_image, read_mask_2d
from dussss_monai.data.tables import MASK_PREFIX
from dussss_monai.errors import ConfigError, DatasetError, DuSSSError
from dussss_monai.utils.io import atomic_write_text

__all__ = ["TEMPLATES", "connected_areas", "qata_sentence", "generic_sentence", "draft_sentences", "main"]

#: areas smaller than this share of the image are ignored (specks of an annotation tool)
MIN_AREA = 0.0005
#: the generic template's size words: an area below the first share is small, below the second medium
SIZE_SHARES = (0.01, 0.05)
#: above this many areas the generic template counts areas per place instead of listing each
MAX_LISTED = 4
_ROWS = ("upper", "middle", "lower")
_COLUMNS = ("left", "centre", "right")


def connected_areas(mask: np.ndarray, min_area: float = MIN_AREA) -> list[np.ndarray]:
    """The connected areas (8-connectivity) of a 2D mask, each as a boolean array, specks dropped.

    Args:
        mask: ``(H, W)`` or ``(1, H, W)``, foreground > 0.
        min_area: the smallest area kept, as a share of the image.

    Returns:
        the areas, largest first (ties in reading order of their first pixel).
    """
    plane = np.asarray(mask).reshape(np.asarray(mask).shape[-2:]) > 0
    labels, n = ndimage.label(plane, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = [k + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= min_area * plane.size]
    return [labels == k for k in keep]


def _thirds(coordinates: np.ndarray, low: float, high: float) -> np.ndarray:
    """The third (0, 1, 2) of ``[low, high)`` each coordinate (a fraction of the side) falls in, clipped."""
    return np.clip(np.floor((coordinates - low) / (high - low) * 3), 0, 2).astype(int)


def qata_sentence(
    mask: np.ndarray,
    lung_rows: tuple[float, float] = (0.18, 0.75),
    zone_share: float = 0.35,
    min_area: float = MIN_AREA,
) -> str:
    """The QaTa-COV19 sentence of a chest X-ray's infection mask (module docstring).

    Args:
        mask: ``(H, W)`` or ``(1, H, W)``, foreground > 0; a PA view, the patient's left on the image's right.
        lung_rows: the top and bottom of the lung fields, as fractions of the image height.
        zone_share: the share of an area's pixels a zone needs to be named for it.
        min_area: the smallest area counted, as a share of the image.

    Returns:
        the sentence.
    """
    areas = connected_areas(mask, min_area)
    named: set[tuple[str, str]] = set()
    for area in areas:
        rows, cols = np.nonzero(area)
        height, width = area.shape
        zones = _thirds((rows + 0.5) / height, *lung_rows)
        sides = (cols + 0.5 >= width / 2).astype(int)  # image right = the patient's left = SIDES[0]
        cells = 3 * (1 - sides) + zones
        counts = np.bincount(cells, minlength=6)
        chosen = set(np.flatnonzero(counts >= zone_share * len(rows)).tolist()) | {int(np.argmax(counts))}
        named |= {(SIDES[c // 3], ZONES[c % 3]) for c in chosen}
    return describe(sorted(named), n_areas=len(areas))


def _place(area: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(area)
    height, width = area.shape
    return int(_thirds(np.array([(rows.mean() + 0.5) / height]), 0, 1)[0]), int(
        _thirds(np.array([(cols.mean() + 0.5) / width]), 0, 1)[0]
    )


def _place_name(row: int, column: int) -> str:
    if (row, column) == (1, 1):
        return "centre"
    return f"{_ROWS[row]} {_COLUMNS[column]}"


def _size_word(area: np.ndarray) -> str:
    share = area.mean()
    return "small" if share < SIZE_SHARES[0] else "medium" if share < SIZE_SHARES[1] else "large"


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def generic_sentence(
    mask: np.ndarray, noun: tuple[str, str] = ("lesion", "lesions"), min_area: float = MIN_AREA
) -> str:
    """Count, size and place of the areas of a mask on a 3 x 3 grid (module docstring).

    Args:
        mask: ``(H, W)`` or ``(1, H, W)``, foreground > 0.
        noun: what an area is, singular and plural.
        min_area: the smallest area counted, as a share of the image.

    Returns:
        the sentence, e.g. ``"Two lesions: a large one in the upper left and a small one in the centre."``.
    """
    areas = connected_areas(mask, min_area)
    n = len(areas)
    if n == 0:
        return f"No {noun[0]}."
    if n == 1:
        return f"One {_size_word(areas[0])} {noun[0]} in the {_place_name(*_place(areas[0]))}."
    count = number_word(n).capitalize()
    if n <= MAX_LISTED:
        parts = [f"a {_size_word(a)} one in the {_place_name(*_place(a))}" for a in areas]
        return f"{count} {noun[1]}: {_join(parts)}."
    per_place: dict[tuple[int, int], int] = {}
    for a in areas:
        per_place[_place(a)] = per_place.get(_place(a), 0) + 1
    order = sorted(per_place, key=lambda p: (-per_place[p], p))
    parts = [f"{number_word(per_place[p])} in the {_place_name(*p)}" for p in order]
    return f"{count} {noun[1]}: {_join(parts)}."


#: template name -> the function of a mask array that writes its sentence
TEMPLATES: dict[str, Callable[..., str]] = {"qata": qata_sentence, "generic": generic_sentence}


def _image_for(mask: Path, image_dir: Path | None) -> str:
    """The image of a mask: ``<stem>.*`` in ``image_dir`` (``mask_`` dropped from the stem), else its file name."""
    ext = file_extension(mask.name)
    stem = mask.name[: -len(ext)]
    if stem.startswith(MASK_PREFIX):
        stem = stem[len(MASK_PREFIX) :]
    if image_dir is not None:
        for candidate in [stem + e for e in SUPPORTED_EXTENSIONS]:
            if (image_dir / candidate).is_file():
                return str(image_dir / candidate)
    return stem + ext


def _mask_folder_items(mask_dir: Path, image_dir: Path | None) -> list[dict[str, str]]:
    if not mask_dir.is_dir():
        raise DatasetError([f"{mask_dir}: mask folder does not exist (--mask_dir)"], header="cannot draft sentences")
    if image_dir is not None and not image_dir.is_dir():
        raise DatasetError([f"{image_dir}: image folder does not exist (--image_dir)"], header="cannot draft sentences")
    masks = sorted(
        f for f in mask_dir.iterdir() if f.is_file() and not f.name.startswith(".") and is_supported_image(f)
    )
    if not masks:
        raise DatasetError(
            [f"{mask_dir}: folder holds no mask files (supported: {', '.join(SUPPORTED_EXTENSIONS)})"],
            header="cannot draft sentences",
        )
    items = [{"image": _image_for(m, image_dir), "label": str(m), "split": "training"} for m in masks]
    return sorted(items, key=lambda it: (Path(it["image"]).name, it["label"]))  # in the order of the images


def _dataset_items(source: DatasetSource) -> list[dict[str, str]]:
    datalist = read_dataset(source, check=False, require_labels=False, require_text=False)
    items = [{**it, "split": split} for split, section in datalist.items() for it in section if it.get("label")]
    if not items:
        raise DatasetError(
            [f"{source.path}: no image has a mask: nothing to draft from"], header="cannot draft sentences"
        )
    return items


def draft_sentences(items: Sequence[dict[str, str]], template: str, **options: Any) -> list[str]:
    """One sentence per item's mask (``label``), every unreadable mask reported at once.

    Args:
        items: ``{"label": mask path, ...}``.
        template: a name of :data:`TEMPLATES`.
        options: the template function's keyword arguments.

    Returns:
        the sentences, in the order of ``items``.

    Raises:
        ConfigError: an unknown template.
        DatasetError: masks that cannot be read or are not binary, each named.
    """
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}: choose {' or '.join(TEMPLATES)}")
    sentences, problems = [], []
    for item in items:
        try:
            sentences.append(TEMPLATES[template](read_mask_2d(item["label"]), **options))
        except DatasetError as e:
            problems += e.problems
    if problems:
        raise DatasetError(problems, header="cannot draft sentences")
    return sentences


def _relative(path: str, folder: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        return path  # a bare image name: found through --image_dir when the table is read
    try:
        return os.path.relpath(p.resolve(), folder.resolve())
    except ValueError:  # another drive (Windows)
        return str(p.resolve())


def write_sentence_table(items: Sequence[dict[str, str]], sentences: Sequence[str], output: Path) -> Path:
    """The CSV table ``image,mask,text[,split]`` (paths relative to its folder), written atomically."""
    with_split = len({it["split"] for it in items}) > 1
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "mask", "text"] + (["split"] if with_split else []))
    folder = output.parent if str(output.parent) else Path(".")
    for item, sentence in zip(items, sentences):
        row = [_relative(item["image"], folder), _relative(item["label"], folder), sentence]
        writer.writerow(row + ([item["split"]] if with_split else []))
    return atomic_write_text(output, buffer.getvalue())


def _pair(text: str, name: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{name} expects two values separated by a comma, got {text!r}")
    return parts[0], parts[1]


def _lung_rows(text: str) -> tuple[float, float]:
    try:
        top, bottom = (float(v) for v in _pair(text, "--lung_rows"))
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        top = bottom = float("nan")
    if not 0 <= top < bottom <= 1:
        raise ConfigError(f"--lung_rows must be two fractions 0 <= top < bottom <= 1, e.g. 0.18,0.75, got {text!r}")
    return top, bottom


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 data or config problem)."""
    parser = argparse.ArgumentParser(
        prog="python -m dussss_monai.data.sentences",
        description="Draft one sentence per mask (a benchmark's text or a start for reports, never a replacement).",
    )
    parser.add_argument("--mask_dir", default=None, help="folder of masks (or, with --dataset_dir, as there)")
    parser.add_argument("--dataset_dir", default=None, help="a dataset in any form --dataset_dir takes elsewhere")
    parser.add_argument("--image_dir", default=None, help="where the images are (matched to masks by name)")
    parser.add_argument(
        "--columns", type=json.loads, default=None, help='a table\'s columns, e.g. \'{"image": "file"}\''
    )
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="generic")
    parser.add_argument("--output", required=True, help="the CSV table to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --output when it exists")
    parser.add_argument("--lung_rows", default="0.18,0.75", help="qata: top and bottom of the lungs (image fractions)")
    parser.add_argument("--noun", default="lesion,lesions", help="generic: singular and plural of what a mask marks")
    parser.add_argument("--min_area", type=float, default=MIN_AREA, help="smallest area counted (image fraction)")
    args = parser.parse_args(argv)
    try:
        output = Path(args.output)
        if output.exists() and not args.overwrite:
            raise ConfigError(f"{output} exists: choose another --output, or add --overwrite to replace it")
        if not 0 <= args.min_area < 1:
            raise ConfigError(f"--min_area must be a fraction of the image in [0, 1), got {args.min_area}")
        if args.template == "qata":
            options: dict[str, Any] = {"lung_rows": _lung_rows(args.lung_rows), "min_area": args.min_area}
        else:
            options = {"noun": _pair(args.noun, "--noun"), "min_area": args.min_area}
        image_dir = Path(args.image_dir) if args.image_dir else None
        if args.dataset_dir:
            items = _dataset_items(DatasetSource(args.dataset_dir, args.columns, args.image_dir, args.mask_dir))
        elif args.mask_dir:
            items = _mask_folder_items(Path(args.mask_dir), image_dir)
        else:
            raise ConfigError("give --mask_dir (a folder of masks) or --dataset_dir (a dataset with masks)")
        sentences = draft_sentences(items, args.template, **options)
        write_sentence_table(items, sentences, output)
    except DuSSSError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(f"wrote {len(sentences)} sentences ({args.template}) to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
