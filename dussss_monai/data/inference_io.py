"""Inputs of the inference bundle: which images to segment, and what to remember of each.

- :func:`list_images` turns a folder of images, a single image file, or a datalist (JSON, CSV, Excel) into the
  items ``[{"image": path, "name": file name}]`` that the inference pipeline reads.
- :class:`InferenceInputs` is what the inference bundle reads: those items, less every file whose header cannot be
  read (each reported and skipped, so one bad file does not stop the others), and the summary at the end.
- :class:`RecordOriginald` records, before the image is loaded and resized, its absolute path
  (``image_path``) and its original size (``orig_size``, ``(H, W)`` as an int64 tensor, read from the
  file header only), so that :class:`~dussss_monai.handlers.mask_writer.MaskWriter` can name each mask
  after its input and resize it back to the input's size.
- :func:`inference_transforms` is the evaluation pipeline (the same loading, intensity scaling and
  resizing as validation and test) on the image alone, preceded by :class:`RecordOriginald`.

3D NIfTI volumes (:mod:`~dussss_monai.data.volumes`) are segmented whole, slice by slice: their ``orig_size`` is the
stored array shape, and the pipeline keeps MONAI's record of the orientation and resizing so that the prediction can
be inverted onto the input's grid (:func:`dussss_monai.bundle.inference_postprocessing`). One run segments either
volumes or 2D images.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform

from dussss_monai.data.datalist import DATALIST_EXTENSIONS
from dussss_monai.data.image_io import SUPPORTED_EXTENSIONS, is_supported_image, read_image_info
from dussss_monai.data.volume_io import is_volume, read_volume_info
from dussss_monai.errors import ConfigError, DatasetError
from dussss_monai.utils.io import atomic_write_text

__all__ = ["list_images", "InferenceInputs", "RecordOriginald", "inference_transforms"]

SPLITS = ("training", "validation", "test", "unlabeled")


def _item(path: Path) -> dict[str, str]:
    return {"image": str(path.resolve()), "name": path.name}


def list_images(
    path: str | os.PathLike,
    split: str = "test",
    recursive: bool = False,
    columns: Mapping[str, str] | None = None,
    image_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Items to segment: ``[{"image": absolute path, "name": file name}, ...]``.

    Args:
        path: one of
            - a folder: every file with a supported extension (PNG, TIFF, JPEG, BMP, NIfTI ``.nii`` /
              ``.nii.gz``), sorted by name; hidden files and other files are skipped;
            - a single image file;
            - a datalist ``.json`` or a table ``.csv`` / ``.xlsx``
              (:func:`dussss_monai.data.datalist.load_datalist`; neither masks nor text are needed): the items of
              section ``split``.
        split: datalist section to use (``training``, ``validation``, ``test`` or ``unlabeled``).
        recursive: also list the images of sub-folders (names stay file names; the writer keeps
            colliding names apart).
        columns: a table's column names (``{"image": "filename"}``).
        image_dir: where a table's relative image paths start.

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

        datalist = load_datalist(
            p, check=False, require_labels=False, require_text=False, columns=columns, image_dir=image_dir
        )
        items = datalist.get(split) or []
        if not items:
            filled = [s for s in SPLITS if datalist.get(s)]
            raise DatasetError(
                [
                    f"{p}: section '{split}' is empty (sections with items: {', '.join(filled) or 'none'}); choose one with split=..."
                ],
                header="no images to segment",
            )
        return [{"image": it["image"], "name": it.get("name") or Path(it["image"]).name} for it in items]
    if is_supported_image(p):
        return [_item(p)]
    raise DatasetError(
        [
            f"{p}: unsupported input (give a folder, an image file ({', '.join(SUPPORTED_EXTENSIONS)}) or a datalist .json/.csv)"
        ],
        header="no images to segment",
    )


class InferenceInputs:
    """The images an inference run segments: :func:`list_images`, less the files that cannot be read.

    Every listed file's header is read (and a PNG's chunk checksums verified) before the run, so a zero-byte,
    truncated or non-image file is reported and skipped instead of stopping the run and losing the masks of the
    files after it. :meth:`finish`, the last step of the run, writes the summary and fails when a file was skipped.

    Args:
        path, split, recursive, columns, image_dir: as :func:`list_images`.

    Raises:
        DatasetError: the input does not exist or lists nothing, or no file at all can be read.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "test",
        recursive: bool = False,
        columns: Mapping[str, str] | None = None,
        image_dir: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(path)
        self.items: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        listed = list_images(path, split=split, recursive=recursive, columns=columns, image_dir=image_dir)
        kinds: dict[bool, str] = {}
        for item in listed:
            try:
                volume = is_volume(item["image"])
                if volume:
                    read_volume_info(item["image"])
                else:
                    read_image_info(item["image"], verify=True)
            except DatasetError as e:
                self.skipped += e.problems
            else:
                self.items.append(item)
                kinds.setdefault(volume, item["image"])
        if not self.items:
            raise DatasetError(self.skipped, header=f"none of the {len(listed)} input(s) in {path} can be read")
        if len(kinds) > 1:
            raise DatasetError(
                [
                    f"{path}: the inputs mix 3D volumes and 2D images (e.g. {kinds[True]} is a volume, {kinds[False]} "
                    "a 2D image): segment them in two runs, e.g. from two folders"
                ],
                header="cannot segment volumes and 2D images in one run",
            )

    def finish(self, output_dir: str | os.PathLike) -> int:
        """Write ``output_dir/skipped.txt`` (the skipped files and why) when any was skipped, and fail then.

        Returns:
            the number of images segmented.

        Raises:
            DatasetError: naming each skipped file, after the others' masks were written.
        """
        if self.skipped:
            listing = atomic_write_text(Path(output_dir) / "skipped.txt", "\n".join(self.skipped) + "\n")
            raise DatasetError(
                self.skipped,
                header=(
                    f"{len(self.skipped)} of {len(self.items) + len(self.skipped)} inputs could not be read and were "
                    f"skipped; the masks of the other {len(self.items)} are in {output_dir} (list: {listing})"
                ),
            )
        return len(self.items)


class RecordOriginald(MapTransform):
    """Record the input file's absolute path and original ``(H, W)`` before it is loaded.

    Apply it to items whose ``keys`` still hold file paths. The size comes from the file header
    (no pixels decoded), with the same orientation as :func:`~dussss_monai.data.image_io.read_image_2d`; of a
    3D volume, the array shape as stored (singleton dimensions included).

    Args:
        keys: the image key (one key).
        path_key: where to store the absolute path (a string).
        size_key: where to store the size, an int64 tensor ``[H, W]`` (collated to ``(B, 2)``); of a volume, the
            stored shape.

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
            d[self.path_key] = str(path)
            if is_volume(path):
                d[self.size_key] = torch.tensor(read_volume_info(path).shape, dtype=torch.int64)
                continue
            info = read_image_info(path, verify=False)
            d[self.size_key] = torch.tensor([info.height, info.width], dtype=torch.int64)
        return d


def inference_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    image_key: str = "image",
    patch_size: int | Sequence[int] | None = None,
    volumes: bool = False,
    window: Sequence[float] | None = None,
    slice_axis: str = "axial",
) -> Compose:
    """Inference pipeline: :class:`RecordOriginald`, then the evaluation pipeline on the image only.

    The loading, intensity scaling and resizing are exactly those of validation/test
    (:func:`dussss_monai.data.pipelines.eval_transforms`), so a model sees at inference what it was
    selected on. With ``patch_size`` (a model trained on native-resolution patches) the image keeps its
    native size, for a sliding-window inferer. With ``volumes`` the whole volume is kept as a ``MetaTensor`` that
    records its orientation and resizing, for ``Invertd``; ``window`` and ``slice_axis`` as in training.
    """
    from dussss_monai.data.pipelines import eval_transforms

    return Compose(
        [
            RecordOriginald(image_key),
            eval_transforms(
                image_size=image_size,
                channels=channels,
                keys=(image_key,),
                patch_size=patch_size,
                volumes=volumes,
                window=window,
                slice_axis=slice_axis,
                track_meta=volumes,
            ),
        ]
    )
