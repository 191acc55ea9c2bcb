"""2D dictionary transforms of the project: loading images and masks, the pipeline that lets the project's
errors through, and the random crop that records where it lies (the pipelines are in
:mod:`dussss_monai.data.pipelines`).

A sample enters as a datalist item ``{"image": path, "label": path, "text": str, "name": str}`` and
leaves the pipelines as ``{"image": float32 (C, H, W) in [0, 1], "label": float32 (1, H, W) in {0, 1}, "text",
"name"}`` (plain :class:`torch.Tensor`, so MONAI's default collate stacks tensors and makes ``list[str]`` of the
strings). ``text`` and ``name`` are never touched.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, Randomizable

from dussss_monai.data.image_io import read_image_2d, read_mask_2d
from dussss_monai.errors import ConfigError, DuSSSError

__all__ = [
    "DataPipeline",
    "LoadImage2Dd",
    "RandCropWithBoxd",
    "CONTEXT_IMAGE_KEY",
    "CONTEXT_LABEL_KEY",
    "CROP_BOX_KEY",
    "STUDENT_IMAGE_KEY",
]

#: batch keys of the grounding context of a patch (see :mod:`dussss_monai.data.pipelines`)
CONTEXT_IMAGE_KEY = "vlm_image"
CONTEXT_LABEL_KEY = "vlm_label"
CROP_BOX_KEY = "crop_box"
#: batch key of the student's strongly augmented copy of an unlabeled image
STUDENT_IMAGE_KEY = "image_strong"


def _size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 8 for s in size):
        raise ConfigError(f"image_size must be an int >= 8 or a pair of them, got {image_size!r}")
    return int(size[0]), int(size[1])


class DataPipeline(Compose):
    """A :class:`monai.transforms.Compose` that lets the project's own errors through unwrapped.

    MONAI wraps any exception raised inside a transform in ``RuntimeError("applying transform ...")``;
    this subclass re-raises the original :class:`~dussss_monai.errors.DuSSSError` (e.g. the
    :class:`~dussss_monai.errors.DatasetError` naming an unreadable file) so that entry points can
    print its one-line message instead of a stack trace.
    """

    def __call__(
        self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy: bool | None = None
    ) -> Any:
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as e:
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, DuSSSError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause.with_traceback(None) from None


class LoadImage2Dd(MapTransform):
    """Load 2D images and binary masks from file paths (see :mod:`dussss_monai.data.image_io`).

    Args:
        keys: keys whose values are file paths to load.
        mask_keys: the subset of ``keys`` that are masks (read with :func:`read_mask_2d`, ``(1, H, W)``
            in ``{0, 1}``); the others are images (:func:`read_image_2d`, ``(C, H, W)`` in ``[0, 1]``).
        channels: image channels: 1 (grey), 3 (RGB) or ``None`` (as stored).
        scaling: intensity scaling of :func:`read_image_2d` (``"auto"`` or ``"minmax"``).
        window: optional intensity window of :func:`read_image_2d`.
        allow_missing_keys: skip keys absent from the data (e.g. ``label`` of unlabeled items).

    Adds ``name`` (the file name of the first key present) when the data has none.

    Raises:
        DatasetError: from the readers, naming the file.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        mask_keys: KeysCollection = ("label",),
        channels: int | None = 1,
        scaling: str = "auto",
        window: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = {mask_keys} if isinstance(mask_keys, str) else set(cast(Collection[Hashable], mask_keys))
        if channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1, 3 or None, got {channels!r}")
        self.channels = channels
        self.scaling = scaling
        self.window = window

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if key in self.mask_keys:
                arr = read_mask_2d(path)
            else:
                arr = read_image_2d(path, channels=self.channels, scaling=self.scaling, window=self.window)  # type: ignore[arg-type]
            if "name" not in d and isinstance(path, str):
                d["name"] = path.replace("\\", "/").rsplit("/", 1)[-1]
            d[key] = torch.from_numpy(arr)
        return d


class RandCropWithBoxd(Randomizable, MapTransform):
    """Random crop of ``roi_size``, the same window for every key, recording where the window lies.

    The window's ``[top, left, height, width]``, as fractions of the input's ``(H, W)``, is stored under
    ``box_key`` (a ``float32`` tensor of 4), so that a map computed on the whole image can be cropped to the
    same region at any resolution. The input must be at least ``roi_size`` (pad it first).

    Args:
        keys: keys cropped together (the first one sets the size).
        roi_size: ``(h, w)`` or one int.
        box_key: where the box goes.
        allow_missing_keys: skip absent keys.

    Raises:
        DuSSSError: when the image is smaller than ``roi_size``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: int | Sequence[int],
        box_key: str = CROP_BOX_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.roi_size = _size_pair(roi_size)
        self.box_key = box_key
        self._origin = (0, 0)

    def randomize(self, data: tuple[int, int]) -> None:
        """Draw the window's top-left corner for an input of spatial size ``data``."""
        (h, w), (rh, rw) = data, self.roi_size
        self._origin = (int(self.R.randint(0, h - rh + 1)), int(self.R.randint(0, w - rw + 1)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        h, w = (int(v) for v in d[keys[0]].shape[-2:])
        rh, rw = self.roi_size
        if h < rh or w < rw:
            raise DuSSSError(
                f"RandCropWithBoxd: image of size {(h, w)} is smaller than the patch {self.roi_size}; pad it first"
            )
        self.randomize((h, w))
        y0, x0 = self._origin
        for key in keys:
            d[key] = d[key][..., y0 : y0 + rh, x0 : x0 + rw]
        d[self.box_key] = torch.tensor([y0 / h, x0 / w, rh / h, rw / w], dtype=torch.float32)
        return d
