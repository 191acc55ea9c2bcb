"""Which training images are labeled, which are unlabeled, and which are held out for validation.

Two modes, chosen by the data itself:

- **given** (a user's own data): some training images have no mask (a datalist item without ``label``, an empty
  mask cell, an image of an LViT folder or an image folder without a mask), or the datalist has an ``unlabeled``
  section. The images are used as given: every image with a mask is labeled, every other one unlabeled;
  ``labeled_ratio`` is not used.
- **ratio** (a benchmark on fully masked data): every training image has a mask; ``labeled_ratio`` of them keep it,
  chosen by ``seed`` (:func:`split_labeled`), and the rest are treated as unlabeled.

Without a validation section, ``val_fraction`` of the labeled images (ratio mode: of the training images) is held
out for validation with a fixed seed (:func:`holdout_validation`), so every run of one dataset shares it.

:func:`read_training_data` does all this without writing anything; :func:`write_split_files` publishes the result
(``datalist.json`` and the split file) in a run folder. :func:`read_evaluation_items` gives the image-mask pairs
of one split for evaluation, and needs no text.

Command line::

    python -m dussss_monai.data.datalist --dataset_dir D --output_dir O [--labeled_ratio 0.25] [--seed 0]
        [--columns '{"image": "filename", "text": "report"}'] [--image_dir I] [--mask_dir M]

prints the summary; on a data problem it prints the message (no traceback) and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from dussss_monai.data.checks import item_name
from dussss_monai.data.datalist import DatasetSource, read_dataset
from dussss_monai.errors import ConfigError, DatasetError, DuSSSError
from dussss_monai.utils.io import atomic_write_json

__all__ = [
    "HOLDOUT_SEED",
    "split_labeled",
    "holdout_validation",
    "split_filename",
    "split_name",
    "read_training_data",
    "write_split_files",
    "prepare_datalist",
    "read_evaluation_items",
    "main",
]

#: the validation hold-out uses this fixed seed, so that every labeled ratio and seed of one dataset
#: shares the same validation images
HOLDOUT_SEED = 0


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
    """Split fully masked training items into labeled and unlabeled parts, deterministically (ratio mode).

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
    """Hold out ``max(1, round_half_up(val_fraction * N))`` items for validation.

    Deterministic as :func:`split_labeled` (sorted by name, permuted by ``seed``). ``val_fraction = 0``
    holds out nothing.

    Returns:
        ``(training, validation)``.

    Raises:
        ConfigError: ``val_fraction`` outside ``[0, 1)``.
        DatasetError: fewer than two items when a hold-out is asked for.
    """
    frac = _check_ratio(val_fraction, "val_fraction", low_open=False, high_open=True)
    items = _sorted_items(training)
    if frac == 0:
        return items, []
    n = len(items)
    if n < 2:
        raise DatasetError(
            [
                f"only {n} image(s) with a mask and no validation set: cannot hold out validation images; "
                "give more masks or a validation set"
            ],
            header="cannot hold out validation",
        )
    n_val = min(n - 1, max(1, _round_half_up(frac * n)))
    order = np.random.default_rng(seed).permutation(n)
    chosen = set(order[:n_val].tolist())
    return [it for i, it in enumerate(items) if i not in chosen], [it for i, it in enumerate(items) if i in chosen]


def split_filename(labeled_ratio: float | None, seed: int) -> str:
    """The split file's name: ``split_ratio<r>_seed<s>.json`` (ratio mode, ``r`` in the shortest form: ``0.25``,
    ``0.5``, ``1``) or ``split_given.json`` (``labeled_ratio`` ``None``: the data says which images are labeled)."""
    if labeled_ratio is None:
        return "split_given.json"
    return f"split_ratio{float(labeled_ratio):g}_seed{int(seed)}.json"


def _marks_unlabeled(datalist: Mapping[str, Sequence[Mapping[str, Any]]]) -> bool:
    """Whether the data says which training images are unlabeled (given mode)."""
    return bool(datalist.get("unlabeled")) or any(not it.get("label") for it in datalist.get("training", []))


def split_name(source: DatasetSource, labeled_ratio: float) -> str:
    """The split's part of a run's name: ``"given"`` when the data marks unlabeled images, else
    ``"ratio<r>"`` (``r`` as written: ``0.25``, ``1.0``). Reads the dataset's structure only (no file is opened
    besides the listing)."""
    datalist = read_dataset(source, check=False, require_labels=False, require_text=False)
    return "given" if _marks_unlabeled(datalist) else f"ratio{labeled_ratio}"


def read_training_data(
    source: DatasetSource | str | os.PathLike,
    labeled_ratio: float = 0.25,
    seed: int = 0,
    val_fraction: float = 0.2,
    check: bool = True,
    channels: int | None = None,
    require_text: bool | Sequence[str] = False,
) -> dict[str, Any]:
    """Read, check and split a dataset for training; nothing is written (module docstring).

    Args:
        source: the dataset (a :class:`~dussss_monai.data.datalist.DatasetSource`, or its path).
        labeled_ratio: ratio mode: the fraction of training images that keep their mask, in ``(0, 1]``.
        seed: ratio mode: the seed of the labeled/unlabeled split.
        val_fraction: without a validation section, the fraction of the labeled images (ratio mode: of the
            training images) held out for validation, with the fixed seed :data:`HOLDOUT_SEED`.
        check: run the file checks (readability, sizes, binary masks, pixel values).
        channels: passed to the checks.
        require_text: the sections whose images need a description (``True``: training, unlabeled and validation,
            as stage 1 reads them; DuSSS's stage 2 needs ``("training", "unlabeled")``).

    Returns:
        ``{"training", "validation", "test", "labeled", "unlabeled"}`` lists of items (absolute paths;
        ``training`` is ``labeled + unlabeled``) and ``"split"``: ``{"mode", "labeled_ratio" (ratio mode), "seed",
        "source", "n_labeled", "n_unlabeled", "n_validation", "n_test", "summary"}`` where ``summary`` says in words
        where each part came from.

    Raises:
        ConfigError: a ratio or the seed out of range.
        DatasetError: any data problem, all at once.
    """
    ratio = _check_ratio(labeled_ratio, "labeled_ratio")
    seed = _check_seed(seed)
    _check_ratio(val_fraction, "val_fraction", low_open=False, high_open=True)
    src = source if isinstance(source, DatasetSource) else DatasetSource(source)
    text_sections = ("training", "validation", "unlabeled") if require_text is True else require_text
    datalist = read_dataset(
        src, check=check, channels=channels, require_labels=("validation",), require_text=text_sections
    )
    validation = _sorted_items(datalist["validation"])
    test = _sorted_items(datalist["test"])
    given = _marks_unlabeled(datalist)
    where = src.describe()
    summary: list[str] = []
    if given:
        masked = [it for it in datalist["training"] if it.get("label")]
        maskless = [it for it in datalist["training"] if not it.get("label")]
        listed = [{k: v for k, v in it.items() if k != "label"} for it in datalist["unlabeled"]]
        if not masked:
            raise DatasetError(
                [f"{src.path}: no training image has a mask: give masks for some images (at least one)"],
                header="no labeled images",
            )
        labeled = _sorted_items(masked)
        if not validation:
            labeled, validation = holdout_validation(labeled, val_fraction)
            summary.append(
                f"validation: {len(validation)} of the images with a mask, held out (val_fraction {val_fraction:g}; "
                "the data has no validation set)"
            )
        else:
            summary.append(f"validation: {len(validation)} images of the validation set")
        unlabeled = _sorted_items(maskless + listed)
        summary.insert(0, f"labeled: {len(labeled)} training images with a mask, from {where}")
        parts = [f"{len(maskless)} training images without a mask"] if maskless else []
        parts += [f"{len(listed)} images of the 'unlabeled' section"] if listed else []
        summary.insert(
            1, f"unlabeled: {' and '.join(parts)} (labeled_ratio is not used: the data says which are labeled)"
        )
    else:
        training = _sorted_items(datalist["training"])
        if not validation:
            training, validation = holdout_validation(training, val_fraction)
            held = f"{len(validation)} held out of the training images (val_fraction {val_fraction:g})"
        else:
            held = f"{len(validation)} images of the validation set"
        labeled, unlabeled = split_labeled(training, ratio, seed)
        summary = [
            f"every training image of {where} has a mask: labeled_ratio {ratio:g} with seed {seed} keeps the masks of "
            f"{len(labeled)} (labeled) and hides those of {len(unlabeled)} (unlabeled)",
            f"validation: {held}",
        ]
    if test:
        summary.append(f"test: {len(test)} images (not used in training)")
    split = {
        "mode": "given" if given else "ratio",
        "labeled_ratio": None if given else ratio,
        "seed": seed,
        "source": src.as_record(),
        "n_labeled": len(labeled),
        "n_unlabeled": len(unlabeled),
        "n_validation": len(validation),
        "n_test": len(test),
        "summary": summary,
    }
    return {
        "training": labeled + unlabeled,
        "validation": validation,
        "test": test,
        "labeled": labeled,
        "unlabeled": unlabeled,
        "split": split,
    }


def write_split_files(data: Mapping[str, Any], output_dir: str | os.PathLike) -> Path:
    """Publish a split in a run folder (atomically): ``datalist.json`` (``training``, ``validation``, ``test``) and
    the split file (:func:`split_filename`: the split's facts, then ``labeled`` and ``unlabeled``).

    Args:
        data: the result of :func:`read_training_data`.
        output_dir: the run folder.

    Returns:
        the split file's path.
    """
    out = Path(output_dir)
    atomic_write_json(out / "datalist.json", {k: data[k] for k in ("training", "validation", "test")})
    split = data["split"]
    name = split_filename(split["labeled_ratio"], split["seed"])
    return atomic_write_json(out / name, {**split, "labeled": data["labeled"], "unlabeled": data["unlabeled"]})


def prepare_datalist(
    dataset_dir: DatasetSource | str | os.PathLike,
    output_dir: str | os.PathLike,
    labeled_ratio: float = 0.25,
    seed: int = 0,
    val_fraction: float = 0.2,
    check: bool = True,
    channels: int | None = None,
    require_text: bool | Sequence[str] = False,
) -> dict[str, Any]:
    """:func:`read_training_data`, then :func:`write_split_files` into ``output_dir``. Everything is checked
    before anything is written, so a failure leaves no output."""
    data = read_training_data(dataset_dir, labeled_ratio, seed, val_fraction, check, channels, require_text)
    write_split_files(data, output_dir)
    return data


def read_evaluation_items(
    source: DatasetSource | str | os.PathLike,
    split: str = "validation",
    val_fraction: float = 0.2,
    channels: int | None = None,
    check: bool = True,
) -> list[dict[str, Any]]:
    """The image-mask pairs to evaluate: any set of them, no text needed.

    - a folder of images with ``mask_dir``: every image that has a mask (``split`` is not used);
    - a dataset with sections: the items of ``split``; for ``validation`` without a validation section, the images
      training holds out (:func:`read_training_data`, the same fixed seed), so evaluation scores what training
      validated on.

    Args:
        source: the dataset (a :class:`~dussss_monai.data.datalist.DatasetSource`, or its path).
        split: ``validation`` (to choose models) or ``test`` (once, at the end); also ``training``.
        val_fraction: as in training, for a held-out validation set.
        channels: passed to the checks.
        check: run the file checks.

    Returns:
        the items, each with ``image`` and ``label``, sorted by name.

    Raises:
        ConfigError: an unknown ``split``.
        DatasetError: no such items (naming the sections that have some), or any problem of the items.
    """
    allowed = ("validation", "test", "training")
    if split not in allowed:
        raise ConfigError(f"split must be one of {', '.join(allowed)}; got {split!r}")
    src = source if isinstance(source, DatasetSource) else DatasetSource(source)
    if src.kind == "images":
        datalist = read_dataset(src, check=check, channels=channels, require_labels=False)
        pairs = [it for it in datalist["training"] if it.get("label")]
        if not pairs:
            raise DatasetError(
                [f"{src.path}: no image has a mask in {src.mask_dir} (give --mask_dir <folder of masks>)"],
                header="nothing to evaluate",
            )
        return _sorted_items(pairs)
    datalist = read_dataset(src, check=check, channels=channels, require_labels=(split,), require_text=False)
    items = datalist.get(split) or []
    if not items and split == "validation" and datalist.get("training"):
        items = read_training_data(src, 1.0, 0, val_fraction, check=False, channels=channels)["validation"]
    if not items:
        filled = [s for s in ("training", "validation", "test") if datalist.get(s)]
        raise DatasetError(
            [
                f"{src.path}: no '{split}' items (sections with items: {', '.join(filled) or 'none'}); "
                f"choose one with --split {filled[0] if filled else 'test'}"
            ],
            header="nothing to evaluate",
        )
    return _sorted_items(items)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 data or config problem)."""
    parser = argparse.ArgumentParser(
        prog="python -m dussss_monai.data.datalist",
        description="Check a dataset (LViT folder, datalist .json, table .csv/.xlsx or image folder) and write "
        "datalist.json and the labeled/unlabeled split.",
    )
    parser.add_argument("--dataset_dir", required=True, help="LViT-layout folder, datalist .json, table or folder")
    parser.add_argument("--output_dir", required=True, help="folder for datalist.json and the split file")
    parser.add_argument(
        "--labeled_ratio", type=float, default=0.25, help="fully masked data: fraction of labeled training images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the labeled/unlabeled split (ratio mode)")
    parser.add_argument(
        "--val_fraction", type=float, default=0.2, help="hold-out fraction when there is no validation set"
    )
    parser.add_argument("--columns", type=json.loads, default=None, help='e.g. \'{"image": "filename"}\'')
    parser.add_argument("--image_dir", default=None, help="where a table's relative image paths start")
    parser.add_argument("--mask_dir", default=None, help="folder of masks, looked up by image file stem")
    parser.add_argument("--channels", type=int, default=None, choices=(1, 3), help="convert images to 1 or 3 channels")
    parser.add_argument("--require_text", action="store_true", help="every image needs a description (DuSSS)")
    parser.add_argument("--no_check", action="store_true", help="skip the per-file checks")
    args = parser.parse_args(argv)
    try:
        source = DatasetSource(args.dataset_dir, args.columns, args.image_dir, args.mask_dir)
        data = read_training_data(
            source,
            args.labeled_ratio,
            args.seed,
            args.val_fraction,
            check=not args.no_check,
            channels=args.channels,
            require_text=args.require_text,
        )
        path = write_split_files(data, args.output_dir)
    except DuSSSError as e:
        print(str(e), file=sys.stderr)
        return 2
    split = data["split"]
    print(
        f"{args.dataset_dir}: {split['n_labeled']} labeled, {split['n_unlabeled']} unlabeled, "
        f"{split['n_validation']} validation, {split['n_test']} test ({split['mode']} mode)"
    )
    for line in split["summary"]:
        print(f"  {line}")
    print(f"wrote {Path(args.output_dir) / 'datalist.json'} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
