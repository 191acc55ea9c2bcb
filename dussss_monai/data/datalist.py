"""MONAI datalists: reading JSON/CSV, the labeled/unlabeled split, and ``prepare_datalist``.

A datalist is ``{"training": [...], "validation": [...], "test": [...]}`` of items
``{"image": path, "label": path, "text": str, "name": str}`` (see ``docs/data_format.md``). A *split*
divides ``training`` into ``labeled`` and ``unlabeled`` by ratio and seed.

Command line::

    python -m dussss_monai.data.datalist --dataset_dir D --output_dir O --labeled_ratio 0.25 --seed 0

prints a summary; on a data problem it prints the message (no traceback) and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from dussss_monai.data.checks import SECTIONS, collect_problems, decode_utf8, item_name
from dussss_monai.data.lvit import is_lvit_dataset, read_lvit_dataset
from dussss_monai.errors import ConfigError, DatasetError, DuSSSError
from dussss_monai.utils.io import atomic_write_json

__all__ = [
    "load_datalist",
    "save_datalist",
    "split_labeled",
    "holdout_validation",
    "split_filename",
    "prepare_datalist",
    "main",
]

_SPLIT_ALIASES = {
    "training": "training", "train": "training",
    "validation": "validation", "val": "validation", "valid": "validation",
    "test": "test", "testing": "test",
}  # fmt: skip
#: the validation hold-out uses this fixed seed, so that every labeled ratio and seed of one output
#: folder shares the same validation images (and the same ``datalist.json``)
HOLDOUT_SEED = 0


def _header(path: Path) -> str:
    return f"cannot load datalist {path.name}"


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value.strip():
        p = Path(value.strip())
        # purely lexical (no file-system access): odd paths are reported later by the checks
        return os.path.normpath(p if p.is_absolute() else base / p)
    return value


def _normalise_item(raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    item = dict(raw)
    for key in ("image", "label"):
        if key in item:
            item[key] = _resolve(item[key], base)
    if isinstance(item.get("text"), str):
        item["text"] = item["text"].strip()
    if isinstance(item.get("image"), str) and not (isinstance(item.get("name"), str) and item.get("name")):
        item["name"] = item_name(item)
    return item


def _read_json(path: Path, problems: list[str]) -> dict[str, list[Any]]:
    text = decode_utf8(path.read_bytes(), path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(
            [f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"], header=_header(path)
        ) from e
    if not isinstance(data, dict):
        raise DatasetError(
            [f"{path}: a datalist must be a JSON object with keys training/validation/test, got {type(data).__name__}"],
            header=_header(path),
        )
    if not any(k in data for k in SECTIONS):
        raise DatasetError(
            [f"{path}: no 'training', 'validation' or 'test' key (found: {', '.join(map(repr, data)) or 'none'})"],
            header=_header(path),
        )
    out: dict[str, list[Any]] = {}
    for section in SECTIONS:
        items = data.get(section, [])
        if items is None:
            items = []
        if not isinstance(items, list):
            problems.append(f"{path}: '{section}' must be a list of items, got {type(items).__name__}")
            items = []
        out[section] = items
    return out


def _read_csv(path: Path, problems: list[str]) -> dict[str, list[Any]]:
    text = decode_utf8(path.read_bytes(), path)
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DatasetError([f"{path}: malformed CSV ({e})"], header=_header(path)) from e
    rows = [(i + 1, r) for i, r in enumerate(lines) if any(c.strip() for c in r)]
    if not rows:
        raise DatasetError([f"{path}: empty CSV (expected a header image,label,text,split)"], header=_header(path))
    header = [c.strip().lower() for c in rows[0][1]]
    if "image" not in header:
        raise DatasetError(
            [
                f"{path}: no 'image' column in the header (found: {', '.join(map(repr, rows[0][1]))}); "
                "expected columns image,label,text,split"
            ],
            header=_header(path),
        )
    col = {name: header.index(name) for name in ("image", "label", "text", "split", "name") if name in header}
    if "text" not in col:
        problems.append(f"{path}: no 'text' column in the header; every image needs a description")
    out: dict[str, list[Any]] = {s: [] for s in SECTIONS}
    for line, cells in rows[1:]:
        values = {k: (cells[i].strip() if i < len(cells) else "") for k, i in col.items()}
        split = values.pop("split", "") or "training"
        section = _SPLIT_ALIASES.get(split.lower())
        if section is None:
            problems.append(f"{path}: line {line}: unknown split '{split}' (use training, validation or test)")
            continue
        item: dict[str, Any] = {"image": values.get("image", "")}
        if values.get("label"):
            item["label"] = values["label"]
        if "text" in values:
            item["text"] = values["text"]
        if values.get("name"):
            item["name"] = values["name"]
        if not item["image"]:
            problems.append(f"{path}: line {line}: empty image cell")
            continue
        out[section].append(item)
    return out


def load_datalist(
    path: str | os.PathLike,
    check: bool = True,
    require_labels: bool = True,
    channels: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Load a datalist from a MONAI-style JSON file or a CSV file.

    JSON: ``{"training": [{"image": ..., "label": ..., "text": ...}, ...], "validation": [...],
    "test": [...]}`` (missing sections are empty; other top-level keys are ignored). CSV: a header
    with columns ``image,label,text,split`` (``split`` is ``training``/``validation``/``test``, also
    ``train``/``val``; empty or absent means ``training``; an optional ``name`` column).
    Relative paths are resolved against the file's folder. Every item gets a ``name`` (its image file
    name unless given).

    Args:
        path: the ``.json`` or ``.csv`` file.
        check: run :func:`~dussss_monai.data.checks.check_dataset` on the items (file checks).
        require_labels: every item needs a ``label``.
        channels: passed to the checks.

    Returns:
        the datalist with absolute paths.

    Raises:
        DatasetError: unreadable, non-UTF-8 or malformed file, or any item problem, all at once and
            naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError([f"{p}: datalist file does not exist"], header=_header(p))
    if p.stat().st_size == 0:
        raise DatasetError([f"{p}: datalist file is empty (0 bytes)"], header=_header(p))
    problems: list[str] = []
    ext = p.suffix.lower()
    if ext == ".json":
        raw = _read_json(p, problems)
    elif ext == ".csv":
        raw = _read_csv(p, problems)
    else:
        raise DatasetError([f"{p}: unsupported datalist type '{ext}' (use .json or .csv)"], header=_header(p))
    base = p.parent.resolve()
    datalist: dict[str, list[dict[str, Any]]] = {}
    for section in SECTIONS:
        items = []
        for i, it in enumerate(raw[section]):
            if isinstance(it, Mapping):
                items.append(_normalise_item(it, base))
            else:
                problems.append(
                    f"{p}: {section}[{i}]: an item must be an object with 'image', 'label', 'text', got {type(it).__name__}"
                )
        datalist[section] = items
    if not any(datalist.values()) and not problems:
        problems.append(f"{p}: the datalist has no items")
    problems += collect_problems(datalist, require_labels=require_labels, channels=channels, source=p, files=check)
    if problems:
        raise DatasetError(problems, header=f"dataset check failed for {p}")
    return datalist


def save_datalist(datalist: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike) -> Path:
    """Write a datalist as JSON atomically (sections ``training``, ``validation``, ``test``)."""
    return atomic_write_json(path, {s: [dict(it) for it in datalist.get(s, [])] for s in SECTIONS})


def _check_ratio(value: Any, name: str, low_open: bool = True, high: float = 1.0, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok_low = v > 0 if low_open else v >= 0
    ok_high = v < high if high_open else v <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}0, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {interval}, got {v:g}")
    return v


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _sorted_items(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return sorted((dict(it) for it in items), key=lambda it: (item_name(it), str(it.get("image", ""))))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_labeled(
    training: Sequence[Mapping[str, Any]],
    labeled_ratio: float,
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split the training items into labeled and unlabeled parts, deterministically.

    The items are sorted by name (then image path), permuted with ``numpy.random.default_rng(seed)``
    and the first ``n_labeled = max(1, round_half_up(labeled_ratio * N))`` become labeled. Both parts
    are returned sorted by name. The result depends only on the names, the ratio and the seed, not on
    the input order.

    Args:
        training: the training items.
        labeled_ratio: fraction of labeled images, in ``(0, 1]`` (``1``: fully supervised).
        seed: non-negative integer.

    Returns:
        ``(labeled, unlabeled)``, disjoint, together equal to ``training``.

    Raises:
        ConfigError: ratio outside ``(0, 1]`` or not a number; negative or non-integer seed.
        DatasetError: empty training list (no labeled image possible).
    """
    ratio = _check_ratio(labeled_ratio, "labeled_ratio")
    seed = _check_seed(seed)
    items = _sorted_items(training)
    n = len(items)
    if n == 0:
        raise DatasetError(
            ["the training list is empty: a split needs at least one labeled image"], header="cannot split"
        )
    n_labeled = min(n, max(1, _round_half_up(ratio * n)))
    order = np.random.default_rng(seed).permutation(n)
    chosen = set(order[:n_labeled].tolist())
    labeled = [it for i, it in enumerate(items) if i in chosen]
    unlabeled = [it for i, it in enumerate(items) if i not in chosen]
    return labeled, unlabeled


def holdout_validation(
    training: Sequence[Mapping[str, Any]],
    val_fraction: float,
    seed: int = HOLDOUT_SEED,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``max(1, round_half_up(val_fraction * N))`` training items for validation.

    Deterministic as :func:`split_labeled` (sorted by name, permuted by ``seed``). ``val_fraction = 0``
    holds out nothing.

    Returns:
        ``(training, validation)``.

    Raises:
        ConfigError: ``val_fraction`` outside ``[0, 1)``.
        DatasetError: fewer than two training items when a hold-out is asked for.
    """
    frac = _check_ratio(val_fraction, "val_fraction", low_open=False, high_open=True)
    items = _sorted_items(training)
    if frac == 0:
        return items, []
    n = len(items)
    if n < 2:
        raise DatasetError(
            [
                f"only {n} training image(s) and no validation set: cannot hold out validation images; add a validation set"
            ],
            header="cannot hold out validation",
        )
    n_val = min(n - 1, max(1, _round_half_up(frac * n)))
    order = np.random.default_rng(seed).permutation(n)
    chosen = set(order[:n_val].tolist())
    return [it for i, it in enumerate(items) if i not in chosen], [it for i, it in enumerate(items) if i in chosen]


def split_filename(labeled_ratio: float, seed: int) -> str:
    """``split_ratio<r>_seed<s>.json`` with ``r`` in the shortest form (``0.25``, ``0.5``, ``1``)."""
    return f"split_ratio{float(labeled_ratio):g}_seed{int(seed)}.json"


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    labeled_ratio: float = 0.25,
    seed: int = 0,
    val_fraction: float = 0.2,
    check: bool = True,
    channels: int | None = None,
) -> dict[str, Any]:
    """Read a dataset, check it, hold out validation if needed, split it, and write the files.

    Args:
        dataset_dir: an LViT-layout folder (``Train_Folder``, ...) or a datalist ``.json``/``.csv`` file.
        output_dir: where ``datalist.json`` and ``split_ratio<r>_seed<s>.json`` are written (atomically).
        labeled_ratio: fraction of training images with labels, in ``(0, 1]``.
        seed: seed of the labeled/unlabeled split.
        val_fraction: when the dataset has no validation items, this fraction of the training items is
            held out for validation, with the fixed seed :data:`HOLDOUT_SEED` (independent of ``seed``,
            so every split of one output folder shares one validation set).
        check: run the file checks (readability, sizes, binary masks, text).
        channels: passed to the checks.

    Returns:
        ``{"training", "validation", "test", "labeled", "unlabeled"}`` lists of items (absolute paths).

    Raises:
        ConfigError: a ratio or the seed out of range.
        DatasetError: any data problem, all at once. Everything is checked before anything is written,
            so a failure leaves no output.
    """
    ratio = _check_ratio(labeled_ratio, "labeled_ratio")
    seed = _check_seed(seed)
    _check_ratio(val_fraction, "val_fraction", low_open=False, high_open=True)
    src = Path(dataset_dir)
    if src.is_dir():
        if not is_lvit_dataset(src):
            raise DatasetError(
                [f"{src}: neither an LViT dataset folder (no Train_Folder/) nor a datalist file (.json/.csv)"],
                header="cannot read dataset",
            )
        datalist = read_lvit_dataset(src, check=check, channels=channels)
    elif src.suffix.lower() in (".json", ".csv") or src.is_file():
        datalist = load_datalist(src, check=check, channels=channels)
    else:
        raise DatasetError([f"{src}: dataset folder or datalist file does not exist"], header="cannot read dataset")
    training = _sorted_items(datalist["training"])
    validation = _sorted_items(datalist["validation"])
    test = _sorted_items(datalist["test"])
    if not validation:
        training, validation = holdout_validation(training, val_fraction)
    labeled, unlabeled = split_labeled(training, ratio, seed)

    out = Path(output_dir)
    atomic_write_json(out / "datalist.json", {"training": training, "validation": validation, "test": test})
    atomic_write_json(
        out / split_filename(ratio, seed),
        {
            "labeled_ratio": ratio,
            "seed": seed,
            "source": str(src.resolve()),
            "n_labeled": len(labeled),
            "n_unlabeled": len(unlabeled),
            "labeled": labeled,
            "unlabeled": unlabeled,
        },
    )
    return {"training": training, "validation": validation, "test": test, "labeled": labeled, "unlabeled": unlabeled}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 data or config problem)."""
    parser = argparse.ArgumentParser(
        prog="python -m dussss_monai.data.datalist",
        description="Check a dataset (LViT folder or datalist .json/.csv) and write datalist.json and a labeled/unlabeled split.",
    )
    parser.add_argument("--dataset_dir", required=True, help="LViT-layout folder or datalist .json/.csv file")
    parser.add_argument("--output_dir", required=True, help="folder for datalist.json and split_ratio<r>_seed<s>.json")
    parser.add_argument(
        "--labeled_ratio", type=float, default=0.25, help="fraction of labeled training images, in (0, 1]"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the labeled/unlabeled split")
    parser.add_argument(
        "--val_fraction", type=float, default=0.2, help="hold-out fraction when there is no validation set"
    )
    parser.add_argument("--channels", type=int, default=None, choices=(1, 3), help="convert images to 1 or 3 channels")
    parser.add_argument("--no_check", action="store_true", help="skip the per-file checks")
    args = parser.parse_args(argv)
    try:
        result = prepare_datalist(
            args.dataset_dir,
            args.output_dir,
            args.labeled_ratio,
            args.seed,
            args.val_fraction,
            check=not args.no_check,
            channels=args.channels,
        )
    except DuSSSError as e:
        print(str(e), file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    print(
        f"{args.dataset_dir}: {len(result['training'])} training ({len(result['labeled'])} labeled, "
        f"{len(result['unlabeled'])} unlabeled), {len(result['validation'])} validation, {len(result['test'])} test\n"
        f"wrote {out / 'datalist.json'} and {out / split_filename(args.labeled_ratio, args.seed)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
