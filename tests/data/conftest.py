"""Builders of small on-disk datasets for the data-layer tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_xlsx(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] = ("Image", "Description")) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def pattern(i: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A grey uint8 image and its 0/255 mask (bright square at a position depending on i)."""
    img = np.full((size, size), 40, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    o = 1 + i % (size // 2)
    img[o : o + 5, 2:9] = 220
    mask[o : o + 5, 2:9] = 255
    return img, mask


@pytest.fixture
def make_lvit(tmp_path: Path) -> Callable[..., Path]:
    """Factory: an LViT-layout dataset with QaTa naming (``mask_<name>``, text keyed by the mask name).

    ``make_lvit(n_train=3, n_val=0, texts=None, qata=True)`` returns the dataset folder; ``texts``
    overrides the text rows of Train_Folder as a list of (Image, Description) tuples.
    """

    def build(
        n_train: int = 3,
        n_val: int = 0,
        texts: list[tuple[object, object]] | None = None,
        qata: bool = True,
        root_name: str = "ds",
    ) -> Path:
        root = tmp_path / root_name
        for folder, prefix, n in (("Train_Folder", "Train", n_train), ("Val_Folder", "Val", n_val)):
            if n == 0:
                continue
            rows = []
            for i in range(n):
                name = f"{prefix.lower()}_{i}.png"
                mask_name = f"mask_{name}" if qata else name
                img, mask = pattern(i)
                write_png(root / folder / "img" / name, img)
                write_png(root / folder / "labelcol" / mask_name, mask)
                rows.append((mask_name, f"Text number {i} of {prefix}."))
            write_xlsx(
                root / folder / f"{prefix}_text.xlsx",
                texts if (texts is not None and folder == "Train_Folder") else rows,
            )
        return root

    return build


@pytest.fixture
def png() -> Callable[[Path, np.ndarray], Path]:
    """``png(path, array)`` writes an image with Pillow and returns the path."""
    return write_png


@pytest.fixture
def xlsx() -> Callable[..., Path]:
    """``xlsx(path, rows, header=("Image", "Description"))`` writes a spreadsheet."""
    return write_xlsx


@pytest.fixture
def pair() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``pair(i, size=16)``: a grey uint8 image and its 0/255 mask (:func:`pattern`)."""
    return pattern
