"""2D image + mask + text dictionary transforms and the train / eval / unlabeled / pretrain pipelines.

A sample enters as a datalist item ``{"image": path, "label": path, "text": str, "name": str}`` and
leaves as ``{"image": float32 (C, H, W) in [0, 1], "label": float32 (1, H, W) in {0, 1}, "text",
"name"}`` (plain :class:`torch.Tensor`, so MONAI's default collate stacks tensors and makes
``list[str]`` of the strings). ``text`` and ``name`` are never touched.

Spatial augmentation (paper set-up: flips, 90-degree rotations, rotation up to +-20 degrees) uses
MONAI's dictionary transforms, which draw one random state per call and apply it to every key, so an
image and its mask move together; masks are rotated with nearest-neighbour interpolation and stay
binary.

Two ways to bring an image to the network (``patch_size``):

- ``patch_size=None`` (the paper's protocol): every image is resized to ``image_size`` for training,
  validation and inference.
- ``patch_size=P``: training takes random ``P x P`` crops at the image's native resolution (padded
  first when an image is smaller than ``P``); validation and inference keep the native resolution and
  are meant to run with a sliding-window inferer of ``P x P`` windows
  (:func:`dussss_monai.bundle.make_inferer`). Resizing 1000-pixel H&E tiles to 224 leaves nuclei
  a few pixels wide; native-resolution patches keep them (``docs/method.md``, "What the paper leaves open, and what we chose").

Sentences describe the whole image ("the nuclei density in the upper right is high"), not a patch. With
``grounding_context=True`` (DuSSS in patch mode) the training pipelines therefore also keep the whole
image resized to ``image_size`` (``vlm_image``; for labeled items also its mask, ``vlm_label``) and where
the patch lies in it (``crop_box``: ``[top, left, height, width]`` as fractions of the padded image), so
the text-guided mask is computed on the image the sentence describes and then cropped to the patch
(:meth:`dussss_monai.refiner.VLMPseudoLabelRefiner.crop_to_boxes`). The whole-image copies are not
augmented, and an unlabeled patch then gets no spatial augmentation (the box would no longer describe it).

Note on text: flips and 90-degree rotations change what location words mean ("left lung",
"upper right"). The defaults follow the paper; pass ``flip=False, rotate90=False`` for training
where the text's spatial words must stay true (e.g. the text-guided decoder on QaTa-like data).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    SpatialPadd,
)

from dussss_monai.data.image_io import read_image_2d, read_mask_2d
from dussss_monai.errors import ConfigError, DuSSSError

__all__ = [
    "DataPipeline",
    "LoadImage2Dd",
    "Resize2Dd",
    "ClipIntensityd",
    "BinarizeMaskd",
    "spatial_augmentations",
    "to_network_size",
    "RandCropWithBoxd",
    "CONTEXT_IMAGE_KEY",
    "CONTEXT_LABEL_KEY",
    "CROP_BOX_KEY",
    "train_transforms",
    "eval_transforms",
    "unlabeled_transforms",
    "pretrain_transforms",
]


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


class Resize2Dd(MapTransform):
    """Resize 2D images (bilinear with anti-aliasing) and masks (nearest-exact, stays binary).

    Bilinear interpolation with ``antialias=True`` averages properly when shrinking (e.g. 1000-pixel
    H&E tiles to 224) and interpolates when enlarging; ``nearest-exact`` keeps mask values in
    ``{0, 1}`` and samples at pixel centres, consistent with the image.

    Args:
        keys: keys to resize.
        spatial_size: output ``(H, W)`` or one int for a square.
        mask_keys: the subset of ``keys`` resized as masks.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int | Sequence[int] = 224,
        mask_keys: KeysCollection = ("label",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = _size_pair(spatial_size)
        self.mask_keys = {mask_keys} if isinstance(mask_keys, str) else set(cast(Collection[Hashable], mask_keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key], dtype=torch.float32)
            if tuple(x.shape[-2:]) == self.spatial_size:
                d[key] = x
                continue
            if key in self.mask_keys:
                y = F.interpolate(x[None], size=self.spatial_size, mode="nearest-exact")[0]
            else:
                y = F.interpolate(
                    x[None], size=self.spatial_size, mode="bilinear", align_corners=False, antialias=True
                )[0]
                y = y.clamp_(0.0, 1.0)
            d[key] = y
        return d


class ClipIntensityd(MapTransform):
    """Clip values to ``[low, high]`` (keeps images in ``[0, 1]`` after intensity jitter)."""

    def __init__(
        self, keys: KeysCollection, low: float = 0.0, high: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.low, self.high = float(low), float(high)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(d[key]).clamp(self.low, self.high)
        return d


class BinarizeMaskd(MapTransform):
    """Map mask values to ``{0, 1}`` with ``> threshold`` (a safety net after spatial transforms)."""

    def __init__(
        self, keys: KeysCollection = ("label",), threshold: float = 0.5, allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (torch.as_tensor(d[key]) > self.threshold).to(torch.float32)
        return d


def spatial_augmentations(
    keys: Sequence[str],
    mask_keys: Sequence[str] = ("label",),
    flip: bool = True,
    rotate90: bool = True,
    rotate_degrees: float = 20.0,
    prob: float = 0.5,
) -> list[MapTransform]:
    """The paper's spatial augmentations, applied identically to all ``keys``.

    Args:
        keys: keys to augment together (an image and its masks).
        mask_keys: keys rotated with nearest-neighbour interpolation.
        flip: random horizontal and vertical flips.
        rotate90: random multiples of 90 degrees.
        rotate_degrees: random rotation in ``[-rotate_degrees, rotate_degrees]`` (0 disables it).
        prob: probability of each transform.

    Returns:
        a list of MONAI dictionary transforms (missing keys, e.g. an absent label, are skipped).
    """
    keys = list(keys)
    modes = ["nearest" if k in mask_keys else "bilinear" for k in keys]
    out: list[MapTransform] = []
    if flip:
        out += [
            RandFlipd(keys, prob=prob, spatial_axis=1, allow_missing_keys=True),
            RandFlipd(keys, prob=prob, spatial_axis=0, allow_missing_keys=True),
        ]
    if rotate90:
        out.append(RandRotate90d(keys, prob=prob, max_k=3, allow_missing_keys=True))
    if rotate_degrees:
        r = math.radians(float(rotate_degrees))
        out.append(
            RandRotated(
                keys,
                range_x=r,
                prob=prob,
                keep_size=True,
                mode=modes,
                padding_mode="zeros",
                align_corners=False,
                allow_missing_keys=True,
            )
        )
    return out


def _finish(keys: Sequence[str]) -> list[MapTransform]:
    keys = list(keys) + [CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY]  # the grounding context, when present
    return [EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False, allow_missing_keys=True)]


#: batch keys of the grounding context of a patch (see the module docstring)
CONTEXT_IMAGE_KEY = "vlm_image"
CONTEXT_LABEL_KEY = "vlm_label"
CROP_BOX_KEY = "crop_box"


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


def to_network_size(
    keys: Sequence[str],
    image_size: int | Sequence[int] | None,
    patch_size: int | Sequence[int] | None = None,
    mask_keys: Sequence[str] = ("label",),
    allow_missing_keys: bool = False,
    grounding_context: bool = False,
) -> list[MapTransform]:
    """Bring loaded images (and their masks) to what the network is trained on.

    Args:
        keys: keys transformed together (an image and its masks).
        image_size: resize target when ``patch_size`` is ``None``; ``None`` keeps the native size.
        patch_size: when given, a random ``patch_size`` crop at native resolution (zero-padded first
            where the image is smaller), identical for all ``keys``; ``image_size`` is then not used.
        mask_keys: the subset of ``keys`` resized as masks.
        allow_missing_keys: skip absent keys.
        grounding_context: with ``patch_size``, also keep the whole (padded) image and its first mask at
            ``image_size`` as ``vlm_image`` / ``vlm_label`` before cropping (module docstring).

    Returns:
        a list of MONAI dictionary transforms (possibly empty).

    Raises:
        ConfigError: a size that is not positive.
    """
    keys = list(keys)
    if patch_size is not None:
        roi = _size_pair(patch_size)
        xforms: list[MapTransform] = [
            SpatialPadd(keys, spatial_size=roi, mode="constant", allow_missing_keys=allow_missing_keys)
        ]
        if grounding_context:
            masks = [k for k in keys if k in mask_keys][:1]
            ctx = [CONTEXT_IMAGE_KEY] + ([CONTEXT_LABEL_KEY] if masks else [])
            # (cast: image_size is required here; None fails in Resize2Dd's _size_pair)
            resize_to = cast("int | Sequence[int]", image_size)
            xforms += [CopyItemsd(keys[:1] + masks, times=1, names=ctx), Resize2Dd(ctx, resize_to, mask_keys=ctx[1:])]
        return xforms + [RandCropWithBoxd(keys, roi, allow_missing_keys=allow_missing_keys)]
    if image_size is None:
        return []
    return [
        Resize2Dd(
            keys, image_size, mask_keys=[k for k in keys if k in mask_keys], allow_missing_keys=allow_missing_keys
        )
    ]


def train_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    augment: bool = True,
    keys: Sequence[str] = ("image", "label"),
    flip: bool = True,
    rotate90: bool = True,
    rotate_degrees: float = 20.0,
    patch_size: int | Sequence[int] | None = None,
    grounding_context: bool = False,
) -> DataPipeline:
    """Labeled training pipeline: load, resize (or crop a patch), spatial augmentation (image and mask together).

    Args:
        image_size: output size (square int or ``(H, W)``) when ``patch_size`` is ``None``.
        channels: image channels (1, 3, ``None`` as stored).
        augment: apply the spatial augmentations.
        keys: the image key first, then mask keys.
        flip, rotate90, rotate_degrees: see :func:`spatial_augmentations`.
        patch_size: random native-resolution crops of this size instead of resizing (module docstring).
        grounding_context: with ``patch_size``, also keep ``vlm_image`` / ``vlm_label`` (the whole image and
            mask at ``image_size``) and ``crop_box`` (module docstring). Ignored without ``patch_size``.

    Returns:
        a :class:`DataPipeline` (a :class:`monai.transforms.Compose`).
    """
    keys = list(keys)
    masks = keys[1:]
    xforms: list[Any] = [
        LoadImage2Dd(keys, mask_keys=masks, channels=channels),
        *to_network_size(keys, image_size, patch_size, mask_keys=masks, grounding_context=grounding_context),
    ]
    if augment:
        xforms += spatial_augmentations(keys, masks, flip=flip, rotate90=rotate90, rotate_degrees=rotate_degrees)
        xforms += [BinarizeMaskd(masks), ClipIntensityd(keys[:1])]
    return DataPipeline(xforms + _finish(keys))


def eval_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    keys: Sequence[str] = ("image", "label"),
    patch_size: int | Sequence[int] | None = None,
) -> DataPipeline:
    """Validation / test pipeline: load and resize (mask nearest), no augmentation. A missing mask is allowed.

    With ``patch_size`` set (patch training) nothing is resized: the image keeps its native resolution,
    for a sliding-window inferer of ``patch_size`` windows.
    """
    keys = list(keys)
    masks = keys[1:]
    return DataPipeline(
        [
            LoadImage2Dd(keys, mask_keys=masks, channels=channels, allow_missing_keys=True),
            *to_network_size(
                keys, None if patch_size is not None else image_size, None, masks, allow_missing_keys=True
            ),
        ]
        + _finish(keys)
    )


def unlabeled_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    augment: bool = True,
    flip: bool = True,
    rotate90: bool = True,
    rotate_degrees: float = 20.0,
    patch_size: int | Sequence[int] | None = None,
    grounding_context: bool = False,
) -> DataPipeline:
    """Unlabeled training pipeline: the image only (any ``label`` in the item is removed), text kept.

    ``patch_size``: random native-resolution crops instead of resizing, as in :func:`train_transforms`;
    ``grounding_context`` (with ``patch_size``): also ``vlm_image`` and ``crop_box``, and no spatial
    augmentation of the patch (module docstring).
    """
    context = patch_size is not None and grounding_context
    xforms: list[Any] = [
        DeleteItemsd(keys="label"),
        LoadImage2Dd(["image"], mask_keys=(), channels=channels),
        *to_network_size(["image"], image_size, patch_size, mask_keys=(), grounding_context=grounding_context),
    ]
    if context:  # the box must keep describing the patch
        flip, rotate90, rotate_degrees = False, False, 0.0
    if augment:
        xforms += spatial_augmentations(["image"], (), flip=flip, rotate90=rotate90, rotate_degrees=rotate_degrees)
        xforms.append(ClipIntensityd(["image"]))
    return DataPipeline(xforms + _finish(["image"]))


def _view_augmentations(key: str, flip: bool, rotate90: bool, rotate_degrees: float) -> list[MapTransform]:
    return spatial_augmentations([key], (), flip=flip, rotate90=rotate90, rotate_degrees=rotate_degrees) + [
        RandScaleIntensityd(key, factors=0.1, prob=0.5),
        RandAdjustContrastd(key, gamma=(0.8, 1.25), prob=0.5),
        RandGaussianNoised(key, std=0.02, prob=0.3),
        ClipIntensityd(key),
    ]


def pretrain_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    flip: bool = True,
    rotate90: bool = True,
    rotate_degrees: float = 20.0,
) -> DataPipeline:
    """Stage-1 pipeline: ``image`` and ``image_aug``, two independently augmented views; no label.

    Each view gets its own random spatial augmentation and mild intensity jitter (scale +-10 %,
    gamma 0.8-1.25, Gaussian noise 0.02), then is clipped to ``[0, 1]``. ``text`` is kept (its
    augmentation is :mod:`dussss_monai.data.text_augmentation`'s job).
    """
    xforms: list[Any] = [
        DeleteItemsd(keys="label"),
        LoadImage2Dd(["image"], mask_keys=(), channels=channels),
        Resize2Dd(["image"], image_size, mask_keys=()),
        CopyItemsd(keys="image", times=1, names="image_aug"),
    ]
    xforms += _view_augmentations("image", flip, rotate90, rotate_degrees)
    xforms += _view_augmentations("image_aug", flip, rotate90, rotate_degrees)
    return DataPipeline(xforms + _finish(["image", "image_aug"]))
