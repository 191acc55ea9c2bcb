"""Per-image segmentation report of an evaluation run: CSV of Dice/IoU, summary and overlay images.

:class:`SegmentationReport` is an Ignite handler attached to a MONAI evaluator. For every image it scores
the predicted foreground against the ground-truth mask and, at the end of the evaluation epoch, writes
into ``output_dir``:

- ``per_image_metrics.csv``: one row per image, columns ``name, dice, iou, text``;
- ``summary.json``: ``n``, ``mean_dice``, ``std_dice``, ``mean_iou``, ``std_iou`` (population standard
  deviation across images, ``ddof=0``), the threshold and the conventions below;
- optionally, overlay PNGs (the image, the ground-truth contour in green, the predicted contour in red,
  titled with the image name and its text) into ``overlay_dir``.

Every file is written atomically (temporary file + rename), so an interrupted run never leaves a truncated
report. The means are also put into ``engine.state.metrics`` as ``report_mean_dice`` and ``report_mean_iou``.

Conventions (stated here once, used everywhere):

- **Resolution**: scores are computed on the grid of the ``pred`` and ``label`` the handler is given,
  224x224 in the bundles (the DuSSS/LViT protocol). The QaTa-COV19 and BM-Seg bundles resize the image
  and, with nearest-neighbour interpolation, the mask to 224x224 in their eval transforms; the MoNuSeg
  bundle predicts the native tile by sliding window and its post-processing
  (``dussss_monai.bundle.scoring_postprocessing``) resizes the probabilities bilinearly and the mask with
  nearest neighbour to ``score_size`` before the threshold. Scores at native resolution differ.
- **Foreground**: ``pred`` is a one-channel map. With ``logits=False`` (default) it must hold
  probabilities or an already binarised mask (values in ``[0, 1]``, e.g. after the evaluator's
  ``Activationsd(sigmoid=True)`` + ``AsDiscreted(threshold=0.5)`` postprocessing) and foreground is
  ``pred >= threshold``; with ``logits=True`` foreground is ``sigmoid(pred) >= threshold``. A
  ``pred`` outside ``[0, 1]`` with ``logits=False`` is refused (it would be logits scored as
  probabilities). The label's foreground is ``label >= 0.5``.
- **Dice** = 2|P and G| / (|P| + |G|), **IoU** = |P and G| / |P or G|, per image (foreground class only).
  When both the ground truth and the prediction are empty, **Dice = IoU = 1** (a correct "nothing
  here"); when exactly one of them is empty, both are 0.

Volumes (``pred`` and ``label`` of shape ``(1, H, W, D)``, predicted slice by slice): a row of
``per_image_metrics.csv`` is a volume and its **3D Dice** and IoU over all its voxels; ``per_slice_metrics.csv`` holds
one row per slice (``name, slice, dice, iou, label_voxels, pred_voxels``), and the summary adds the mean slice Dice
over all slices and over the slices whose ground truth holds foreground. The overlay of a volume is its slice with
the most ground-truth foreground.

The handler reads the engine's batch and output after postprocessing: ``engine.state.batch`` gives
``name``, ``text`` and ``image``; ``engine.state.output`` gives ``pred`` and ``label``. Both the decollated
form (a list of per-image dicts, MONAI's default) and the batched form (a dict of batch-first tensors and
lists) are understood. In a distributed evaluation the rows of all ranks are gathered and rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dussss_monai.errors import ConfigError
from dussss_monai.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_writable_dir

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "SegmentationReport",
    "dice_iou",
    "binarize",
    "iterate_items",
    "file_stem",
    "overlay_image",
    "slice_rows",
    "shown_slice",
    "slice_summary",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def binarize(
    pred: Any, threshold: float = 0.5, logits: bool = False, name: str = "", volume: bool = False
) -> np.ndarray:
    """Foreground of a one-channel prediction as a boolean array ``(H, W)`` (``volume``: ``(H, W, D)``).

    Args:
        pred: ``(1, H, W)`` or ``(H, W)`` tensor/array (``volume``: ``(1, H, W, D)`` or ``(H, W, D)``): probabilities
            or a binary mask (``logits=False``), or logits (``logits=True``).
        threshold: foreground is ``probability >= threshold``.
        logits: apply a sigmoid first.
        name: image name for error messages.
        volume: the prediction is a volume.

    Raises:
        ConfigError: more than one channel, or values outside ``[0, 1]`` while ``logits=False``.
    """
    arr = _to_numpy(pred)
    dims = 3 if volume else 2
    if arr.ndim == dims + 1:
        if arr.shape[0] != 1:
            raise ConfigError(
                f"{name or 'prediction'}: expected a one-channel prediction, got shape {tuple(arr.shape)}"
            )
        arr = arr[0]
    if arr.ndim != dims:
        what = "a volume (1, H, W, D)" if volume else "a 2D prediction (1, H, W)"
        raise ConfigError(f"{name or 'prediction'}: expected {what}, got shape {tuple(arr.shape)}")
    if logits:
        arr = 1.0 / (1.0 + np.exp(-np.clip(arr, -80.0, 80.0)))
    elif arr.size and (float(arr.min()) < 0.0 or float(arr.max()) > 1.0):
        raise ConfigError(
            f"{name or 'prediction'}: values in [{float(arr.min()):g}, {float(arr.max()):g}] are not probabilities; "
            "these look like logits: set logits=True or add Activationsd(sigmoid=True) to the postprocessing"
        )
    return arr >= threshold


def dice_iou(pred: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Foreground Dice and IoU of two boolean masks of equal shape.

    Both empty: ``(1.0, 1.0)``; exactly one empty: ``(0.0, 0.0)``.
    """
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(label, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from label shape {g.shape}")
    inter = int(np.logical_and(p, g).sum())
    sp, sg = int(p.sum()), int(g.sum())
    if sp + sg == 0:
        return 1.0, 1.0
    union = sp + sg - inter
    return 2.0 * inter / (sp + sg), inter / union


def slice_rows(name: str, pred: np.ndarray, label: np.ndarray) -> list[dict[str, Any]]:
    """One row per slice (the last axis) of a volume's boolean prediction and ground truth: ``name``, ``slice``,
    ``dice``, ``iou``, ``label_voxels``, ``pred_voxels``."""
    rows = []
    for k in range(pred.shape[-1]):
        dice, iou = dice_iou(pred[..., k], label[..., k])
        rows.append(
            {
                "name": name,
                "slice": k,
                "dice": dice,
                "iou": iou,
                "label_voxels": int(label[..., k].sum()),
                "pred_voxels": int(pred[..., k].sum()),
            }
        )
    return rows


def shown_slice(pred: np.ndarray, label: np.ndarray) -> int:
    """The slice a volume's overlay shows: the most ground-truth foreground, else the most predicted, else the
    middle."""
    for mask in (label, pred):
        per_slice = mask.reshape(-1, mask.shape[-1]).sum(0)
        if per_slice.max() > 0:
            return int(np.argmax(per_slice))
    return pred.shape[-1] // 2


def slice_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The slice scores of a report's summary: their number and mean Dice over all slices and over the slices whose
    ground truth holds foreground (empty-empty slices score 1 and would flatter the first)."""
    dices = np.asarray([r["dice"] for r in rows], dtype=np.float64)
    lesion = np.asarray([r["dice"] for r in rows if r["label_voxels"] > 0], dtype=np.float64)
    return {
        "n_slices": len(rows),
        "mean_slice_dice": float(dices.mean()) if dices.size else None,
        "n_slices_with_foreground": int(lesion.size),
        "mean_slice_dice_with_foreground": float(lesion.mean()) if lesion.size else None,
    }


def slice_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The text of ``per_slice_metrics.csv``."""
    buf = io.StringIO()
    fields = ["name", "slice", "dice", "iou", "label_voxels", "pred_voxels"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "dice": f"{r['dice']:.6f}", "iou": f"{r['iou']:.6f}"})
    return buf.getvalue()


def file_stem(name: str) -> str:
    """File name without folder and extension (``.nii.gz`` counts as one extension)."""
    base = Path(str(name)).name
    low = base.lower()
    if low.endswith(".nii.gz"):
        return base[: -len(".nii.gz")]
    return Path(base).stem or base


def _as_str(v: Any) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 1:
        v = v[0]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return "" if v is None else str(v)


def iterate_items(batch: Any, output: Any) -> list[dict[str, Any]]:
    """Per-sample dicts merging the engine's batch and output (output wins on shared keys).

    Accepts the decollated form (lists of per-sample dicts) and the batched form (dicts of batch-first
    tensors and lists of strings).
    """

    def split(d: Any) -> list[dict[str, Any]]:
        if d is None:
            return []
        if isinstance(d, Sequence) and not isinstance(d, (str, bytes)):
            return [dict(x) if isinstance(x, Mapping) else {} for x in d]
        if isinstance(d, Mapping):
            n = None
            for v in d.values():
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    n = v.shape[0]
                    break
                if isinstance(v, (list, tuple)):
                    n = len(v)
                    break
            if n is None:
                return [dict(d)]
            items: list[dict[str, Any]] = [{} for _ in range(n)]
            for k, v in d.items():
                if (isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n) or (
                    isinstance(v, (list, tuple)) and len(v) == n
                ):
                    for i in range(n):
                        items[i][k] = v[i]
                else:
                    for i in range(n):
                        items[i][k] = v
            return items
        return []

    b, o = split(batch), split(output)
    n = max(len(b), len(o))
    merged = []
    for i in range(n):
        item = dict(b[i]) if i < len(b) else {}
        if i < len(o):
            item.update(o[i])
        merged.append(item)
    return merged


def _contour(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a boolean mask (pixels of the mask with a 4-neighbour outside it)."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def overlay_image(image: Any, label: np.ndarray | None, pred: np.ndarray, title: str = "", scale: int = 2) -> bytes:
    """PNG bytes of ``image`` (``(C, H, W)`` in ``[0, 1]``) with the ground-truth contour (green) and the
    predicted contour (red), under a title strip holding ``title`` (wrapped)."""
    from PIL import Image, ImageDraw, ImageFont

    arr = _to_numpy(image)
    if arr.ndim == 3:
        arr = arr[:3] if arr.shape[0] >= 3 else np.repeat(arr[:1], 3, axis=0)
        arr = np.moveaxis(arr, 0, -1)
    else:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    rgb = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    scale = max(1, int(scale))
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
        pred = np.repeat(np.repeat(pred, scale, axis=0), scale, axis=1)
        if label is not None:
            label = np.repeat(np.repeat(label, scale, axis=0), scale, axis=1)
    if label is not None:
        rgb[_contour(label)] = (0, 255, 0)
    rgb[_contour(pred)] = (255, 0, 0)
    h, w = rgb.shape[:2]
    font = ImageFont.load_default()
    chars = max(10, w // 7)
    lines = textwrap.wrap(title, width=chars)[:6] or [""]
    strip = 14 * len(lines) + 6
    canvas = Image.new("RGB", (w, h + strip), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, strip))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((3, 3 + 14 * i), line, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


class SegmentationReport:
    """Ignite handler writing per-image Dice/IoU, a summary and overlays of an evaluation run.

    See the module docstring for the files written and the conventions (resolution, empty masks,
    logits vs probabilities).

    Args:
        output_dir: folder of ``per_image_metrics.csv`` and ``summary.json`` (created if needed).
        threshold: foreground is ``probability >= threshold``.
        overlay_dir: folder of the overlay PNGs; ``None`` writes none; a relative path is taken
            relative to ``output_dir`` (e.g. ``"overlays"``).
        max_overlays: write overlays for at most this many images per epoch (``None``: all).
        name_key: batch key of the image name (the CSV's ``name`` column).
        text_key: batch key of the text description (empty when absent).
        image_key: batch key of the image drawn in the overlays.
        pred_key: output key of the prediction.
        label_key: output (or batch) key of the ground-truth mask.
        logits: ``pred`` holds logits (a sigmoid is applied) rather than probabilities/binary values.

    Raises:
        DuSSSError: when the output folder cannot be created or written.
        ConfigError: bad threshold or ``max_overlays``; at run time, a prediction that is not one
            channel, or logits passed with ``logits=False``, or a missing label.
    """

    CSV_NAME = "per_image_metrics.csv"
    SLICE_CSV_NAME = "per_slice_metrics.csv"
    SUMMARY_NAME = "summary.json"

    def __init__(
        self,
        output_dir: PathLike,
        threshold: float = 0.5,
        overlay_dir: PathLike | None = None,
        max_overlays: int | None = None,
        name_key: str = "name",
        text_key: str = "text",
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str = "label",
        logits: bool = False,
    ) -> None:
        if not 0.0 < float(threshold) < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}")
        if max_overlays is not None and int(max_overlays) < 0:
            raise ConfigError(f"max_overlays must be >= 0 or None, got {max_overlays!r}")
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        if overlay_dir is None:
            self.overlay_dir: Path | None = None
        else:
            od = Path(overlay_dir)
            self.overlay_dir = od if od.is_absolute() else self.output_dir / od
        self.max_overlays = None if max_overlays is None else int(max_overlays)
        self.name_key, self.text_key, self.image_key = name_key, text_key, image_key
        self.pred_key, self.label_key = pred_key, label_key
        self.logits = bool(logits)
        self.rows: list[dict[str, Any]] = []
        self.slice_rows: list[dict[str, Any]] = []
        self._overlays = 0
        self._overlay_names: set[str] = set()
        self.summary: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------- engine
    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        if not engine.has_event_handler(self._started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        if not engine.has_event_handler(self._iteration, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        if not engine.has_event_handler(self._completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _started(self, engine: Engine | None = None) -> None:
        self.reset()
        ensure_writable_dir(self.output_dir)
        if self.overlay_dir is not None:
            ensure_writable_dir(self.overlay_dir)

    def _iteration(self, engine: Engine) -> None:
        self.update(iterate_items(engine.state.batch, engine.state.output))

    def _completed(self, engine: Engine) -> None:
        summary = self.write()
        if summary is not None and summary["n"] > 0:
            engine.state.metrics["report_mean_dice"] = summary["mean_dice"]
            engine.state.metrics["report_mean_iou"] = summary["mean_iou"]

    # ---------------------------------------------------------------------------------- plain methods
    def reset(self) -> None:
        """Forget the rows of the previous epoch."""
        self.rows = []
        self.slice_rows = []
        self._overlays = 0
        self._overlay_names = set()
        self.summary = None

    def update(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Score per-sample dicts (``pred``, ``label``, ``name``, ``text``, ``image``); returns the new rows."""
        new = []
        for item in items:
            name = _as_str(item.get(self.name_key)) or f"image_{len(self.rows) + 1:05d}"
            if self.pred_key not in item:
                raise ConfigError(f"{name}: the engine output has no '{self.pred_key}' (keys: {sorted(item)})")
            if item.get(self.label_key) is None:
                raise ConfigError(
                    f"{name}: no ground-truth '{self.label_key}' to score against (keys: {sorted(item)}); "
                    "SegmentationReport needs labelled data"
                )
            volume = np.ndim(item[self.pred_key]) == 4
            pred = binarize(item[self.pred_key], self.threshold, self.logits, name, volume)
            label = binarize(item[self.label_key], 0.5, False, name, volume)
            if pred.shape != label.shape:
                raise ConfigError(
                    f"{name}: prediction {pred.shape} and label {label.shape} differ in size; resize both to the "
                    "evaluation size (the eval transforms resize the mask with nearest neighbour)"
                )
            dice, iou = dice_iou(pred, label)
            row: dict[str, Any] = {"name": name, "dice": dice, "iou": iou, "text": _as_str(item.get(self.text_key))}
            self.rows.append(row)
            new.append(row)
            image = item.get(self.image_key)
            if volume:
                self.slice_rows += slice_rows(name, pred, label)
                k = shown_slice(pred, label)
                image = None if image is None else _to_numpy(image)[..., k]
                pred, label = pred[..., k], label[..., k]
                name = f"{file_stem(name)}_slice{k:03d}"
            if self.overlay_dir is not None and (self.max_overlays is None or self._overlays < self.max_overlays):
                if image is not None:
                    self._write_overlay(name, row["text"], image, label, pred, dice)
        return new

    def _write_overlay(
        self, name: str, text: str, image: Any, label: np.ndarray, pred: np.ndarray, dice: float
    ) -> None:
        assert self.overlay_dir is not None
        stem = file_stem(name)
        fname, k = f"{stem}_overlay.png", 1
        while fname in self._overlay_names:
            fname, k = f"{stem}_{k}_overlay.png", k + 1
        self._overlay_names.add(fname)
        title = f"{name} (Dice {dice:.3f}): {text}" if text else f"{name} (Dice {dice:.3f})"
        atomic_write_bytes(self.overlay_dir / fname, overlay_image(image, label, pred, title))
        self._overlays += 1

    def _gathered_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """All ranks' rows and slice rows on rank 0 (``None`` on other ranks); the local ones when not
        distributed."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.rows, self.slice_rows
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.rows, self.slice_rows))
        if dist.get_rank() != 0:
            return None
        return [r for part in gathered for r in part[0]], [r for part in gathered for r in part[1]]

    def write(self) -> dict[str, Any] | None:
        """Write the CSV and the summary of the rows so far; returns the summary (``None`` off rank 0)."""
        gathered = self._gathered_rows()
        if gathered is None:
            return None
        rows, slices = gathered
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["name", "dice", "iou", "text"], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {"name": r["name"], "dice": f"{r['dice']:.6f}", "iou": f"{r['iou']:.6f}", "text": r["text"]}
            )
        dices = np.asarray([r["dice"] for r in rows], dtype=np.float64)
        ious = np.asarray([r["iou"] for r in rows], dtype=np.float64)
        n = len(rows)

        def stat(a: np.ndarray, f) -> float | None:
            return float(f(a)) if a.size else None

        conventions = {
            "resolution": "scored on the grid of the evaluator's pred and label (224x224 in the bundles: "
            "eval transforms or score_size post-processing; masks resized with nearest neighbour)",
            "empty_masks": "Dice = IoU = 1 when prediction and ground truth are both empty; 0 when only one is",
            "std": "population standard deviation across images (ddof=0)",
            "foreground": f"probability >= {self.threshold}",
        }
        summary: dict[str, Any] = {
            "n": n,
            "mean_dice": stat(dices, np.mean),
            "std_dice": stat(dices, np.std),
            "mean_iou": stat(ious, np.mean),
            "std_iou": stat(ious, np.std),
            "threshold": self.threshold,
            "conventions": conventions,
        }
        if slices:
            summary.update(slice_summary(slices))
            conventions["volumes"] = (
                "a row of per_image_metrics.csv is a volume: Dice and IoU over all its voxels (3D); "
                f"{self.SLICE_CSV_NAME} scores every slice"
            )
        ensure_writable_dir(self.output_dir)
        if slices:
            atomic_write_text(self.output_dir / self.SLICE_CSV_NAME, slice_csv(slices))
        atomic_write_text(self.output_dir / self.CSV_NAME, buf.getvalue())
        atomic_write_json(self.output_dir / self.SUMMARY_NAME, summary)
        if n:
            logger.info(
                "segmentation report: %d images, mean Dice %.4f, mean IoU %.4f -> %s",
                n,
                summary["mean_dice"],
                summary["mean_iou"],
                self.output_dir,
            )
        else:
            logger.warning("segmentation report: no images were scored; wrote an empty report to %s", self.output_dir)
        self.summary = summary
        return summary

    def __call__(self, engine: Engine) -> None:
        """Score the engine's current iteration (``ITERATION_COMPLETED``)."""
        self._iteration(engine)
