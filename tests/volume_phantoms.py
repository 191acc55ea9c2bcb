"""Small NIfTI volumes with an asymmetric lesion whose place is known in patient coordinates, for the volume tests.

The phantom is defined in LPS array order (``canon[i, j, k]``: ``i`` towards the patient's left, ``j`` towards
posterior, ``k`` towards superior): an L-shaped lesion in the patient's left, anterior, upper part. It can be stored
as it is (an LPS volume) or with its axes permuted and flipped (``"ASR"``: the stored axes point towards anterior,
superior and right), with other voxel sizes: the two files hold the same patient, so every orientation-aware reader
must find the lesion at the same place.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (24, 20, 10)  # LPS: left-right, anterior-posterior, inferior-superior
SPACING = (1.5, 1.2, 3.0)
LESION_HU, BODY_HU = 1000, 0


def canonical(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """``(image in HU, mask)`` in LPS order: an L-shaped lesion at the patient's left, anterior, upper slices."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[15:21, 3:7, 6:9] = 1  # the bar: left (large i), anterior (small j), upper (large k)
    mask[15:17, 7:12, 6:9] = 1  # the arm, towards posterior along the left edge
    image = np.full(shape, BODY_HU, dtype=np.int16)
    image[mask > 0] = LESION_HU
    return image, mask


def lps_affine(spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    return np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])


def asr_affine(spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    """Stored axes a, b, c point towards anterior, superior and right: x = s_i * c, y = s_j * a, z = s_k * b."""
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 0], affine[2, 1], affine[3, 3] = spacing[0], spacing[1], spacing[2], 1.0
    affine[:3, 3] = (-10.0, 7.5, -4.0)
    return affine


def to_asr(canon: np.ndarray) -> np.ndarray:
    """The LPS array stored as ASR: ``stored[a, b, c] = canon[Ni - 1 - c, Nj - 1 - a, b]``."""
    return np.ascontiguousarray(canon[::-1, ::-1, :].transpose(1, 2, 0))


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def write_pair(folder: Path, name: str, layout: str = "LPS") -> tuple[Path, Path]:
    """Write ``images/<name>.nii.gz`` and ``masks/<name>.nii.gz`` of the phantom stored as ``LPS`` or ``ASR``."""
    image, mask = canonical()
    if layout == "ASR":
        image, mask, affine = to_asr(image), to_asr(mask), asr_affine()
    else:
        affine = lps_affine()
    return (
        save(folder / "images" / f"{name}.nii.gz", image, affine),
        save(folder / "masks" / f"{name}.nii.gz", mask, affine),
    )
