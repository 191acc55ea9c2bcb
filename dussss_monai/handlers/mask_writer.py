"""Write one binary mask per input image at the input's original size (inference).

:class:`MaskWriter` is an Ignite handler attached to a MONAI evaluator that runs inference. For every
image it thresholds the prediction (made at the network's 224x224 input size), resizes the binary mask
back to the input's original ``(H, W)`` with nearest-neighbour interpolation (``nearest-exact``:
pixel-centre sampling, consistent with how the input was resized), and writes it next to the others in
``output_dir``, named after the input file:

- ``<stem>_mask.png``: 8-bit grey PNG, 0 = background, 255 = foreground (for PNG/TIFF/JPEG/BMP
  inputs with ``output_format="auto"``, or any input with ``"png"``);
- ``<stem>_mask.nii.gz``: NIfTI, uint8 0/1 (for NIfTI inputs with ``"auto"``, or any input with
  ``"nifti"``). For a NIfTI input the input's affine and its array shape (including singleton
  dimensions) are kept, and the mask is stored in the input's array orientation, so it overlays the
  input in any viewer. For other inputs the affine is the identity and the array is stored as
  ``data[i, j] = mask[row j, column i]``, the orientation :func:`~dussss_monai.data.image_io.read_mask_2d`
  reads back.

A 3D NIfTI volume gives one 3D mask, ``<stem>_mask.nii.gz`` (uint8 0/1): its ``pred`` has already been brought
back onto the input's voxel grid and array order (:func:`dussss_monai.bundle.inference_postprocessing`, MONAI's
``Invertd``), and the mask is written with the input's header (affine, qform and sform codes, voxel size, units) and
array shape, so that it lies over the scan in any viewer. A prediction whose shape is not the input's is refused.

Every file is written atomically. An output folder that cannot be created or written raises
:class:`~dussss_monai.errors.DuSSSError` naming it, before anything is computed. Two inputs with the same
file stem (e.g. from different folders of a datalist) get ``<stem>_mask.png`` and ``<stem>_1_mask.png``.

Each item needs ``pred`` (engine output) and, from the batch, ``image_path`` and ``orig_size``, which
:class:`~dussss_monai.data.inference_io.RecordOriginald` records.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from dussss_monai.data.image_io import NIFTI_EXTENSIONS, file_extension
from dussss_monai.errors import ConfigError
from dussss_monai.handlers.segmentation_report import binarize, file_stem, iterate_items
from dussss_monai.utils.io import atomic_write_bytes, ensure_writable_dir

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["MaskWriter", "resize_mask"]

logger = logging.getLogger(__name__)

FORMATS = ("auto", "png", "nifti")


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean ``(H, W)`` mask to ``size`` with nearest-neighbour (pixel-centre) sampling."""
    if tuple(mask.shape) == tuple(size):
        return mask.astype(bool)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=tuple(int(s) for s in size), mode="nearest-exact")[0, 0].numpy() >= 0.5


def _to_numpy(v: Any) -> np.ndarray:
    return np.asarray(v.detach().float().cpu() if isinstance(v, torch.Tensor) else v)


def _is_volume_prediction(pred: Any) -> bool:
    """A one-channel prediction of a volume, ``(1, H, W, D)``."""
    return len(getattr(pred, "shape", ())) == 4


def _size(v: Any, name: str) -> tuple[int, int]:
    arr = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v).reshape(-1)
    if arr.size != 2:
        raise ConfigError(f"{name}: orig_size must be (H, W), got {arr.tolist()}")
    return int(arr[0]), int(arr[1])


class MaskWriter:
    """Ignite handler writing binary masks at the inputs' original sizes (see the module docstring).

    Args:
        output_dir: folder of the masks (created if needed).
        output_format: ``"auto"`` (NIfTI for NIfTI inputs, PNG otherwise), ``"png"`` or ``"nifti"``.
        threshold: foreground is ``probability >= threshold``.
        logits: ``pred`` holds logits (a sigmoid is applied) rather than probabilities/binary values.
        pred_key: output key of the prediction (one channel).
        path_key: batch key of the input file path.
        size_key: batch key of the input's original ``(H, W)``.

    Raises:
        ConfigError: unknown format or bad threshold; at run time a missing path/size.
        DuSSSError: the output folder cannot be created or written.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        output_format: str = "auto",
        threshold: float = 0.5,
        logits: bool = False,
        pred_key: str = "pred",
        path_key: str = "image_path",
        size_key: str = "orig_size",
    ) -> None:
        if output_format not in FORMATS:
            raise ConfigError(f"output_format must be one of {', '.join(FORMATS)}; got {output_format!r}")
        if not 0.0 < float(threshold) < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}")
        self.output_dir = Path(output_dir)
        self.output_format = output_format
        self.threshold = float(threshold)
        self.logits = bool(logits)
        self.pred_key, self.path_key, self.size_key = pred_key, path_key, size_key
        self.written: list[Path] = []
        self._names: set[str] = set()

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        if not engine.has_event_handler(self._started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self._completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _started(self, engine: Engine | None = None) -> None:
        ensure_writable_dir(self.output_dir)
        self.written = []
        self._names = set()

    def _completed(self, engine: Engine | None = None) -> None:
        logger.info("wrote %d masks to %s", len(self.written), self.output_dir)

    def __call__(self, engine: Engine) -> None:
        for item in iterate_items(engine.state.batch, engine.state.output):
            self.write_item(item)

    def write_item(self, item: dict[str, Any]) -> Path:
        """Write the mask of one per-sample dict (``pred``, ``image_path``, ``orig_size``); returns its path.

        Raises:
            ConfigError: a missing path, size or prediction; a volume's prediction not on the input's grid.
        """
        path = item.get(self.path_key)
        if isinstance(path, (list, tuple)) and len(path) == 1:
            path = path[0]
        if not path:
            raise ConfigError(
                f"no '{self.path_key}' in the inference item (keys: {sorted(item)}); "
                "run RecordOriginald (dussss_monai.data.inference_io.inference_transforms) before loading"
            )
        path = str(path)
        if item.get(self.size_key) is None:
            raise ConfigError(f"{path}: no '{self.size_key}' in the inference item; run RecordOriginald before loading")
        if self.pred_key not in item:
            raise ConfigError(f"{path}: the engine output has no '{self.pred_key}' (keys: {sorted(item)})")
        if _is_volume_prediction(item[self.pred_key]):
            return self._write(path, ".nii.gz", self._volume_bytes(item, path))
        size = _size(item[self.size_key], path)
        mask = resize_mask(binarize(item[self.pred_key], self.threshold, self.logits, path), size)
        nifti_in = file_extension(path) in NIFTI_EXTENSIONS
        fmt = ("nifti" if nifti_in else "png") if self.output_format == "auto" else self.output_format
        ext = ".nii.gz" if fmt == "nifti" else ".png"
        data = self._nifti_bytes(mask, path if nifti_in else None) if fmt == "nifti" else self._png_bytes(mask)
        return self._write(path, ext, data)

    def _write(self, path: str, ext: str, data: bytes) -> Path:
        """Write ``data`` as ``<stem of path>_mask<ext>`` (``<stem>_<k>_mask<ext>`` when the name is taken)."""
        stem = file_stem(path)
        fname, k = f"{stem}_mask{ext}", 1
        while fname in self._names:
            fname, k = f"{stem}_{k}_mask{ext}", k + 1
        self._names.add(fname)
        dest = self.output_dir / fname
        atomic_write_bytes(dest, data)
        self.written.append(dest)
        return dest

    def _volume_bytes(self, item: dict[str, Any], path: str) -> bytes:
        """The NIfTI bytes of a volume's mask, with the input's header, refused unless on the input's grid."""
        import nibabel as nib

        if self.output_format == "png":
            raise ConfigError(f"{path}: a volume's mask is written as NIfTI; use output_format auto or nifti")
        pred = _to_numpy(item[self.pred_key])
        prob = 1.0 / (1.0 + np.exp(-np.clip(pred[0], -80.0, 80.0))) if self.logits else pred[0]
        mask = prob >= self.threshold
        stored = tuple(int(s) for s in np.asarray(_to_numpy(item[self.size_key])).reshape(-1))
        if tuple(s for s in stored if s != 1) != tuple(s for s in mask.shape if s != 1):
            raise ConfigError(
                f"{path}: the prediction's shape {tuple(mask.shape)} is not the volume's {stored}: invert the "
                "inference pipeline first (dussss_monai.bundle.inference_postprocessing with volumes=True)"
            )
        ref = cast(nib.Nifti1Image, nib.load(path))
        header = ref.header.copy()
        img = nib.Nifti1Image(np.ascontiguousarray(mask.astype(np.uint8).reshape(stored)), ref.affine, header=header)
        img.header.set_data_dtype(np.uint8)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"], img.header["cal_max"] = 0, 1
        img.header.set_qform(ref.header.get_qform(), code=int(ref.header["qform_code"]))
        img.header.set_sform(ref.header.get_sform(), code=int(ref.header["sform_code"]))
        return gzip.compress(img.to_bytes(), compresslevel=6)

    @staticmethod
    def _png_bytes(mask: np.ndarray) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
        return buf.getvalue()

    @staticmethod
    def _nifti_bytes(mask: np.ndarray, reference: str | None) -> bytes:
        import nibabel as nib

        data = np.ascontiguousarray(mask.T.astype(np.uint8))  # row j, column i -> data[i, j]
        affine = np.eye(4)
        if reference is not None:
            ref = cast(nib.Nifti1Image, nib.load(reference))  # a .nii / .nii.gz reference (NIfTI-1 or -2)
            affine = ref.affine
            if int(np.prod(ref.shape)) == data.size:
                data = data.reshape(ref.shape)  # restore singleton dimensions, same order
            img = nib.Nifti1Image(data, affine)
            img.header.set_zooms(ref.header.get_zooms()[: data.ndim])
            img.header.set_qform(ref.header.get_qform(), code=int(ref.header["qform_code"]))
            img.header.set_sform(ref.header.get_sform(), code=int(ref.header["sform_code"]))
        else:
            img = nib.Nifti1Image(data, affine)
        img.header.set_data_dtype(np.uint8)
        return gzip.compress(img.to_bytes(), compresslevel=6)
