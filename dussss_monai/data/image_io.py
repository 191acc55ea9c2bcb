"""Reading 2D images and binary masks (PNG/TIFF/JPEG via Pillow, NIfTI via nibabel) with clear errors.

Every function here raises :class:`~dussss_monai.errors.DatasetError` naming the file and the problem
for anything a user can get wrong (missing, empty, corrupt, unsupported, too small, too large,
non-binary mask); no Pillow/nibabel stack trace reaches the user.

Intensity scaling to ``[0, 1]`` (``read_image_2d``):

- unsigned 8-bit images are divided by 255, unsigned 16-bit images by 65535 (their dtype range: the
  scaling is the same for every image of a dataset, so relative brightness between images is kept);
- floating-point images (CT in Hounsfield units, NIfTI slices) and signed integers are min-max scaled
  per image, or, when ``window=(low, high)`` is given, clipped to the window and scaled by it
  (e.g. ``window=(-1000, 1000)`` for bone CT);
- ``scaling="minmax"`` forces per-image min-max scaling for every dtype (useful for 12-bit X-rays
  stored in 16-bit files, which the dtype rule would leave dark).

NIfTI orientation: the array ``data[i, j]`` of a 2D slice (after dropping singleton dimensions) is
shown with ``j`` as the row and ``i`` as the column (``data.T``), which is how most viewers display an
axial slice up to flips. Images and masks of one dataset must use the same format for their
orientations to match (a NIfTI mask with a PNG image is checked for size only).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from dussss_monai.errors import ConfigError, DatasetError

__all__ = [
    "PILLOW_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "MIN_SIZE",
    "MAX_SIZE",
    "ImageInfo",
    "file_extension",
    "is_supported_image",
    "read_image_info",
    "check_pixels",
    "read_image_2d",
    "read_mask_2d",
]

PILLOW_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
SUPPORTED_EXTENSIONS: tuple[str, ...] = PILLOW_EXTENSIONS + NIFTI_EXTENSIONS
#: smallest accepted side length in pixels (a 1x1 "image" is a broken export, not data)
MIN_SIZE = 8
#: largest accepted side length in pixels; larger files are refused from their header, before decoding
MAX_SIZE = 8192

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says about a 2D image.

    Attributes:
        height: rows.
        width: columns.
        channels: 1 (grey, palette, binary) or 3 (colour); alpha channels are not counted.
        dtype: the stored sample type as a string (``"uint8"``, ``"uint16"``, ``"float32"``, ...).
    """

    height: int
    width: int
    channels: int
    dtype: str


def file_extension(path: PathLike) -> str:
    """Lower-case extension of ``path``, with ``.nii.gz`` treated as one extension."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_supported_image(path: PathLike) -> bool:
    """Whether ``path`` has an extension this module reads."""
    return file_extension(path) in SUPPORTED_EXTENSIONS


def _fail(path: PathLike, problem: str) -> DatasetError:
    return DatasetError([f"{path}: {problem}"], header=f"cannot read {Path(path).name}")


def _check_file(path: PathLike) -> str:
    """Existence, emptiness and extension checks shared by every reader. Returns the extension."""
    p = Path(path)
    try:
        if "\x00" in str(p):
            raise ValueError("NUL")
        os.fsencode(str(p))
    except (ValueError, UnicodeError) as e:
        raise _fail(
            repr(str(p)), "invalid file path (contains a NUL byte or characters the file system cannot encode)"
        ) from e
    ext = file_extension(p)
    if ext not in SUPPORTED_EXTENSIONS:
        what = f"unsupported file type '{ext}'" if ext else "no file extension, so unsupported file type"
        raise _fail(p, f"{what} (supported: {', '.join(SUPPORTED_EXTENSIONS)})")
    if not p.exists():
        raise _fail(p, "file does not exist")
    if not p.is_file():
        raise _fail(p, "is not a regular file")
    if p.stat().st_size == 0:
        raise _fail(p, "file is empty (0 bytes)")
    return ext


def _check_size(path: PathLike, height: int, width: int) -> None:
    if height < MIN_SIZE or width < MIN_SIZE:
        raise _fail(path, f"image is too small ({width}x{height} pixels; at least {MIN_SIZE} a side is required)")
    if height > MAX_SIZE or width > MAX_SIZE:
        raise _fail(
            path,
            f"image is too large ({width}x{height} pixels; at most {MAX_SIZE} a side is accepted: tile or downsample it)",
        )


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def _open_pil(path: PathLike) -> Image.Image:
    """Open lazily (header only) and check the size before anything is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise _fail(path, f"image is too large ({_short(e)}); at most {MAX_SIZE} pixels a side is accepted") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise _fail(path, f"unreadable: not a valid image file or corrupt bytes ({_short(e)})") from e
    width, height = im.size
    try:
        _check_size(path, height, width)
    except DatasetError:
        im.close()
        raise
    return im


def _pil_channels(mode: str) -> int:
    return 3 if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA") else 1


def _pil_dtype(mode: str) -> str:
    if mode.startswith("I;16"):
        return "uint16"
    return {"1": "bool", "I": "int32", "F": "float32"}.get(mode, "uint8")


def _load_nifti(path: PathLike, header_only: bool) -> tuple[tuple[int, ...], np.dtype, np.ndarray | None]:
    import nibabel as nib

    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))  # NIFTI_EXTENSIONS: NIfTI-1 or -2 images
        shape = tuple(int(s) for s in img.shape)
        dtype = img.get_data_dtype()
        data = None if header_only else np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, ValueError ...
        raise _fail(path, f"unreadable NIfTI file: corrupt or truncated ({_short(e)})") from e
    return shape, dtype, data


def _nifti_2d_shape(path: PathLike, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape with singleton dimensions removed; must be 2D (grey) or 2D x 3 (RGB in the last axis)."""
    kept = tuple(s for s in shape if s != 1)
    if len(kept) == 2 or (len(kept) == 3 and kept[-1] == 3):
        return kept
    if len(kept) < 2:
        raise _fail(
            path, f"NIfTI image of shape {shape} is not a 2D image (at least 2 dimensions larger than 1 are needed)"
        )
    raise _fail(
        path,
        f"NIfTI image of shape {shape} is not a 2D slice: give one 2D slice per file "
        "(3D volumes with one singleton dimension are accepted)",
    )


def read_image_info(path: PathLike, verify: bool = True) -> ImageInfo:
    """Read the header of an image file without decoding its pixels.

    Args:
        path: PNG/TIFF/JPEG/BMP or NIfTI file.
        verify: also run Pillow's integrity check (chunk CRCs of PNG files), which reads the file but
            does not decompress it; catches truncated and bit-flipped files cheaply.

    Returns:
        :class:`ImageInfo` of the file.

    Raises:
        DatasetError: missing, empty, unsupported, unreadable, too small or too large file.
    """
    ext = _check_file(path)
    if ext in NIFTI_EXTENSIONS:
        shape, dtype, _ = _load_nifti(path, header_only=True)
        kept = _nifti_2d_shape(path, shape)
        height, width = kept[1], kept[0]
        _check_size(path, height, width)
        return ImageInfo(height, width, 3 if len(kept) == 3 else 1, str(dtype))
    im = _open_pil(path)
    try:
        info = ImageInfo(im.size[1], im.size[0], _pil_channels(im.mode), _pil_dtype(im.mode))
        if verify:
            try:
                im.verify()
            except Exception as e:  # Pillow raises SyntaxError, OSError, struct.error ... on damaged files
                raise _fail(path, f"unreadable: corrupt or truncated image data ({_short(e)})") from e
    finally:
        im.close()
    return info


def _decode_pil(path: PathLike) -> tuple[np.ndarray, str]:
    """Decode to an array (H, W) or (H, W, C) as stored; returns the array and the Pillow mode."""
    im = _open_pil(path)
    try:
        mode = im.mode
        try:
            im.load()
        except Exception as e:  # truncated/corrupt data surfaces here (OSError, SyntaxError, zlib.error, ...)
            raise _fail(path, f"unreadable: corrupt or truncated image data ({_short(e)})") from e
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        if mode == "P" or mode == "PA":
            # palette images: keep the colours (an image), the caller decides for masks
            arr = np.asarray(im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB"))
            mode = "RGB"
        elif mode == "1":
            arr = np.asarray(im.convert("L")) // 255
            mode = "L"
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            arr = np.asarray(im.convert("RGB"))
            mode = "RGB"
        else:
            arr = np.asarray(im)
    finally:
        im.close()
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # LA / RGBA: drop alpha
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr, mode


def _decode(path: PathLike) -> np.ndarray:
    """Pixels as stored, shape (H, W) or (H, W, 3), after all file-level checks."""
    ext = _check_file(path)
    if ext in NIFTI_EXTENSIONS:
        shape, _, data = _load_nifti(path, header_only=False)
        kept = _nifti_2d_shape(path, shape)
        assert data is not None
        if data.dtype.fields is not None:  # NIfTI RGB24 structured dtype
            names = data.dtype.names
            assert names is not None  # a structured dtype (fields is not None) has names
            data = np.stack([data[n] for n in names[:3]], axis=-1)
            kept = kept + (3,)
        # (annotated: numpy's stubs type reshape to a tuple[int, ...] shape as 0-d)
        arr: np.ndarray = np.asarray(data).reshape(kept)
        arr = np.swapaxes(arr, 0, 1)  # data[i, j] -> row j, column i
        _check_size(path, arr.shape[0], arr.shape[1])
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
            raise _fail(path, f"NIfTI data type {arr.dtype} is not numeric")
        return arr
    arr, _ = _decode_pil(path)
    return arr


def _scale(path: PathLike, arr: np.ndarray, scaling: str, window: Sequence[float] | None) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise _fail(path, "image contains NaN or infinite values")
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        out = (np.clip(arr.astype(np.float64), lo, hi) - lo) / (hi - lo)
        return out.astype(np.float32)
    if scaling == "auto" and arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if scaling == "auto" and arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if scaling == "auto" and arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.float32) / 65535.0  # Pillow's "I" mode for some 16-bit files
    a = arr.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def check_pixels(path: PathLike) -> None:
    """Decode an image and refuse values no training can use: NaN or infinite values, or one value everywhere.

    Raises:
        DatasetError: naming the file and what is wrong (and any problem of :func:`read_image_2d`'s reading).
    """
    _check_values(path, _decode(path), "image", "values")


def _check_values(path: PathLike, arr: np.ndarray, kind: str, unit: str) -> None:
    """Refuse NaN or infinite values, or one value everywhere, in the decoded array of ``path``.

    Args:
        path: the file the values came from (named in the message).
        arr: its decoded values.
        kind: what the file holds, for the message (``"image"``, ``"volume"``).
        unit: what its values are called (``"values"``, ``"voxels"``).

    Raises:
        DatasetError: naming the file and what is wrong.
    """
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise _fail(path, f"{kind} contains NaN or infinite values ({bad} of {arr.size} {unit})")
    if arr.size and arr.min() == arr.max():
        every = "value" if unit == "values" else unit.rstrip("s")
        raise _fail(path, f"{kind} is constant (every {every} {arr.flat[0]}): an empty or failed export")


def read_image_2d(
    path: PathLike,
    channels: int | None = None,
    scaling: Literal["auto", "minmax"] = "auto",
    window: Sequence[float] | None = None,
) -> np.ndarray:
    """Read a 2D image as a ``float32`` array ``(C, H, W)`` in ``[0, 1]``.

    Args:
        path: PNG/TIFF/JPEG/BMP file (Pillow) or NIfTI ``.nii``/``.nii.gz`` 2D slice (nibabel; a 3D
            array with one singleton dimension is accepted).
        channels: ``1`` gives grey (colour is converted with ITU-R 601 luma weights), ``3`` gives RGB
            (grey is replicated), ``None`` keeps what is stored (1 or 3; alpha is dropped).
        scaling: ``"auto"`` (8-/16-bit by dtype range, others min-max per image) or ``"minmax"``
            (per-image min-max for every dtype). See the module docstring.
        window: optional ``(low, high)`` intensity window: values are clipped to it and scaled by it.

    Returns:
        ``float32`` array of shape ``(C, H, W)`` with values in ``[0, 1]``.

    Raises:
        ConfigError: ``channels`` not in ``{None, 1, 3}``, bad ``scaling`` or ``window``.
        DatasetError: missing, empty, unsupported, corrupt, too small or too large file, or non-finite values.
    """
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels!r}")
    if scaling not in ("auto", "minmax"):
        raise ConfigError(f"scaling must be 'auto' or 'minmax', got {scaling!r}")
    if window is not None and (len(window) != 2 or not float(window[0]) < float(window[1])):
        raise ConfigError(f"window must be (low, high) with low < high, got {window!r}")
    arr = _decode(path)
    img = _scale(path, arr, scaling, window)
    img = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
    if channels == 1 and img.shape[0] == 3:
        w = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)[:, None, None]
        img = (img * w).sum(axis=0, keepdims=True)
    elif channels == 3 and img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)


def _describe_values(values: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit].tolist())
    return shown + (", ..." if values.size > limit else "")


def read_mask_2d(path: PathLike) -> np.ndarray:
    """Read a binary 2D mask as a ``float32`` array ``(1, H, W)`` with values in ``{0, 1}``.

    Accepted stored values: a subset of ``{0, m}`` for some ``m > 0`` (``0/1``, ``0/255``,
    ``0/65535``, ``0/1.0`` ...); ``m`` becomes 1. Palette masks use the palette indices. A 3-channel
    mask is accepted when its channels are identical. The check is strict: a mask with more than two
    values (e.g. a JPEG-compressed or anti-aliased mask) is refused rather than silently thresholded.

    Args:
        path: PNG/TIFF/JPEG/BMP or NIfTI file.

    Returns:
        ``float32`` array of shape ``(1, H, W)``, values in ``{0, 1}``.

    Raises:
        DatasetError: file-level problems as :func:`read_image_2d`, differing colour channels, or
            values that are not binary.
    """
    ext = _check_file(path)
    if ext in NIFTI_EXTENSIONS:
        arr = _decode(path)
    else:
        im = _open_pil(path)
        mode = im.mode
        im.close()
        if mode in ("P", "PA"):  # palette masks: the indices are the labels
            im = _open_pil(path)
            try:
                try:
                    im.load()
                except Exception as e:
                    raise _fail(path, f"unreadable: corrupt or truncated image data ({_short(e)})") from e
                arr = np.asarray(im if mode == "P" else im.convert("P"))
            finally:
                im.close()
        else:
            arr, _ = _decode_pil(path)
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[-1])):
            raise _fail(
                path,
                f"mask has {arr.shape[-1]} colour channels that differ (a colour image, not a binary mask); "
                "save the mask as a single-channel 0/255 or 0/1 image",
            )
        arr = arr[..., 0]
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise _fail(path, "mask contains NaN or infinite values")
    values = np.unique(arr)
    if values.size > 2 or (values.size == 2 and values[0] != 0) or (values.size == 1 and values[0] < 0):
        raise _fail(
            path,
            f"mask is not binary: {values.size} distinct values ({_describe_values(values)}); "
            "expected only 0 and one foreground value (0/1 or 0/255)",
        )
    out = (arr > 0).astype(np.float32)[None]
    return np.ascontiguousarray(out)
