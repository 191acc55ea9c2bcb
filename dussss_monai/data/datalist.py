"""Reading a dataset, whatever its form, into a MONAI datalist.

A datalist is ``{"training": [...], "validation": [...], "test": [...], "unlabeled": [...]}`` of items
``{"image": path, "label": path, "text": str, "name": str}`` (see ``docs/data_format.md``); a training item
without ``label`` is an unlabeled image. :func:`read_dataset` reads any of the forms a dataset comes in:

- a folder in LViT's layout (``Train_Folder/img``, ``labelcol``, ``Train_text.xlsx``; :mod:`~dussss_monai.data.lvit`);
- a MONAI datalist ``.json`` (:func:`load_datalist`);
- a table, ``.csv`` or ``.xlsx``, with the user's own column names (:mod:`~dussss_monai.data.tables`);
- a folder of images, with their masks (where there are any) in ``mask_dir``.

How the training images are divided into labeled and unlabeled ones, and the validation hold-out, are in
:mod:`~dussss_monai.data.splits`. Command line: ``python -m dussss_monai.data.datalist`` (see
:func:`dussss_monai.data.splits.main`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from dussss_monai.data.checks import SECTIONS, collect_problems, decode_utf8, item_name
from dussss_monai.data.image_io import SUPPORTED_EXTENSIONS, is_supported_image
from dussss_monai.data.lvit import is_lvit_dataset, read_lvit_dataset
from dussss_monai.data.tables import TABLE_EXTENSIONS, find_mask, read_table
from dussss_monai.errors import DatasetError
from dussss_monai.utils.io import atomic_write_json

__all__ = [
    "DATALIST_EXTENSIONS",
    "load_datalist",
    "save_datalist",
    "read_image_folder",
    "read_dataset",
    "DatasetSource",
]

#: the file types a datalist may be written in
DATALIST_EXTENSIONS = (".json", *TABLE_EXTENSIONS)


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


def load_datalist(
    path: str | os.PathLike,
    check: bool = True,
    require_labels: bool | Collection[str] = ("validation",),
    channels: int | None = None,
    require_text: bool | Collection[str] = False,
    columns: Mapping[str, str] | None = None,
    image_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Load a datalist from a MONAI-style JSON file or a table (CSV, Excel).

    JSON: ``{"training": [{"image": ..., "label": ..., "text": ...}, ...], "validation": [...], "test": [...],
    "unlabeled": [...]}`` (missing sections are empty; other top-level keys are ignored). A training item without
    ``label`` is an unlabeled image, as is every item of ``unlabeled``. A table: one row per image, read by
    :func:`~dussss_monai.data.tables.read_table` (``columns``, ``image_dir`` and ``mask_dir`` apply to tables).
    Relative paths are resolved against the file's folder. Every item gets a ``name`` (its image file name unless
    given).

    Args:
        path: the ``.json``, ``.csv`` or ``.xlsx`` file.
        check: run :func:`~dussss_monai.data.checks.check_dataset` on the items (file checks).
        require_labels: the sections whose items need a ``label`` (``True``: every item).
        channels: passed to the checks.
        require_text: the sections whose items need a ``text`` (``True``: every item).
        columns: a table's column names, ``{"image": "filename", "text": "report"}``.
        image_dir: where a table's relative image paths start (default: the table's folder).
        mask_dir: where a table's relative mask paths start, and where masks are looked up by file stem when the
            table has no mask column.

    Returns:
        the datalist with absolute paths, sections ``training``, ``validation``, ``test``, ``unlabeled``.

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
    elif ext in TABLE_EXTENSIONS:
        raw, table_problems = read_table(p, columns=columns, image_dir=image_dir, mask_dir=mask_dir)
        problems += table_problems
    else:
        raise DatasetError(
            [f"{p}: unsupported datalist type '{ext}' (use .json, {', '.join(TABLE_EXTENSIONS)})"], header=_header(p)
        )
    base = p.parent.resolve()
    datalist: dict[str, list[dict[str, Any]]] = {}
    for section in SECTIONS:
        items = []
        for i, it in enumerate(raw.get(section, [])):
            if isinstance(it, Mapping):
                items.append(_normalise_item(it, base))
            else:
                problems.append(
                    f"{p}: {section}[{i}]: an item must be an object with 'image', 'label', 'text', got {type(it).__name__}"
                )
        datalist[section] = items
    if not any(datalist.values()) and not problems:
        problems.append(f"{p}: the datalist has no items")
    problems += collect_problems(
        datalist, require_labels=require_labels, channels=channels, source=p, files=check, require_text=require_text
    )
    if problems:
        raise DatasetError(problems, header=f"dataset check failed for {p}")
    return datalist


def save_datalist(datalist: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike) -> Path:
    """Write a datalist as JSON atomically (sections ``training``, ``validation``, ``test``, ``unlabeled``)."""
    return atomic_write_json(path, {s: [dict(it) for it in datalist.get(s, [])] for s in SECTIONS})


def read_image_folder(
    folder: str | os.PathLike, mask_dir: str | os.PathLike | None = None
) -> dict[str, list[dict[str, Any]]]:
    """A folder of images as a datalist: every supported image file (sorted by name, hidden files skipped) is a
    training item, with its mask when ``mask_dir`` holds one (:func:`~dussss_monai.data.tables.find_mask`).

    Raises:
        DatasetError: no image in the folder, or ``mask_dir`` missing.
    """
    root = Path(folder)
    images = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith(".") and is_supported_image(f))
    if not images:
        raise DatasetError(
            [f"{root}: folder holds no image files (supported: {', '.join(SUPPORTED_EXTENSIONS)})"],
            header="cannot read dataset",
        )
    if mask_dir is not None and not Path(mask_dir).is_dir():
        raise DatasetError([f"{mask_dir}: mask folder does not exist (--mask_dir)"], header="cannot read dataset")
    items = []
    for image in images:
        item: dict[str, Any] = {"image": str(image.resolve()), "name": image.name}
        mask = find_mask(mask_dir, image) if mask_dir is not None else None
        if mask is not None:
            item["label"] = str(mask.resolve())
        items.append(item)
    return {"training": items, "validation": [], "test": [], "unlabeled": []}


class DatasetSource:
    """Where a dataset comes from, and how to read it (:func:`read_dataset`).

    Args:
        dataset_dir: an LViT-layout folder, a datalist ``.json``, a table (``.csv``, ``.xlsx``) or a folder of
            images.
        columns: a table's column names for our keys (``{"image": "filename", "text": "report"}``).
        image_dir: where a table's relative image paths start (default: the table's folder).
        mask_dir: where masks are found: for a table, relative mask paths start there and, without a mask
            column, masks are looked up by the image's file stem; for a folder of images, the masks' folder.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        columns: Mapping[str, str] | None = None,
        image_dir: str | os.PathLike | None = None,
        mask_dir: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(dataset_dir)
        self.columns = dict(columns) if columns else None
        self.image_dir = image_dir
        self.mask_dir = mask_dir

    @property
    def kind(self) -> str:
        """``"lvit"``, ``"datalist"``, ``"table"``, ``"images"`` (a folder of images) or ``"missing"``."""
        if self.path.is_dir():
            return "lvit" if is_lvit_dataset(self.path) else "images"
        if self.path.is_file():
            return "datalist" if self.path.suffix.lower() == ".json" else "table"
        return "missing"

    def describe(self) -> str:
        """One phrase naming the source, for summaries: ``"the table reports.csv (masks in masks/)"``."""
        masks = f" (masks in {self.mask_dir})" if self.mask_dir else ""
        return {
            "lvit": f"the LViT-layout folder {self.path}",
            "datalist": f"the datalist {self.path}",
            "table": f"the table {self.path}{masks}",
            "images": f"the image folder {self.path}{masks}",
        }.get(self.kind, str(self.path))

    def as_record(self) -> dict[str, Any]:
        """The source as JSON-serialisable settings (run records)."""
        return {
            "dataset_dir": str(self.path.resolve()),
            "columns": self.columns,
            "image_dir": str(Path(self.image_dir).resolve()) if self.image_dir else None,
            "mask_dir": str(Path(self.mask_dir).resolve()) if self.mask_dir else None,
        }


def read_dataset(
    source: DatasetSource,
    check: bool = True,
    channels: int | None = None,
    require_labels: bool | Collection[str] = ("validation",),
    require_text: bool | Collection[str] = False,
) -> dict[str, list[dict[str, Any]]]:
    """Read and check a dataset, whatever its form (module docstring).

    Args:
        source: the dataset.
        check: run the file checks (readability, sizes, binary masks, pixel values) besides the structure.
        channels: the channel count images are converted to (1, 3); ``None``: all must store the same.
        require_labels: the sections whose items need a mask (``True``: every item).
        require_text: the sections whose items need a description (``True``: every item).

    Returns:
        the datalist, sections ``training``, ``validation``, ``test`` and ``unlabeled``, absolute paths.

    Raises:
        DatasetError: every problem found, all at once, each naming its file.
    """
    kind = source.kind
    if kind == "missing":
        raise DatasetError(
            [f"{source.path}: dataset folder or datalist file does not exist"], header="cannot read dataset"
        )
    if kind == "lvit":
        return read_lvit_dataset(
            source.path, check=check, channels=channels, require_text=require_text, require_labels=require_labels
        )
    if kind == "images":
        datalist = read_image_folder(source.path, source.mask_dir)
        problems = collect_problems(
            datalist, require_labels=require_labels, channels=channels, files=check, require_text=require_text
        )
        if problems:
            raise DatasetError(problems, header=f"dataset check failed for {source.path}")
        return datalist
    if source.path.suffix.lower() not in DATALIST_EXTENSIONS:
        raise DatasetError(
            [
                f"{source.path}: neither a dataset folder nor a datalist (.json) or table "
                f"({', '.join(TABLE_EXTENSIONS)})"
            ],
            header="cannot read dataset",
        )
    return load_datalist(
        source.path,
        check=check,
        require_labels=require_labels,
        channels=channels,
        require_text=require_text,
        columns=source.columns,
        image_dir=source.image_dir,
        mask_dir=source.mask_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dussss_monai.data.datalist``: see :func:`dussss_monai.data.splits.main`."""
    from dussss_monai.data.splits import main as splits_main

    return splits_main(argv)


if __name__ == "__main__":
    sys.exit(main())
