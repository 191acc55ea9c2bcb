"""Inputs of the inference bundle: which images to segment, and what to remember of each.

- :func:`list_images` turns a folder of images, a single image file, or a datalist (JSON/CSV) into the
  items ``[{"image": path, "name": file name}]`` that the inference pipeline reads.
- :class:`RecordOriginald` records, before the image is loaded and resized, its absolute path
  (``image_path``) and its original size (``orig_size``, ``(H, W)`` as an int64 tensor, read from the
  file header only), so that :class:`~dussss_monai.handlers.mask_writer.MaskWriter` can name each mask
  after its input and resize it back to the input's size.
- :func:`inference_transforms` is the evaluation pipeline (the same loading, intensity scaling and
  resizing as validation and test) on the image alone, preceded by :class:`RecordOriginald`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform

from dussss_monai.data.image_io import SUPPORTED_EXTENSIONS, is_supported_image, read_image_info
from dussss_monai.errors import ConfigError, DatasetError

__all__ = ["list_images", "select_split", "RecordOriginald", "inference_transforms", "DATALIST_EXTENSIONS"]

DATALIST_EXTENSIONS = (".json", ".csv")
SPLITS = ("training", "validation", "test")


def _item(path: Path) -> dict[str, str]:
    return {"image": str(path.resolve()), "name": path.name}


def list_images(path: str | os.PathLike, split: str = "test", recursive: bool = False) -> list[dict[str, Any]]:
    """Items to segment: ``[{"image": absolute path, "name": file name}, ...]``.

    Args:
        path: one of
            - a folder: every file with a supported extension (PNG, TIFF, JPEG, BMP, NIfTI ``.nii`` /
              ``.nii.gz``), sorted by name; hidden files and other files are skipped;
            - a single image file;
            - a datalist ``.json`` / ``.csv`` (:func:`dussss_monai.data.datalist.load_datalist` format; masks
              are not needed): the items of section ``split``, with their ``text`` kept when present.
        split: datalist section to use (``training``, ``validation`` or ``test``).
        recursive: also list the images of sub-folders (names stay file names; the writer keeps
            colliding names apart).

    Returns:
        the items, in a stable order.

    Raises:
        DatasetError: missing path, folder without images, unsupported file, empty datalist section.
        ConfigError: unknown ``split``.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(
            [f"{p}: input path does not exist (give a folder of images, an image file or a datalist .json/.csv)"],
            header="no images to segment",
        )
    if p.is_dir():
        files = p.rglob("*") if recursive else p.iterdir()
        images = sorted(
            (f for f in files if f.is_file() and not f.name.startswith(".") and is_supported_image(f)),
            key=lambda f: (str(f.parent), f.name),
        )
        if not images:
            raise DatasetError(
                [f"{p}: folder holds no image files (supported: {', '.join(SUPPORTED_EXTENSIONS)})"],
                header="no images to segment",
            )
        return [_item(f) for f in images]
    if p.suffix.lower() in DATALIST_EXTENSIONS:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        from dussss_monai.data.datalist import load_datalist

        datalist = load_datalist(p, check=True, require_labels=False)
        items = datalist.get(split) or []
        if not items:
            filled = [s for s in SPLITS if datalist.get(s)]
            raise DatasetError(
                [
                    f"{p}: section '{split}' is empty (sections with items: {', '.join(filled) or 'none'}); choose one with split=..."
                ],
                header="no images to segment",
            )
        out = []
        for it in items:
            img = Path(it["image"])
            entry: dict[str, Any] = {"image": str(img), "name": it.get("name") or img.name}
            if it.get("text"):
                entry["text"] = it["text"]
            out.append(entry)
        return out
    if is_supported_image(p):
        return [_item(p)]
    raise DatasetError(
        [
            f"{p}: unsupported input (give a folder, an image file ({', '.join(SUPPORTED_EXTENSIONS)}) or a datalist .json/.csv)"
        ],
        header="no images to segment",
    )


def select_split(
    datalist: Mapping[str, Sequence[Mapping[str, Any]]], split: str, allowed: Sequence[str] = ("validation", "test")
) -> list[dict[str, Any]]:
    """The items of one section of a datalist, for evaluation.

    Args:
        datalist: e.g. the result of :func:`dussss_monai.data.prepare_datalist`.
        split: the section to evaluate (``validation`` to choose models, ``test`` once at the end).
        allowed: accepted section names.

    Raises:
        ConfigError: ``split`` not in ``allowed``.
        DatasetError: the section is empty.
    """
    if split not in allowed:
        raise ConfigError(f"split must be one of {', '.join(allowed)}; got {split!r}")
    items = list(datalist.get(split) or [])
    if not items:
        filled = [s for s in SPLITS if datalist.get(s)]
        raise DatasetError(
            [f"the dataset has no '{split}' items (sections with items: {', '.join(filled) or 'none'})"],
            header="nothing to evaluate",
        )
    return [dict(it) for it in items]


class RecordOriginald(MapTransform):
    """Record the input file's absolute path and original ``(H, W)`` before it is loaded.

    Apply it to items whose ``keys`` still hold file paths. The size comes from the file header
    (no pixels decoded), with the same orientation as :func:`~dussss_monai.data.image_io.read_image_2d`.

    Args:
        keys: the image key (one key).
        path_key: where to store the absolute path (a string).
        size_key: where to store the size, an int64 tensor ``[H, W]`` (collated to ``(B, 2)``).

    Raises:
        DatasetError: missing, unsupported or unreadable file (naming it).
        ConfigError: more than one key, or a value that is not a path.
    """

    def __init__(
        self, keys: KeysCollection = "image", path_key: str = "image_path", size_key: str = "orig_size"
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ConfigError(f"RecordOriginald takes one image key, got {self.keys}")
        self.path_key, self.size_key = path_key, size_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if not isinstance(value, (str, os.PathLike)):
                raise ConfigError(
                    f"RecordOriginald must run before the image is loaded: '{key}' holds {type(value).__name__}, not a path"
                )
            path = Path(value).resolve()
            info = read_image_info(path, verify=False)
            d[self.path_key] = str(path)
            d[self.size_key] = torch.tensor([info.height, info.width], dtype=torch.int64)
        return d


def inference_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    image_key: str = "image",
    patch_size: int | Sequence[int] | None = None,
) -> Compose:
    """Inference pipeline: :class:`RecordOriginald`, then the evaluation pipeline on the image only.

    The loading, intensity scaling and resizing are exactly those of validation/test
    (:func:`dussss_monai.data.pipelines.eval_transforms`), so a model sees at inference what it was
    selected on. With ``patch_size`` (a model trained on native-resolution patches) the image keeps its
    native size, for a sliding-window inferer.
    """
    from dussss_monai.data.pipelines import eval_transforms

    return Compose(
        [
            RecordOriginald(image_key),
            eval_transforms(image_size=image_size, channels=channels, keys=(image_key,), patch_size=patch_size),
        ]
    )
