"""Reading the headers of 3D NIfTI volumes and checking them, with the errors of :mod:`~dussss_monai.data.image_io`.

A *volume* is a NIfTI file (``.nii``, ``.nii.gz``) with three dimensions larger than one (singleton dimensions,
e.g. a fourth of size 1, are dropped); a NIfTI file with two is a 2D slice, read by
:mod:`~dussss_monai.data.image_io` as before. An array ``(H, W, 3)`` stays a colour slice (the RGB rule of 2D
NIfTI), so a volume needs more than three slices along its last axis or a first axis that is not 3.

The checks here read what the pipelines later load with MONAI's ``LoadImaged`` (:mod:`~dussss_monai.data.volumes`),
so that a bad volume is refused before training with a message naming the file:

- :func:`read_volume_info`: the header (shape, affine, dtype) without the voxels;
- :func:`check_volume_pixels`: NaN, infinite or constant voxels;
- :func:`volume_mask_problems`: a mask that is not a binary volume of the image's shape and affine (a mask on another
  grid would not overlay its scan).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dussss_monai.data.image_io import (
    MAX_SIZE,
    MIN_SIZE,
    NIFTI_EXTENSIONS,
    _check_file,
    _check_values,
    _fail,
    _short,
    file_extension,
)
from dussss_monai.errors import DatasetError

__all__ = [
    "AFFINE_TOLERANCE",
    "VolumeInfo",
    "is_volume",
    "read_volume_info",
    "check_volume_pixels",
    "volume_mask_problems",
]

#: largest difference (mm) between an image's and its mask's affine entries that still counts as the same grid
AFFINE_TOLERANCE = 1e-3

PathLike = str | os.PathLike


@dataclass(frozen=True)
class VolumeInfo:
    """What a NIfTI header says about a volume.

    Attributes:
        shape: the array shape as stored, singleton dimensions included.
        spatial_shape: the three dimensions larger than one, in stored order.
        affine: the voxel-to-world (RAS, mm) matrix, ``4 x 4``.
        dtype: the stored sample type (``"int16"``, ``"float32"``, ...).
    """

    shape: tuple[int, ...]
    spatial_shape: tuple[int, int, int]
    affine: np.ndarray
    dtype: str


def _load(path: PathLike):  # -> nibabel image (untyped: nibabel's stubs are partial)
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:  # ImageFileError, EOFError, zlib/gzip errors, ValueError ...
        raise _fail(path, f"unreadable NIfTI file: corrupt or truncated ({_short(e)})") from e


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


def is_volume(path: PathLike) -> bool:
    """Whether ``path`` is a NIfTI file holding a 3D volume (from its header; ``False`` for anything unreadable,
    which the checks then report)."""
    if file_extension(path) not in NIFTI_EXTENSIONS or not Path(path).is_file():
        return False
    try:
        shape = tuple(int(s) for s in _load(path).shape)
    except DatasetError:
        return False
    kept = _spatial(shape)
    return (len(kept) == 3 and kept[-1] != 3) or len(kept) > 3


def read_volume_info(path: PathLike) -> VolumeInfo:
    """Read a volume's header without its voxels.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file.

    Returns:
        :class:`VolumeInfo`.

    Raises:
        DatasetError: missing, empty, unsupported or unreadable file; not three dimensions larger than one (a 4D
            series); a side below :data:`~dussss_monai.data.image_io.MIN_SIZE` in-plane or above ``MAX_SIZE``.
    """
    ext = _check_file(path)
    if ext not in NIFTI_EXTENSIONS:
        raise _fail(path, f"a volume must be a NIfTI file (.nii, .nii.gz), not '{ext}'")
    img = _load(path)
    shape = tuple(int(s) for s in img.shape)
    kept = _spatial(shape)
    if len(kept) != 3:
        raise _fail(
            path,
            f"NIfTI image of shape {shape} is neither a 2D slice nor a 3D volume: give one volume (or one 2D slice) "
            "per file, e.g. one time point of a series",
        )
    if min(kept[:2]) < MIN_SIZE or max(kept) > MAX_SIZE:
        raise _fail(
            path,
            f"volume of shape {kept} is too small or too large (at least {MIN_SIZE} voxels a side in-plane and at "
            f"most {MAX_SIZE} along any axis)",
        )
    return VolumeInfo(
        shape, (kept[0], kept[1], kept[2]), np.asarray(img.affine, dtype=np.float64), str(img.get_data_dtype())
    )


def _voxels(path: PathLike) -> np.ndarray:
    img = _load(path)
    try:
        return np.asarray(img.dataobj)
    except Exception as e:  # truncated data surfaces when the voxels are read
        raise _fail(path, f"unreadable NIfTI file: corrupt or truncated ({_short(e)})") from e


def check_volume_pixels(path: PathLike) -> None:
    """Refuse voxels no training can use: NaN or infinite values, or one value everywhere.

    Raises:
        DatasetError: naming the file and what is wrong.
    """
    data = _voxels(path)
    if not np.issubdtype(data.dtype, np.number):
        raise _fail(path, f"NIfTI data type {data.dtype} is not numeric")
    _check_values(path, data, "volume", "voxels")


def volume_mask_problems(mask: PathLike, image: VolumeInfo, image_path: PathLike) -> list[str]:
    """The problems of a volume's mask: unreadable, not a volume of the image's shape and affine, not binary.

    Args:
        mask: the mask file.
        image: the image's header (:func:`read_volume_info`).
        image_path: the image file, named in the messages.

    Returns:
        one line per problem (empty when the mask is fine).
    """
    try:
        info = read_volume_info(mask)
    except DatasetError as e:
        return e.problems
    if info.spatial_shape != image.spatial_shape:
        return [f"{mask}: mask shape {info.spatial_shape} differs from its image {image_path} {image.spatial_shape}"]
    problems = []
    if not np.allclose(info.affine, image.affine, atol=AFFINE_TOLERANCE):
        problems.append(
            f"{mask}: mask's affine differs from its image {image_path} (the mask would not lie over the scan): "
            "save the mask with the image's header, e.g. from the same series"
        )
    data = _voxels(mask)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        return problems + [f"{mask}: mask contains NaN or infinite values"]
    values = np.unique(data)
    if values.size > 2 or (values.size == 2 and values[0] != 0) or (values.size == 1 and values[0] < 0):
        shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if values.size > 6 else "")
        problems.append(
            f"{mask}: mask is not binary: {values.size} distinct values ({shown}); expected only 0 and one foreground "
            "value (0/1 or 0/255); give one mask per structure"
        )
    return problems
