"""Dataset checks run before any training: every problem at once, each naming its file.

:func:`check_dataset` walks a datalist (``{"training": [...], "validation": [...], "test": [...]}``
of ``{"image", "label", "text", "name"}`` items) and collects, without stopping at the first one:

- an item that is not a mapping, or whose ``image`` is missing, or whose ``label``/``text`` is missing where the
  caller requires it (``require_labels``, ``require_text``: for every section, or for the sections named), or is
  not a string;
- image files that are missing, empty, of an unsupported type, unreadable, too small or too large (from the
  header, before anything is decoded), or whose pixels are NaN, infinite or all the same (decoded once);
- mask files with the same problems, masks that are not binary or whose colour channels differ
  (masks are fully decoded: they are small);
- an image and its mask of different sizes;
- empty text (after stripping whitespace);
- the same image file listed twice, or two different images sharing a ``name`` (predictions and split
  files are keyed by name);
- a mix of grey and colour images when ``channels`` is ``None`` (a batch would not stack);
- 3D NIfTI volumes (:mod:`~dussss_monai.data.volume_io`): the header, the voxels, a mask that is not a binary volume
  of the image's shape and affine, per-slice sentences (``slice_texts``) that are not ``{slice index: sentence}``,
  and a dataset that mixes volumes with 2D images.

It raises one :class:`~dussss_monai.errors.DatasetError` listing all of them. :func:`decode_utf8`
turns undecodable text files into the same error type, naming the byte offset and line.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from dussss_monai.data.image_io import ImageInfo, check_pixels, read_image_info, read_mask_2d
from dussss_monai.data.volume_io import (
    VolumeInfo,
    check_volume_pixels,
    is_volume,
    read_volume_info,
    volume_mask_problems,
)
from dussss_monai.errors import DatasetError

__all__ = [
    "SECTIONS",
    "SLICE_TEXTS_KEY",
    "check_dataset",
    "collect_problems",
    "decode_utf8",
    "item_name",
    "required_in",
]

#: the datalist sections, in order; ``unlabeled`` holds training images given without masks
SECTIONS: tuple[str, ...] = ("training", "validation", "test", "unlabeled")
#: an item's optional per-slice sentences of a volume: ``{"<slice index>": "sentence", ...}``
SLICE_TEXTS_KEY = "slice_texts"


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
    """Decode ``data`` read from ``path`` as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        DatasetError: naming the file, the byte offset and the line of the first invalid byte.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(
            [
                f"{path}: not valid UTF-8 text: invalid byte 0x{data[e.start]:02x} at byte offset {e.start} (line {line}); "
                "save the file as UTF-8"
            ],
            header=f"cannot read {Path(path).name}",
        ) from e


def item_name(item: Mapping[str, Any]) -> str:
    """The item's ``name`` if given, else the file name of its ``image``."""
    name = item.get("name")
    if isinstance(name, str) and name:
        return name
    return Path(str(item.get("image", ""))).name


def _iter_items(datalist: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, Any]]:
    if isinstance(datalist, Mapping):
        out = []
        for section in SECTIONS:
            items = datalist.get(section, [])
            if items is None:
                continue
            if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
                out.append((section, items))
                continue
            out += [(f"{section}[{i}]", it) for i, it in enumerate(items)]
        return out
    return [(f"item[{i}]", it) for i, it in enumerate(datalist)]


def required_in(requirement: bool | Collection[str], where: str) -> bool:
    """Whether a requirement given for every section (``True``) or for some (their names) applies at ``where``."""
    if isinstance(requirement, bool):
        return requirement
    return where.split("[", 1)[0] in requirement


def collect_problems(
    datalist: Mapping[str, Any] | Sequence[Any],
    require_labels: bool | Collection[str] = True,
    channels: int | None = None,
    source: str | os.PathLike | None = None,
    files: bool = True,
    require_text: bool | Collection[str] = True,
) -> list[str]:
    """Run every check of :func:`check_dataset` and return the problems found (empty when none).

    With ``files=False`` only the structure is checked (keys, types, text, duplicates); no file is opened.
    """
    where_src = f"{source}: " if source is not None else ""
    problems: list[str] = []
    if isinstance(datalist, Mapping):
        for section in SECTIONS:
            val = datalist.get(section, [])
            if val is not None and (not isinstance(val, Sequence) or isinstance(val, (str, bytes))):
                problems.append(f"{where_src}'{section}' must be a list of items, got {type(val).__name__}")
    seen_images: dict[str, str] = {}
    seen_names: dict[str, tuple[str, str]] = {}
    channel_counts: dict[int, str] = {}
    kinds: dict[str, str] = {}  # "volume" / "2D image" -> the first image of that kind
    for where, item in _iter_items(datalist):
        if not isinstance(item, Mapping):
            if where not in SECTIONS:  # a section that is not a list was reported above
                problems.append(
                    f"{where_src}{where}: an item must be an object with 'image', 'label', 'text', got {_show(item)}"
                )
            continue
        image = item.get("image")
        label = item.get("label")
        text = item.get("text")
        slice_texts = item.get(SLICE_TEXTS_KEY)
        info: ImageInfo | None = None
        volume: VolumeInfo | None = None
        is_vol = False
        if not isinstance(image, str) or not image:
            problems.append(f"{where_src}{where}: 'image' must be a file path string, got {_show(image)}")
        else:
            if image in seen_images:
                problems.append(f"{image}: listed twice ({seen_images[image]} and {where}); each image may appear once")
            else:
                seen_images[image] = where
            name = item_name(item)
            other = seen_names.get(name)
            if other is not None and other[1] != image:
                problems.append(
                    f"{image}: duplicate name '{name}' (also {other[1]} at {other[0]}); names must be unique "
                    "because predictions and splits are keyed by name: rename one or give each item a unique 'name'"
                )
            else:
                seen_names.setdefault(name, (where, image))
            is_vol = files and is_volume(image)
            try:
                if is_vol:
                    volume = read_volume_info(image)
                    check_volume_pixels(image)
                elif files:
                    info = read_image_info(image)
                    check_pixels(image)
            except DatasetError as e:
                problems += e.problems
            if volume is not None or info is not None:
                kinds.setdefault("volume" if volume is not None else "2D image", image)
            if info is not None and channels is None:
                channel_counts.setdefault(info.channels, image)
        if label is None:
            if required_in(require_labels, where):
                problems.append(
                    f"{where_src}{where} ({_img(image)}): no 'label' (mask) given; {where.split('[', 1)[0]} images need masks"
                )
        elif not isinstance(label, str) or not label:
            problems.append(
                f"{where_src}{where} ({_img(image)}): 'label' must be a file path string, got {_show(label)}"
            )
        elif is_vol:  # an unreadable volume was reported above; its mask is checked against a readable one
            if volume is not None:
                problems += volume_mask_problems(label, volume, str(image))
        elif files and is_volume(label):
            problems.append(f"{label}: the mask is a 3D volume but its image {_img(image)} is a 2D image")
        elif files:
            try:
                mask = read_mask_2d(label)
            except DatasetError as e:
                problems += e.problems
            else:
                if info is not None and mask.shape[1:] != (info.height, info.width):
                    problems.append(
                        f"{label}: mask size {mask.shape[2]}x{mask.shape[1]} differs from its image "
                        f"{_img(image)} ({info.width}x{info.height})"
                    )
        if slice_texts is not None:
            problems += _slice_text_problems(slice_texts, f"{where_src}{where} ({_img(image)})")
        if text is None:
            if required_in(require_text, where) and not slice_texts:
                problems.append(
                    f"{where_src}{where} ({_img(image)}): no 'text' given; this run reads a description of every image"
                )
        elif not isinstance(text, str):
            problems.append(f"{where_src}{where} ({_img(image)}): 'text' is not text ({type(text).__name__} {text!r})")
        elif not text.strip():
            problems.append(f"{where_src}{where} ({_img(image)}): 'text' is empty")
    if len(kinds) > 1:
        problems.append(
            f"{where_src}the data mix 3D volumes and 2D images (e.g. {kinds['volume']} is a volume, "
            f"{kinds['2D image']} a 2D image): give one kind per dataset, volumes or 2D slices"
        )
    if len(channel_counts) > 1:
        problems.append(
            f"{where_src}images mix grey and colour (e.g. {channel_counts.get(1)} is grey, {channel_counts.get(3)} is colour); "
            "set channels=1 or channels=3 to convert them"
        )
    return problems


def check_dataset(
    datalist: Mapping[str, Any] | Sequence[Any],
    require_labels: bool | Collection[str] = True,
    channels: int | None = None,
    source: str | os.PathLike | None = None,
    require_text: bool | Collection[str] = True,
) -> None:
    """Check every item of a datalist and raise one error listing all problems.

    Args:
        datalist: ``{"training": [...], "validation": [...], "test": [...]}`` (missing sections are
            empty) or a plain list of items; items are ``{"image": path, "label": path, "text": str}``
            with an optional ``"name"``.
        require_labels: every item must have a mask (``True``), none (``False``, image-only data), or the items of
            the sections named (e.g. ``("validation",)``: training images without a mask are unlabeled).
        require_text: the same for the description (``False`` where no sentence is read).
        channels: the channel count the pipeline converts to (1, 3); ``None`` requires all images to
            store the same number of channels.
        source: the file the datalist came from, named in item-level messages.

    Raises:
        DatasetError: listing every problem found, each naming its file.
    """
    problems = collect_problems(
        datalist, require_labels=require_labels, channels=channels, source=source, require_text=require_text
    )
    if problems:
        raise DatasetError(problems, header=f"dataset check failed{f' for {source}' if source is not None else ''}")


def _slice_text_problems(slice_texts: Any, where: str) -> list[str]:
    """The problems of an item's per-slice sentences: not ``{slice index (>= 0): non-empty sentence}``."""
    example = '(e.g. "slice_texts": {"12": "One lesion in the left iliac bone."})'
    if not isinstance(slice_texts, Mapping):
        return [f"{where}: '{SLICE_TEXTS_KEY}' must map slice indices to sentences {example}, got {_show(slice_texts)}"]
    problems = []
    for key, sentence in slice_texts.items():
        if not str(key).strip().isdigit():
            problems.append(f"{where}: '{SLICE_TEXTS_KEY}' key {key!r} is not a slice index (0, 1, 2, ...) {example}")
        elif not isinstance(sentence, str) or not sentence.strip():
            problems.append(f"{where}: '{SLICE_TEXTS_KEY}' of slice {key}: the sentence is empty or not text")
    return problems


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _img(image: Any) -> str:
    return image if isinstance(image, str) and image else "no image"
