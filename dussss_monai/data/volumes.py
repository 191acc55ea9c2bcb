"""3D volumes in the 2D pipelines: loading and orienting them with MONAI's transforms, and drawing 2D slices.

A volume (:mod:`~dussss_monai.data.volume_io`) is loaded with MONAI's ``LoadImaged`` (channel first), oriented with
``Orientationd`` so that the chosen slice axis is the last array axis and every slice is laid out as a viewer shows
it (:data:`SLICE_AXES`), and scaled to ``[0, 1]`` by an intensity window (``ScaleIntensityRanged``, e.g. a CT
window in Hounsfield units) or, without one, by its own minimum and maximum (``ScaleIntensityd``). Masks are
binarised (``AsDiscreted``).

- Training draws one slice per read (:class:`RandSliced`, then ``SqueezeDimd``): from a labeled volume a slice with
  foreground as often as one drawn from all its slices (``pos``, ``neg``), from an unlabeled one any slice. The
  sample's ``text`` is the slice's own sentence where the item gives one (``slice_texts``), else the volume's.
- Validation, evaluation and inference keep the whole volume and predict it slice by slice (MONAI's
  ``SliceInferer``, :func:`dussss_monai.bundle.make_inferer`); inference inverts the orientation and resizing
  (``Invertd``) so that the mask lies on the input's own grid.
- Stage 1's validation reads one fixed slice per volume (:class:`PickSliced`).

Slice numbers (the keys of ``slice_texts``, the ``slice`` of a drawn sample) count along the slice axis after
orientation: axial slices from the inferior end (0 = the lowest), coronal from the anterior end, sagittal from the
patient's right. For a volume stored with its third axis towards superior (LPS or RAS, as most NIfTI exported from
DICOM) the axial slice number is the stored ``k`` index.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    AsDiscreted,
    LoadImaged,
    MapTransform,
    Orientationd,
    Randomizable,
    RepeatChanneld,
    ScaleIntensityd,
    ScaleIntensityRanged,
    SpatialCrop,
)

from dussss_monai.data.checks import SLICE_TEXTS_KEY
from dussss_monai.data.volume_io import is_volume
from dussss_monai.errors import ConfigError, DatasetError

__all__ = [
    "SLICE_AXES",
    "SLICE_KEY",
    "check_slice_axis",
    "check_window",
    "holds_volumes",
    "load_volume",
    "RandSliced",
    "PickSliced",
]

#: per slice axis, the orientation (MONAI/nibabel axis codes, the direction each array axis points to) that puts
#: the slice axis last and lays a slice out as viewers do: an axial slice with anterior up and the patient's left on
#: the image's right (the radiological convention), a coronal one with superior up and the patient's left on the
#: right, a sagittal one with superior up and anterior on the left
SLICE_AXES: dict[str, str] = {"axial": "PLS", "coronal": "ILP", "sagittal": "IPL"}
#: where a drawn slice's number goes in the sample
SLICE_KEY = "slice"
#: a mask's voxels at or above this value are foreground (masks store 0 and one positive value, e.g. 1 or 255)
MASK_THRESHOLD = 1e-6


def check_slice_axis(slice_axis: str) -> str:
    """``slice_axis`` if it is one of :data:`SLICE_AXES`.

    Raises:
        ConfigError: naming the choices.
    """
    if slice_axis not in SLICE_AXES:
        raise ConfigError(f"slice_axis must be one of {', '.join(SLICE_AXES)}; got {slice_axis!r}")
    return slice_axis


def check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    """``window`` as ``(low, high)`` with ``low < high``, or ``None``.

    Raises:
        ConfigError: anything else, with an example.
    """
    if window is None:
        return None
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        low, high = 0.0, 0.0
    if not low < high:
        raise ConfigError(
            f"intensity_window must be [low, high] with low < high, got {window!r} (e.g. --intensity_window "
            "'[-500, 1300]' for bone in CT)"
        )
    return low, high


def holds_volumes(data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> bool:
    """Whether a dataset's images are 3D volumes (its first image, from the header; the checks refuse a dataset that
    mixes volumes with 2D images).

    Args:
        data: a datalist (sections of items) or a list of items, each with ``image``.
    """
    if isinstance(data, Mapping):
        items = [it for section in data.values() if isinstance(section, list) for it in section]
    else:
        items = list(data)
    first = next((it.get("image") for it in items if isinstance(it, Mapping) and it.get("image")), None)
    return isinstance(first, str) and is_volume(first)


def load_volume(
    keys: Sequence[str],
    mask_keys: Sequence[str] = ("label",),
    channels: int | None = 1,
    window: Sequence[float] | None = None,
    slice_axis: str = "axial",
    allow_missing_keys: bool = False,
) -> list[MapTransform]:
    """Load volumes as ``(C, H, W, D)`` with the slice axis last, intensities in ``[0, 1]``, masks in ``{0, 1}``.

    Args:
        keys: the image key first, then mask keys.
        mask_keys: the subset of ``keys`` that are masks.
        channels: 1 or ``None`` keeps the grey volume; 3 repeats it in three channels.
        window: ``(low, high)`` in the volume's units (CT: Hounsfield units), clipped and scaled to ``[0, 1]``;
            ``None`` scales each volume by its own minimum and maximum.
        slice_axis: ``axial``, ``coronal`` or ``sagittal`` (:data:`SLICE_AXES`).
        allow_missing_keys: skip absent keys (an unlabeled item's mask).

    Returns:
        MONAI dictionary transforms.

    Raises:
        ConfigError: an unknown slice axis or a bad window.
    """
    keys = list(keys)
    images = [k for k in keys if k not in mask_keys]
    masks = [k for k in keys if k in mask_keys]
    axcodes = SLICE_AXES[check_slice_axis(slice_axis)]
    bounds = check_window(window)
    xforms: list[MapTransform] = [
        LoadImaged(
            keys,
            reader="NibabelReader",
            image_only=True,
            ensure_channel_first=True,
            dtype=np.float32,
            allow_missing_keys=allow_missing_keys,
        ),
        Orientationd(keys, axcodes=axcodes, labels=None, allow_missing_keys=allow_missing_keys),  # nibabel: RAS space
    ]
    if bounds is None:
        xforms.append(ScaleIntensityd(images, minv=0.0, maxv=1.0, allow_missing_keys=allow_missing_keys))
    else:
        xforms.append(
            ScaleIntensityRanged(
                images, a_min=bounds[0], a_max=bounds[1], b_min=0.0, b_max=1.0, clip=True, allow_missing_keys=True
            )
        )
    if masks:
        xforms.append(AsDiscreted(masks, threshold=MASK_THRESHOLD, allow_missing_keys=True))
    if channels == 3:
        xforms.append(RepeatChanneld(images, repeats=3, allow_missing_keys=allow_missing_keys))
    return xforms


class PickSliced(MapTransform):
    """Keep one slice of a volume (the last axis) for every key: the one with the most foreground in ``label_key``
    (where the item has a mask), else the middle one; among the slices with a sentence when the item has per-slice
    sentences and no sentence of its own. The slice axis is kept (size 1): ``SqueezeDimd`` removes it.

    Args:
        keys: the keys sliced together (an image and its masks), ``(C, H, W, D)``.
        label_key: the mask that tells where the foreground is (``None``: none).
        text_key: the sample's sentence, replaced by the slice's own where ``slice_texts_key`` gives one.
        slice_texts_key: the item's ``{"<slice number>": sentence}`` (removed from the sample).
        slice_key: where the slice's number goes.
        allow_missing_keys: skip absent keys.

    Raises:
        DatasetError: a per-slice sentence names a slice the volume does not have.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None = "label",
        text_key: str = "text",
        slice_texts_key: str = SLICE_TEXTS_KEY,
        slice_key: str = SLICE_KEY,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key, self.text_key = label_key, text_key
        self.slice_texts_key, self.slice_key = slice_texts_key, slice_key

    def _texts(self, d: Mapping[Hashable, Any], depth: int) -> dict[int, str]:
        raw = d.get(self.slice_texts_key) or {}
        texts = {int(k): str(v) for k, v in raw.items()}
        outside = sorted(k for k in texts if not 0 <= k < depth)
        if outside:
            name = d.get("name", "a volume")
            raise DatasetError(
                [
                    f"{name}: '{self.slice_texts_key}' names slice(s) {outside} but the volume has {depth} slices "
                    "along its slice axis (numbered from 0; see docs/data_format.md, 'Volumes')"
                ],
                header="per-slice sentences outside the volume",
            )
        return texts

    def _foreground(self, d: Mapping[Hashable, Any], depth: int) -> torch.Tensor | None:
        """Foreground voxels per slice, or ``None`` without a mask."""
        if self.label_key is None or self.label_key not in d:
            return None
        label = torch.as_tensor(d[self.label_key])
        return (label.reshape(-1, depth) > 0.5).sum(0)

    def choose(self, candidates: list[int], foreground: torch.Tensor | None) -> int:
        """The slice kept: most foreground among ``candidates``, else the middle candidate."""
        if foreground is not None and int(foreground[candidates].max()) > 0:
            return candidates[int(torch.argmax(foreground[candidates]))]
        return candidates[len(candidates) // 2]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        depth = int(d[keys[0]].shape[-1])
        texts = self._texts(d, depth)
        has_text = isinstance(d.get(self.text_key), str) and bool(d[self.text_key])
        candidates = sorted(texts) if texts and not has_text else list(range(depth))
        k = self.choose(candidates, self._foreground(d, depth))
        crop = SpatialCrop(roi_slices=[slice(None), slice(None), slice(k, k + 1)])
        for key in keys:
            d[key] = crop(d[key])
        if k in texts:
            d[self.text_key] = texts[k]
        d.pop(self.slice_texts_key, None)
        d[self.slice_key] = k
        return d


class RandSliced(Randomizable, PickSliced):
    """Draw one slice of a volume (the last axis) for every key, as :class:`PickSliced` but at random: with
    probability ``pos / (pos + neg)`` one of the slices holding foreground in ``label_key`` (each equally likely,
    so a lesion's small end slices are drawn as often as its middle), otherwise any slice.

    Args:
        keys, label_key, text_key, slice_texts_key, slice_key, allow_missing_keys: as :class:`PickSliced`.
        pos: the weight of a slice with foreground (where the volume has some).
        neg: the weight of a slice drawn from all.

    Raises:
        ConfigError: negative weights, or both zero.
        DatasetError: as :class:`PickSliced`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None = "label",
        pos: float = 1.0,
        neg: float = 1.0,
        text_key: str = "text",
        slice_texts_key: str = SLICE_TEXTS_KEY,
        slice_key: str = SLICE_KEY,
        allow_missing_keys: bool = True,
    ) -> None:
        PickSliced.__init__(self, keys, label_key, text_key, slice_texts_key, slice_key, allow_missing_keys)
        if pos < 0 or neg < 0 or pos + neg <= 0:
            raise ConfigError(f"RandSliced: pos and neg must be >= 0 and not both 0, got {pos}, {neg}")
        self.pos_ratio = float(pos) / float(pos + neg)

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw ahead: :meth:`choose` draws from this transform's own random state."""

    def choose(self, candidates: list[int], foreground: torch.Tensor | None) -> int:
        """A random slice among ``candidates``: one with foreground with probability ``pos / (pos + neg)``."""
        with_foreground = [k for k in candidates if foreground is not None and int(foreground[k]) > 0]
        if with_foreground and self.R.rand() < self.pos_ratio:
            return with_foreground[int(self.R.randint(len(with_foreground)))]
        return candidates[int(self.R.randint(len(candidates)))]
