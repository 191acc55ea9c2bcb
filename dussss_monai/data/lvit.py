"""Reader of LViT's dataset folder layout (QaTa-COV19, MoNuSeg, ... as distributed with LViT).

Layout::

    dataset_dir/
        Train_Folder/img/*.png           images (.png, .tif, .jpg, .bmp, .nii, .nii.gz)
        Train_Folder/labelcol/*.png      binary masks: same file name as the image, or "mask_" + it
        Train_Folder/Train_text.xlsx     columns "Image", "Description" (a .csv with the same columns works too)
        Val_Folder/...                   optional (Val_text.xlsx)
        Test_Folder/...                  optional (Test_text.xlsx)

Images and masks are paired by file stem (the name without extension), so ``a.tif`` pairs with
``a.png`` and with ``mask_a.png``. A training image without a mask is an unlabeled image; validation and test
images need masks. Text rows are matched liberally: by the mask's file name (LViT's convention, e.g.
QaTa-COV19's ``mask_<image name>``), else by the image's file name, each with or without extension. The text
file is needed only where the caller reads the sentences (``require_text``). Every problem of every folder is
collected and raised as one :class:`~dussss_monai.errors.DatasetError`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from dussss_monai.data.checks import collect_problems, decode_utf8, required_in
from dussss_monai.data.image_io import file_extension, is_supported_image
from dussss_monai.errors import DatasetError

__all__ = ["LVIT_FOLDERS", "read_lvit_dataset", "read_text_table", "is_lvit_dataset"]

#: datalist section -> LViT folder name
LVIT_FOLDERS: dict[str, str] = {"training": "Train_Folder", "validation": "Val_Folder", "test": "Test_Folder"}
_IMAGE_DIR = "img"
_MASK_DIR = "labelcol"
_MASK_PREFIX = "mask_"
_IGNORED_FILES = {"thumbs.db", "desktop.ini"}
_KEY_COLUMNS = ("image", "image name", "filename", "file name", "name")
_TEXT_COLUMNS = ("description", "text")


def is_lvit_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a ``Train_Folder`` sub-folder."""
    return (Path(path) / LVIT_FOLDERS["training"]).is_dir()


def _stem(name: str) -> str:
    ext = file_extension(name)
    return name[: -len(ext)] if ext and is_supported_image(name) else name


def _cell_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    key = str(value).strip()
    return key or None


def read_text_table(path: str | os.PathLike) -> tuple[list[tuple[int, str, str]], list[str]]:
    """Read an LViT text file (``.xlsx`` or ``.csv`` with columns ``Image`` and ``Description``).

    Args:
        path: the spreadsheet. The first non-empty row is the header; column names are matched
            case-insensitively (``Text`` is accepted for ``Description``).

    Returns:
        ``(rows, problems)``: rows are ``(row_number, key, text)`` with the text stripped; problems
        (empty or non-text cells, missing key) name the file and row. Fully empty rows are skipped.

    Raises:
        DatasetError: the file is missing, empty, unreadable, not UTF-8 (CSV) or lacks the columns.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError([f"{p}: text file does not exist"], header=f"cannot read {p.name}")
    if p.stat().st_size == 0:
        raise DatasetError([f"{p}: text file is empty (0 bytes)"], header=f"cannot read {p.name}")
    ext = p.suffix.lower()
    if ext == ".xlsx":
        raw_rows = _xlsx_rows(p)
    elif ext == ".csv":
        text = decode_utf8(p.read_bytes(), p)
        try:
            raw_rows = [(i + 1, list(r)) for i, r in enumerate(csv.reader(io.StringIO(text, newline="")))]
        except csv.Error as e:
            raise DatasetError([f"{p}: malformed CSV ({e})"], header=f"cannot read {p.name}") from e
    else:
        raise DatasetError(
            [f"{p}: unsupported text file type '{ext}' (use .xlsx or .csv)"], header=f"cannot read {p.name}"
        )

    header_at = next((k for k, (_, r) in enumerate(raw_rows) if any(_cell_key(c) for c in r)), None)
    if header_at is None:
        raise DatasetError(
            [f"{p}: no rows (expected a header with columns Image, Description)"], header=f"cannot read {p.name}"
        )
    header = [(_cell_key(c) or "").lower() for c in raw_rows[header_at][1]]
    key_col = next((header.index(c) for c in _KEY_COLUMNS if c in header), None)
    text_col = next((header.index(c) for c in _TEXT_COLUMNS if c in header), None)
    if key_col is None or text_col is None:
        found = ", ".join(repr(_cell_key(c)) for c in raw_rows[header_at][1] if _cell_key(c)) or "none"
        raise DatasetError(
            [
                f"{p}: missing column(s) {' and '.join(n for n, c in (('Image', key_col), ('Description', text_col)) if c is None)} "
                f"in the header row {raw_rows[header_at][0]} (found {found})"
            ],
            header=f"cannot read {p.name}",
        )
    rows: list[tuple[int, str, str]] = []
    problems: list[str] = []
    for row_no, cells in raw_rows[header_at + 1 :]:
        key_cell = cells[key_col] if key_col < len(cells) else None
        text_cell = cells[text_col] if text_col < len(cells) else None
        key = _cell_key(key_cell)
        if key is None and (text_cell is None or (isinstance(text_cell, str) and not text_cell.strip())):
            continue  # blank row
        if key is None:
            problems.append(f"{p}: row {row_no}: empty Image cell (description {str(text_cell)[:40]!r})")
            continue
        if text_cell is None or (isinstance(text_cell, str) and not text_cell.strip()):
            problems.append(f"{p}: row {row_no} (image '{key}'): empty Description cell; every image needs a text")
            continue
        if not isinstance(text_cell, str):
            kind = (
                "number"
                if isinstance(text_cell, (int, float)) and not isinstance(text_cell, bool)
                else type(text_cell).__name__
            )
            problems.append(f"{p}: row {row_no} (image '{key}'): Description is not text ({kind} {text_cell!r})")
            continue
        rows.append((row_no, key, text_cell.strip()))
    return rows, problems


def _xlsx_rows(p: Path) -> list[tuple[int, list[Any]]]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(p, read_only=True, data_only=True)
    except Exception as e:  # InvalidFileException, BadZipFile, KeyError, XML errors ...
        raise DatasetError(
            [
                f"{p}: unreadable spreadsheet, not a valid .xlsx file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ],
            header=f"cannot read {p.name}",
        ) from e
    try:
        ws = wb.worksheets[0] if wb.worksheets else None
        if ws is None:
            raise DatasetError([f"{p}: the workbook has no worksheet"], header=f"cannot read {p.name}")
        return [(i + 1, list(r)) for i, r in enumerate(ws.iter_rows(values_only=True))]
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(
            [f"{p}: unreadable spreadsheet ({str(e).splitlines()[0] if str(e) else type(e).__name__})"],
            header=f"cannot read {p.name}",
        ) from e
    finally:
        wb.close()


def _list_files(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Supported image files of ``folder`` keyed by stem; unsupported files and stem clashes are problems."""
    by_stem: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.name.lower() in _IGNORED_FILES:
            continue
        if f.is_dir():
            problems.append(f"{f}: unexpected sub-folder in {folder.name}/ (images are expected directly in it)")
            continue
        if not is_supported_image(f.name):
            problems.append(f"{f}: unsupported file type '{file_extension(f) or f.name}' in {folder.name}/")
            continue
        by_stem.setdefault(_stem(f.name), []).append(f)
    out: dict[str, Path] = {}
    for stem, files in by_stem.items():
        if len(files) > 1:
            problems.append(
                f"{folder}: duplicate name '{stem}': {', '.join(f.name for f in files)} (keep one file per name)"
            )
        out[stem] = files[0]
    return out


def _find_text_file(folder: Path, split_folder: str, problems: list[str], required: bool) -> Path | None:
    prefix = split_folder.split("_")[0]  # Train / Val / Test
    preferred = [folder / f"{prefix}_text{e}" for e in (".xlsx", ".csv")]
    found = [f for f in preferred if f.is_file()]
    if not found:
        found = sorted(
            f
            for f in folder.iterdir()
            if f.is_file()
            and f.suffix.lower() in (".xlsx", ".csv")
            and "text" in f.name.lower()
            and not f.name.startswith((".", "~$"))
        )
    if not found:
        if required:
            problems.append(
                f"{folder}: no text file (expected {prefix}_text.xlsx or {prefix}_text.csv with columns Image, Description)"
            )
        return None
    if len(found) > 1:
        problems.append(f"{folder}: several text files ({', '.join(f.name for f in found)}); keep one")
        return None
    return found[0]


def _read_split(folder: Path, problems: list[str], masks_required: bool, text_required: bool) -> list[dict[str, str]]:
    """The items of one LViT folder; a missing mask is a problem where ``masks_required``, else the image is
    unlabeled (no ``label``), and a missing text row is a problem where ``text_required``."""
    img_dir, mask_dir = folder / _IMAGE_DIR, folder / _MASK_DIR
    required_dirs = (img_dir, mask_dir) if masks_required else (img_dir,)
    for d in required_dirs:
        if not d.is_dir():
            problems.append(
                f"{folder}: no {d.name}/ folder (LViT layout: {folder.name}/img/ and {folder.name}/labelcol/)"
            )
    text_file = _find_text_file(folder, folder.name, problems, text_required)
    if not all(d.is_dir() for d in required_dirs):
        return []
    images = _list_files(img_dir, problems)
    masks = _list_files(mask_dir, problems) if mask_dir.is_dir() else {}

    rows: list[tuple[int, str, str]] = []
    if text_file is not None:
        try:
            rows, row_problems = read_text_table(text_file)
            problems += row_problems
        except DatasetError as e:
            problems += e.problems
            text_file = None
    row: tuple[int, str, str] | None
    by_key: dict[str, list[tuple[int, str, str]]] = {}
    for row in rows:
        by_key.setdefault(row[1], []).append(row)
    by_stem: dict[str, list[tuple[int, str, str]]] = {}
    for row in rows:
        by_stem.setdefault(_stem(row[1]), []).append(row)
    for key, dup in by_key.items():
        if len(dup) > 1:
            problems.append(f"{text_file}: duplicate text rows for '{key}' (rows {', '.join(str(r[0]) for r in dup)})")

    items: list[dict[str, str]] = []
    used_masks: set[str] = set()
    used_rows: set[int] = set()
    for stem, image in sorted(images.items()):
        mask = masks.get(_MASK_PREFIX + stem) or masks.get(stem)
        if mask is None:
            if masks_required:
                problems.append(
                    f"{image}: image without mask (expected {mask_dir.name}/{stem}.png or {mask_dir.name}/{_MASK_PREFIX}{stem}.png)"
                )
                continue
        else:
            used_masks.add(_stem(mask.name))
        row = None
        if text_file is not None:
            row = _match_row(_candidates(image, mask), by_key, by_stem, text_file, problems)
            if row is not None:
                used_rows.add(row[0])
            elif text_required:
                problems.append(
                    f"{image}: image without a text row in {text_file.name} "
                    f"(looked for '{mask.name if mask else image.name}' in column Image)"
                )
                continue
        item = {"image": str(image.resolve()), "name": image.name}
        if mask is not None:
            item["label"] = str(mask.resolve())
        if row is not None:
            item["text"] = row[2]
        items.append(item)
    for stem, mask in sorted(masks.items()):
        if stem not in used_masks:
            problems.append(f"{mask}: mask without image (no {img_dir.name}/{stem.removeprefix(_MASK_PREFIX)}.* found)")
    for row_no, key, _ in rows:
        if row_no not in used_rows and len(by_key.get(key, [])) <= 1:
            problems.append(
                f"{text_file}: row {row_no}: text row for a missing image '{key}' (no such image or mask in {folder.name}/)"
            )
    return items


def _candidates(image: Path, mask: Path | None) -> list[str]:
    """Text keys to look for: the mask's name (LViT's key), or ``mask_<image name>`` for an image whose mask is
    absent, then the image's name."""
    return [mask.name if mask is not None else _MASK_PREFIX + image.name, image.name]


def _match_row(
    names: Iterable[str],
    by_key: dict[str, list[tuple[int, str, str]]],
    by_stem: dict[str, list[tuple[int, str, str]]],
    text_file: Path,
    problems: list[str],
) -> tuple[int, str, str] | None:
    names = list(names)
    for n in names:
        if n in by_key:
            return by_key[n][0]
    for n in names:
        hits = by_stem.get(_stem(n), [])
        if len(hits) > 1 and len({r[1] for r in hits}) > 1:
            problems.append(
                f"{text_file}: several text rows match '{n}' (rows {', '.join(str(r[0]) for r in hits)}: "
                f"{', '.join(repr(r[1]) for r in hits)})"
            )
        if hits:
            return hits[0]
    return None


def read_lvit_dataset(
    dataset_dir: str | os.PathLike,
    check: bool = True,
    channels: int | None = None,
    require_text: bool | Collection[str] = True,
    require_labels: bool | Collection[str] = ("validation", "test"),
) -> dict[str, list[dict[str, str]]]:
    """Read a dataset in LViT's folder layout into a datalist.

    Args:
        dataset_dir: folder holding ``Train_Folder`` (required), ``Val_Folder`` and ``Test_Folder``
            (optional: a missing one gives an empty list).
        check: also run :func:`~dussss_monai.data.checks.check_dataset`'s file checks (readability,
            sizes, binary masks, image/mask size match) on every pair.
        channels: passed to the checks (``None``: all images must store the same channel count).
        require_text: the sections whose images need a text row (``True``: all); elsewhere the text file and
            rows are read where present.
        require_labels: the sections whose images need a mask (``True``: all); elsewhere an image without a
            mask is an unlabeled item.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "unlabeled": []}``; items are
        ``{"image": abs path, "label": abs path, "text": str, "name": image file name}`` (``label`` absent for a
        training image without mask, ``text`` absent where no row was found), sorted by name.

    Raises:
        DatasetError: listing every problem of every folder (pairing, text rows, file checks).
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError([f"{root}: dataset folder does not exist"], header="cannot read dataset")
    if not is_lvit_dataset(root):
        raise DatasetError(
            [
                f"{root}: not an LViT dataset folder: no {LVIT_FOLDERS['training']}/ inside "
                "(expected Train_Folder/{img,labelcol}/ and Train_Folder/Train_text.xlsx)"
            ],
            header="cannot read dataset",
        )
    problems: list[str] = []
    datalist: dict[str, list[dict[str, str]]] = {}
    for section, folder_name in LVIT_FOLDERS.items():
        folder = root / folder_name
        masks = required_in(require_labels, section)
        text = required_in(require_text, section)
        datalist[section] = _read_split(folder, problems, masks, text) if folder.is_dir() else []
    datalist["unlabeled"] = []
    if not datalist["training"] and not problems:
        problems.append(f"{root / LVIT_FOLDERS['training']}: no images found in img/")
    if check:
        problems += collect_problems(
            datalist, require_labels=require_labels, channels=channels, require_text=require_text
        )
    if problems:
        raise DatasetError(problems, header=f"dataset check failed for {root}")
    return datalist
