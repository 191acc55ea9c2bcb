"""The train / unlabeled / eval / pretrain pipelines: MONAI dictionary transforms composed per use.

Two ways to bring an image to the network (``patch_size``):

- ``patch_size=None`` (the paper's protocol): every image is resized to ``image_size`` for training, validation
  and inference.
- ``patch_size=P``: training takes random ``P x P`` crops at the image's native resolution (padded first when an
  image is smaller than ``P``); validation and inference keep the native resolution and run a sliding-window
  inferer of ``P x P`` windows (:func:`dussss_monai.bundle.make_inferer`). Resizing 1000-pixel H&E tiles to 224
  leaves nuclei a few pixels wide; native-resolution patches keep them (``docs/method.md``, "What the paper leaves
  open, and what we chose").

Sentences describe the whole image ("the nuclei density in the upper right is high"), not a patch. With
``grounding_context=True`` (DuSSS in patch mode) the training pipelines also keep the whole image resized to
``image_size`` (``vlm_image``; for labeled items also its mask, ``vlm_label``) and where the patch lies in it
(``crop_box``: ``[top, left, height, width]`` as fractions of the padded image), so the text-guided mask is computed
on the image the sentence describes and cropped to the patch. The whole-image copies are not augmented, and an
unlabeled patch then gets no spatial augmentation (the box would no longer describe it).

Spatial augmentation (the paper's flips, 90-degree rotations and rotation up to +-20 degrees) draws one random
state per call and applies it to every key, so an image and its mask move together. Flips and 90-degree rotations
change what location words mean ("left lung", "upper right"): pass ``flip=False, rotate90=False`` where the text's
spatial words must stay true (the QaTa-COV19 bundle does). Colour augmentation (H&E stain jitter,
:mod:`dussss_monai.data.stain`, and stain transfer toward other tiles' stains, :mod:`dussss_monai.data.stain_transfer`)
is optional and touches the image only.

Weak-to-strong consistency: with ``strong_view=True`` the unlabeled pipeline also writes ``image_strong``, a copy
of the (weakly, spatially augmented) image with strong colour, contrast and blur perturbations, for the student;
the teacher and the VLM read ``image``.

Volumes (``volumes=True``, :mod:`dussss_monai.data.volumes`): the items name 3D NIfTI volumes. The training and
stage-1 pipelines load each volume (oriented so that ``slice_axis`` is last, scaled by ``window``) and draw one 2D
slice of it per read, which then goes through the same steps as a 2D image; the evaluation pipeline keeps the whole
volume, resized in-plane only, for a slice-by-slice inferer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.transforms import (
    AsDiscreted,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    Resized,
    SpatialPadd,
    SqueezeDimd,
)

from dussss_monai.data.augmentations import clip_to_unit_range, colour_augmentations, strong_view_augmentations
from dussss_monai.data.stain_transfer import EstimateHEStaind, HEStain
from dussss_monai.data.transforms import (
    CONTEXT_IMAGE_KEY,
    CONTEXT_LABEL_KEY,
    STUDENT_IMAGE_KEY,
    DataPipeline,
    LoadImage2Dd,
    RandCropWithBoxd,
    _size_pair,
)
from dussss_monai.data.volumes import PickSliced, RandSliced, load_volume
from dussss_monai.errors import ConfigError

__all__ = [
    "resize",
    "spatial_augmentations",
    "to_network_size",
    "train_transforms",
    "eval_transforms",
    "unlabeled_transforms",
    "pretrain_transforms",
    "pretrain_validation_transforms",
]


def resize(
    keys: Sequence[str],
    size: int | Sequence[int],
    mask_keys: Sequence[str] = (),
    allow_missing_keys: bool = False,
    volumes: bool = False,
) -> list[MapTransform]:
    """MONAI's ``Resized``: images bilinear with anti-aliasing (a Gaussian before shrinking, as scikit-image),
    masks nearest-exact, so they stay binary and are sampled at pixel centres like the image. ``volumes``: resize
    each slice (the first two spatial axes), keep the number of slices."""
    keys = list(keys)
    modes = ["nearest-exact" if k in mask_keys else "bilinear" for k in keys]
    smooth = [k not in mask_keys for k in keys]
    spatial: tuple[int, ...] = _size_pair(size) + ((-1,) if volumes else ())
    return [
        Resized(keys, spatial, mode=modes, anti_aliasing=smooth, allow_missing_keys=allow_missing_keys),
        *clip_to_unit_range([k for k in keys if k not in mask_keys], allow_missing_keys=True),
    ]


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


def _finish(keys: Sequence[str], track_meta: bool = False) -> list[MapTransform]:
    keys = list(keys) + [CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY]  # the grounding context, when present
    return [EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=track_meta, allow_missing_keys=True)]


def _load(
    keys: Sequence[str],
    mask_keys: Sequence[str],
    channels: int | None,
    volumes: bool = False,
    window: Sequence[float] | None = None,
    slice_axis: str = "axial",
    draw: str | None = None,
    allow_missing_keys: bool = False,
) -> list[MapTransform]:
    """Load images and masks: 2D files (:class:`LoadImage2Dd`), or volumes (:func:`load_volume`), of which ``draw``
    keeps one 2D slice (``"random"``: :class:`RandSliced`, ``"pick"``: :class:`PickSliced`, ``None``: the whole
    volume). The first mask key tells the slice samplers where the foreground is."""
    keys, masks = list(keys), list(mask_keys)
    if not volumes:
        return [LoadImage2Dd(keys, mask_keys=masks, channels=channels, allow_missing_keys=allow_missing_keys)]
    xforms = load_volume(keys, masks, channels, window, slice_axis, allow_missing_keys=allow_missing_keys)
    if draw is None:
        return xforms
    label = masks[0] if masks else None
    sampler = RandSliced(keys, label_key=label) if draw == "random" else PickSliced(keys, label_key=label)
    return xforms + [sampler, SqueezeDimd(keys, dim=3, allow_missing_keys=True)]


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
        patch_size: when given, a random ``patch_size`` crop at native resolution (zero-padded first where the
            image is smaller), identical for all ``keys``; ``image_size`` is then the size of the grounding context.
        mask_keys: the subset of ``keys`` resized as masks.
        allow_missing_keys: skip absent keys.
        grounding_context: with ``patch_size``, also keep the whole (padded) image and its first mask at
            ``image_size`` as ``vlm_image`` / ``vlm_label`` before cropping (module docstring).

    Returns:
        a list of MONAI dictionary transforms (possibly empty).

    Raises:
        ConfigError: a size that is not positive, or a grounding context without ``image_size``.
    """
    keys = list(keys)
    masks = [k for k in keys if k in mask_keys]
    if patch_size is not None:
        roi = _size_pair(patch_size)
        xforms: list[MapTransform] = [
            SpatialPadd(keys, spatial_size=roi, mode="constant", allow_missing_keys=allow_missing_keys)
        ]
        if grounding_context:
            if image_size is None:
                raise ConfigError("a grounding context (DuSSS in patch mode) needs image_size, the VLM's input size")
            ctx = [CONTEXT_IMAGE_KEY] + ([CONTEXT_LABEL_KEY] if masks else [])
            xforms += [CopyItemsd(keys[:1] + masks[:1], times=1, names=ctx), *resize(ctx, image_size, ctx[1:])]
        return xforms + [RandCropWithBoxd(keys, roi, allow_missing_keys=allow_missing_keys)]
    if image_size is None:
        return []
    return resize(keys, image_size, mask_keys=masks, allow_missing_keys=allow_missing_keys)


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
    stain_jitter: float = 0.0,
    stain_references: Sequence[HEStain] = (),
    stain_transfer_prob: float = 0.0,
    volumes: bool = False,
    window: Sequence[float] | None = None,
    slice_axis: str = "axial",
) -> DataPipeline:
    """Labeled training pipeline: load (a volume: and draw one slice), resize (or crop a patch), spatial augmentation
    of image and mask together, colour augmentation of the image.

    Args:
        image_size: output size (square int or ``(H, W)``) when ``patch_size`` is ``None``.
        channels: image channels (1, 3, ``None`` as stored).
        augment: apply the augmentations.
        keys: the image key first, then mask keys.
        flip, rotate90, rotate_degrees: see :func:`spatial_augmentations`.
        patch_size: random native-resolution crops of this size instead of resizing (module docstring).
        grounding_context: with ``patch_size``, also keep ``vlm_image`` / ``vlm_label`` (the whole image and
            mask at ``image_size``) and ``crop_box`` (module docstring). Ignored without ``patch_size``.
        stain_jitter: ``sigma`` of the HED stain jitter (RGB H&E images; 0: none).
        stain_references: stains a labeled crop may be re-stained with, e.g. the unlabeled tiles'
            (:func:`~dussss_monai.data.stain_transfer.he_stain_references`; RGB H&E images).
        stain_transfer_prob: probability of that transfer per crop (0, or no references: none).
        volumes: the items are 3D volumes: each read draws one slice, preferring slices with foreground
            (:class:`~dussss_monai.data.volumes.RandSliced`).
        window: volumes: the intensity window (:func:`~dussss_monai.data.volumes.load_volume`).
        slice_axis: volumes: ``axial``, ``coronal`` or ``sagittal``.

    Returns:
        a :class:`~dussss_monai.data.transforms.DataPipeline` (a :class:`monai.transforms.Compose`).

    Raises:
        ConfigError: a ``stain_transfer_prob`` outside ``[0, 1]``, a bad window or slice axis.
    """
    keys = list(keys)
    masks = keys[1:]
    xforms: list[Any] = _load(keys, masks, channels, volumes, window, slice_axis, draw="random")
    if augment and stain_transfer_prob > 0 and len(stain_references) > 0:
        xforms.append(EstimateHEStaind(keys[0]))  # the whole tile's stain, before cropping
    xforms += to_network_size(keys, image_size, patch_size, mask_keys=masks, grounding_context=grounding_context)
    if augment:
        xforms += spatial_augmentations(keys, masks, flip=flip, rotate90=rotate90, rotate_degrees=rotate_degrees)
        xforms += [AsDiscreted(masks, threshold=0.5), *clip_to_unit_range(keys[:1])]
        xforms += colour_augmentations(keys[0], stain_jitter, stain_references, stain_transfer_prob)
    return DataPipeline(xforms + _finish(keys))


def eval_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    keys: Sequence[str] = ("image", "label"),
    patch_size: int | Sequence[int] | None = None,
    volumes: bool = False,
    window: Sequence[float] | None = None,
    slice_axis: str = "axial",
    track_meta: bool = False,
) -> DataPipeline:
    """Validation / test pipeline: load and resize (mask nearest), no augmentation. A missing mask is allowed.

    With ``patch_size`` set (patch training) nothing is resized: the image keeps its native resolution, for a
    sliding-window inferer of ``patch_size`` windows. With ``volumes`` the whole volume ``(C, H, W, D)`` is kept,
    each slice resized to ``image_size`` (or kept native with ``patch_size``), for a slice-by-slice inferer;
    ``window`` and ``slice_axis`` as in :func:`train_transforms`. ``track_meta`` keeps MONAI's record of the
    orientation and resizing (``MetaTensor``), which inference inverts.
    """
    keys = list(keys)
    masks = keys[1:]
    size = None if patch_size is not None else image_size
    if volumes:
        loaded = _load(keys, masks, channels, True, window, slice_axis, allow_missing_keys=True)
        sized = resize(keys, size, masks, allow_missing_keys=True, volumes=True) if size is not None else []
        return DataPipeline(loaded + sized + _finish(keys, track_meta))
    return DataPipeline(
        [
            LoadImage2Dd(keys, mask_keys=masks, channels=channels, allow_missing_keys=True),
            *to_network_size(keys, size, None, masks, allow_missing_keys=True),
        ]
        + _finish(keys, track_meta)
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
    strong_view: bool = False,
    stain_jitter: float = 0.0,
    stain_references: Sequence[HEStain] = (),
    stain_transfer_prob: float = 0.0,
    volumes: bool = False,
    window: Sequence[float] | None = None,
    slice_axis: str = "axial",
) -> DataPipeline:
    """Unlabeled training pipeline: the image only (any ``label`` in the item is removed), text kept; of a volume,
    one slice drawn from all its slices per read.

    Args:
        image_size, channels, augment, flip, rotate90, rotate_degrees, patch_size: as in :func:`train_transforms`.
        grounding_context: with ``patch_size``, also ``vlm_image`` and ``crop_box``, and no spatial augmentation of
            the patch (module docstring).
        strong_view: also write ``image_strong``, the student's strongly augmented copy
            (:func:`strong_view_augmentations`).
        stain_jitter: ``sigma`` of the stain jitter of the strong view (RGB H&E images; 0: none).
        stain_references: stains the strong view may be re-stained with, e.g. every training tile's
            (:func:`~dussss_monai.data.stain_transfer.he_stain_references`; RGB H&E images). The teacher's ``image``
            keeps the tile's own stain.
        stain_transfer_prob: probability of that transfer per strong view (0, no references or no strong view:
            none).
        volumes, window, slice_axis: as in :func:`train_transforms`.

    Returns:
        a :class:`~dussss_monai.data.transforms.DataPipeline` (a :class:`monai.transforms.Compose`).

    Raises:
        ConfigError: with ``strong_view``, a ``stain_transfer_prob`` outside ``[0, 1]``.
    """
    context = patch_size is not None and grounding_context
    transfer = strong_view and stain_transfer_prob > 0 and len(stain_references) > 0
    xforms: list[Any] = [
        DeleteItemsd(keys="label"),
        *_load(["image"], (), channels, volumes, window, slice_axis, draw="random"),
        *([EstimateHEStaind("image")] if transfer else []),  # the whole tile's stain, before cropping
        *to_network_size(["image"], image_size, patch_size, mask_keys=(), grounding_context=grounding_context),
    ]
    if context:  # the box must keep describing the patch
        flip, rotate90, rotate_degrees = False, False, 0.0
    if augment:
        xforms += spatial_augmentations(["image"], (), flip=flip, rotate90=rotate90, rotate_degrees=rotate_degrees)
        xforms += clip_to_unit_range(["image"])
    keys = ["image"]
    if strong_view:
        xforms += [CopyItemsd("image", times=1, names=STUDENT_IMAGE_KEY)]
        xforms += strong_view_augmentations(STUDENT_IMAGE_KEY, stain_jitter, stain_references, stain_transfer_prob)
        keys.append(STUDENT_IMAGE_KEY)
    return DataPipeline(xforms + _finish(keys))


def _view_augmentations(key: str, flip: bool, rotate90: bool, rotate_degrees: float) -> list[MapTransform]:
    return spatial_augmentations([key], (), flip=flip, rotate90=rotate90, rotate_degrees=rotate_degrees) + [
        RandScaleIntensityd(key, factors=0.1, prob=0.5),
        RandAdjustContrastd(key, gamma=(0.8, 1.25), prob=0.5),
        RandGaussianNoised(key, std=0.02, prob=0.3),
        *clip_to_unit_range([key]),
    ]


def pretrain_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    flip: bool = True,
    rotate90: bool = True,
    rotate_degrees: float = 20.0,
    volumes: bool = False,
    window: Sequence[float] | None = None,
    slice_axis: str = "axial",
) -> DataPipeline:
    """Stage-1 pipeline: ``image`` and ``image_aug``, two independently augmented views; no label.

    Each view gets its own random spatial augmentation and mild intensity jitter (scale +-10 %, gamma 0.8-1.25,
    Gaussian noise 0.02), then is clipped to ``[0, 1]``. ``text`` is kept (its augmentation is
    :mod:`dussss_monai.data.text_augmentation`'s job). Of a volume, one slice is drawn per read as for stage 2's
    labeled images (the mask, where there is one, only steers the draw) and ``text`` is that slice's sentence where
    the item gives one; ``window`` and ``slice_axis`` as in :func:`train_transforms`.
    """
    load = (
        [
            *_load(["image", "label"], ["label"], channels, True, window, slice_axis, "random", True),
            DeleteItemsd("label"),
        ]
        if volumes
        else [DeleteItemsd(keys="label"), LoadImage2Dd(["image"], mask_keys=(), channels=channels)]
    )
    xforms: list[Any] = [
        *load,
        *resize(["image"], image_size),
        CopyItemsd(keys="image", times=1, names="image_aug"),
    ]
    xforms += _view_augmentations("image", flip, rotate90, rotate_degrees)
    xforms += _view_augmentations("image_aug", flip, rotate90, rotate_degrees)
    return DataPipeline(xforms + _finish(["image", "image_aug"]))


def pretrain_validation_transforms(
    image_size: int | Sequence[int] = 224,
    channels: int | None = 1,
    volumes: bool = False,
    window: Sequence[float] | None = None,
    slice_axis: str = "axial",
) -> DataPipeline:
    """Stage-1 validation pipeline: the image alone, resized, and ``text``. Of a volume, one fixed slice: the one with
    the most foreground in its mask (the one with a sentence, where only some have one), so that every validation
    reads the same image-sentence pairs (:class:`~dussss_monai.data.volumes.PickSliced`).
    """
    if not volumes:
        return eval_transforms(image_size=image_size, channels=channels, keys=("image",))
    xforms: list[Any] = [
        *_load(["image", "label"], ["label"], channels, True, window, slice_axis, "pick", True),
        DeleteItemsd("label"),
        *resize(["image"], image_size),
    ]
    return DataPipeline(xforms + _finish(["image"]))
