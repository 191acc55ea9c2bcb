"""A user's own table of images: CSV or Excel, with the user's column names.

One row per image. The columns are found by name (case-insensitively): ``image`` (required), ``label`` or ``mask``
(the mask's path), ``text`` or ``description`` (the sentence), ``split`` and ``name``; ``columns`` maps these keys
to other column names, e.g. ``{"image": "filename", "text": "report"}``. Other columns are ignored.

- A relative image path is resolved against ``image_dir`` when given, else against the table's folder; a relative
  mask path against ``mask_dir`` when given, else against the table's folder.
- Without a mask column, masks are looked up in ``mask_dir`` by the image's file stem (``<stem>.*`` or
  ``mask_<stem>.*``); an image whose mask is not there is unlabeled.
- An empty mask cell makes the row unlabeled. The ``split`` cell is ``training`` (also empty, ``train``),
  ``validation`` (``val``, ``valid``), ``test`` (``testing``) or ``unlabeled`` (``unlabelled``).

The table is read with pandas (``.csv`` as UTF-8 text, ``.xlsx`` / ``.xls`` through openpyxl); every cell problem
is collected and reported at once, naming the file and the row.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dussss_monai.data.checks import decode_utf8
from dussss_monai.data.image_io import SUPPORTED_EXTENSIONS, file_extension, is_supported_image
from dussss_monai.errors import ConfigError, DatasetError

__all__ = ["TABLE_EXTENSIONS", "TABLE_KEYS", "SPLIT_NAMES", "read_table", "find_mask"]

TABLE_EXTENSIONS = (".csv", ".xlsx", ".xls")
#: our keys, and the column names each is found under when ``columns`` does not name one
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "label": ("label", "mask"),
    "text": ("text", "description"),
    "split": ("split",),
    "name": ("name",),
}
#: the sections of a datalist that a ``split`` cell may name, with the spellings accepted for each
SPLIT_NAMES: dict[str, str] = {
    "training": "training", "train": "training",
    "validation": "validation", "val": "validation", "valid": "validation",
    "test": "test", "testing": "test",
    "unlabeled": "unlabeled", "unlabelled": "unlabeled",
}  # fmt: skip
MASK_PREFIX = "mask_"


def _header(path: Path) -> str:
    return f"cannot read the table {path.name}"


def _read_frame(path: Path) -> Any:
    """The table as a pandas ``DataFrame`` of raw cells (strings for CSV; Excel keeps numbers as numbers)."""
    import pandas as pd

    ext = path.suffix.lower()
    try:
        if ext == ".csv":
            text = decode_utf8(path.read_bytes(), path)
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
        return pd.read_excel(path, dtype=object)
    except DatasetError:
        raise
    except pd.errors.EmptyDataError as e:
        raise DatasetError([f"{path}: the table is empty (expected a header row)"], header=_header(path)) from e
    except Exception as e:  # ParserError, BadZipFile, InvalidFileException, XML errors ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        kind = "malformed CSV" if ext == ".csv" else "unreadable spreadsheet, not a valid Excel file"
        raise DatasetError([f"{path}: {kind} ({first})"], header=_header(path)) from e


def _cell(value: Any) -> Any:
    """A cell with empty values as ``""`` and strings stripped; numbers (Excel) are kept."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value.strip()
    return value


def _path_cell(value: Any) -> str:
    """A path cell as text (an Excel number such as ``12`` becomes ``"12"``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _column_map(path: Path, found: list[str], columns: Mapping[str, str] | None) -> dict[str, str]:
    """``{our key: the table's column}`` for the keys present in the table.

    Raises:
        ConfigError: ``columns`` names a key we do not know.
        DatasetError: ``columns`` names a column the table lacks, or no image column is found.
    """
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(TABLE_KEYS))
    if unknown:
        raise ConfigError(
            f"columns: unknown key(s) {', '.join(map(repr, unknown))}; the keys are {', '.join(TABLE_KEYS)} "
            '(e.g. --columns \'{"image": "filename", "text": "report"}\')'
        )
    by_lower = {c.strip().lower(): c for c in found}
    shown = ", ".join(repr(c) for c in found) or "none"
    out: dict[str, str] = {}
    missing = []
    for key, names in TABLE_KEYS.items():
        if key in columns:
            column = by_lower.get(str(columns[key]).strip().lower())
            if column is None:
                missing.append(f"{columns[key]!r} (for {key})")
            else:
                out[key] = column
        else:
            column = next((by_lower[n] for n in names if n in by_lower), None)
            if column is not None:
                out[key] = column
    if missing:
        raise DatasetError(
            [f"{path}: no column {' or '.join(missing)} in the header (found: {shown})"], header=_header(path)
        )
    if "image" not in out:
        raise DatasetError(
            [
                f"{path}: no image column in the header (found: {shown}); name it image, or map yours: "
                f'--columns \'{{"image": "<your column>"}}\''
            ],
            header=_header(path),
        )
    return out


def find_mask(mask_dir: str | os.PathLike, image: str | os.PathLike) -> Path | None:
    """The mask of ``image`` in ``mask_dir``: a supported file named ``<stem>.*`` or ``mask_<stem>.*``, else ``None``.

    Args:
        mask_dir: the folder of masks.
        image: the image's path (only its file name is used).
    """
    name = Path(image).name
    ext = file_extension(name)
    stem = name[: -len(ext)] if ext else name
    for candidate in (stem, MASK_PREFIX + stem):
        for mask_ext in SUPPORTED_EXTENSIONS:
            p = Path(mask_dir) / (candidate + mask_ext)
            if p.is_file():
                return p
    return None


def _resolve(cell: str, base: Path) -> str:
    p = Path(cell)
    return os.path.normpath(p if p.is_absolute() else base / p)


def read_table(
    path: str | os.PathLike,
    columns: Mapping[str, str] | None = None,
    image_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Read a table of images into datalist sections (module docstring).

    Args:
        path: the ``.csv`` or ``.xlsx`` file.
        columns: ``{our key: the table's column name}`` for the columns not named ``image``, ``label``, ``text``,
            ``split``, ``name``.
        image_dir: the folder relative image paths start from (default: the table's folder).
        mask_dir: the folder relative mask paths start from, and where masks are looked up by file stem when the
            table has no mask column.

    Returns:
        ``(sections, problems)``: ``sections`` has ``training``, ``validation``, ``test`` and ``unlabeled`` lists of
        items ``{"image", "label"?, "text"?, "name"?}`` (absolute paths; a training row without a mask has no
        ``label``); ``problems`` names the file and row of each bad cell.

    Raises:
        DatasetError: the file is missing, empty, unreadable or lacks an image column.
        ConfigError: ``columns`` names an unknown key.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError([f"{p}: table file does not exist"], header=_header(p))
    if p.stat().st_size == 0:
        raise DatasetError([f"{p}: table file is empty (0 bytes)"], header=_header(p))
    if p.suffix.lower() not in TABLE_EXTENSIONS:
        raise DatasetError(
            [f"{p}: unsupported table type '{p.suffix}' (use {', '.join(TABLE_EXTENSIONS)})"], header=_header(p)
        )
    frame = _read_frame(p)
    found = [str(c) for c in frame.columns]
    col = _column_map(p, found, columns)
    base = p.parent.resolve()
    image_base = Path(image_dir).resolve() if image_dir else base
    mask_base = Path(mask_dir).resolve() if mask_dir else base
    if mask_dir is not None and not Path(mask_dir).is_dir():
        raise DatasetError([f"{mask_dir}: mask folder does not exist (--mask_dir)"], header=_header(p))

    sections: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": [], "unlabeled": []}
    problems: list[str] = []
    for i, raw in enumerate(frame.to_dict("records")):
        row = i + 2  # the header is row 1
        cells = {key: _cell(raw[column]) for key, column in col.items()}
        if not any(v != "" for v in cells.values()):
            continue
        image = _path_cell(cells.get("image", ""))
        if not image:
            problems.append(f"{p}: row {row}: empty {col['image']!r} cell")
            continue
        split = str(cells.get("split", "")).strip().lower() or "training"
        section = SPLIT_NAMES.get(split)
        if section is None:
            problems.append(
                f"{p}: row {row}: unknown split {cells['split']!r} (use training, validation, test or unlabeled)"
            )
            continue
        item: dict[str, Any] = {"image": _resolve(image, image_base)}
        label = _path_cell(cells.get("label", ""))
        if label:
            item["label"] = _resolve(label, mask_base)
        elif "label" not in col and mask_dir is not None and is_supported_image(image):
            found_mask = find_mask(mask_base, image)
            if found_mask is not None:
                item["label"] = str(found_mask)
        text = cells.get("text", "")
        if text != "":
            item["text"] = text  # a number (Excel) is reported by the checks
        name = _path_cell(cells.get("name", ""))
        if name:
            item["name"] = name
        sections[section].append(item)
    return sections, problems
