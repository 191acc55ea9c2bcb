"""A generated CT-like dataset of NIfTI volumes with bone metastases and a sentence per volume (the volume demo).

Each volume is a small pelvis-like phantom in Hounsfield units, stored as the DICOM-derived NIfTI files of a
scanner usually are: array axes towards the patient's left, posterior and superior (LPS), voxels of 1.5 x 1.5 x
3 mm, so a viewer, MONAI and nibabel all place it by its affine. Soft tissue (about 40 HU) in air (-1000 HU) holds a
vertebral body at the back and two iliac bones left and right (about 450 HU); one or two sclerotic metastases
(about 1100 HU, irregular blobs) lie inside a bone. The mask marks the metastases; the sentence says where they are
("One bone metastasis in the left iliac bone, lower third of the volume."), in patient coordinates: left is the
patient's left. Noise of 25 HU; the volumes differ in size, position and bone shapes.

    python -m dussss_monai.data.ct_volumes --output_dir demo_data/ct_volumes [--n_train 12] [--n_val 2] [--n_test 4]

writes ``images/case_000.nii.gz ...``, ``masks/case_000.nii.gz ...`` and ``datalist.json`` (sections ``training``,
``validation``, ``test``; every volume with its mask: the split hides the masks of ``1 - labeled_ratio`` of the
training volumes). Generation is deterministic from its parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dussss_monai.errors import ConfigError
from dussss_monai.utils.io import atomic_write_bytes, atomic_write_json

__all__ = ["LPS_SPACING", "lps_affine", "ct_phantom", "generate_ct_volumes", "main"]

#: the voxel size of the generated volumes, mm (in-plane, in-plane, between slices)
LPS_SPACING = (1.5, 1.5, 3.0)
BONES = ("left iliac bone", "right iliac bone", "vertebral body")
LEVELS = ("lower", "middle", "upper")
COUNTS = {1: "One bone metastasis", 2: "Two bone metastases"}


def lps_affine(spacing: Sequence[float] = LPS_SPACING, shape: Sequence[int] = (64, 64, 32)) -> np.ndarray:
    """The affine of a volume stored with its axes towards the patient's left, posterior and superior, centred on
    the world origin (nibabel's world is RAS: the first two axes point against it)."""
    sx, sy, sz = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (shape[0] - 1) / 2, sy * (shape[1] - 1) / 2, -sz * (shape[2] - 1) / 2]
    return affine


def _ellipsoid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return np.asarray(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0, dtype=bool)


def ct_phantom(rng: np.random.Generator, shape: Sequence[int] = (64, 64, 32)) -> tuple[np.ndarray, np.ndarray, str]:
    """One phantom in LPS array order: ``(image in HU as int16, mask as uint8, sentence)``."""
    nx, ny, nz = (int(s) for s in shape)
    image = np.full(shape, -1000.0, dtype=np.float32)
    body = _ellipsoid(
        shape, (nx / 2 + rng.uniform(-2, 2), ny / 2 + rng.uniform(-2, 2), nz / 2), (0.42 * nx, 0.36 * ny, 4 * nz)
    )
    image[body] = 40.0
    # bones: index i grows towards the patient's left, j towards posterior
    bones = {
        "left iliac bone": (0.72 * nx, 0.45 * ny, 0.10 * nx, 0.16 * ny),
        "right iliac bone": (0.28 * nx, 0.45 * ny, 0.10 * nx, 0.16 * ny),
        "vertebral body": (0.50 * nx, 0.70 * ny, 0.09 * nx, 0.08 * ny),
    }
    masks_of_bone = {}
    for name, (cx, cy, rx, ry) in bones.items():
        jitter = rng.uniform(0.85, 1.15, size=2)
        bone = _ellipsoid(
            shape,
            (cx + rng.uniform(-1.5, 1.5), cy + rng.uniform(-1.5, 1.5), nz / 2),
            (rx * jitter[0], ry * jitter[1], 4 * nz),
        )
        image[bone] = 450.0
        masks_of_bone[name] = bone
    count = int(rng.choice([1, 2], p=[0.7, 0.3]))
    mask = np.zeros(shape, dtype=bool)
    named: list[tuple[str, str]] = []
    for _ in range(count):
        bone_name = str(rng.choice(BONES))
        level = int(rng.integers(0, 3))
        cx, cy, rx, ry = bones[bone_name]
        z = (level + rng.uniform(0.25, 0.75)) * nz / 3
        centre = (cx + rng.uniform(-0.4, 0.4) * rx, cy + rng.uniform(-0.4, 0.4) * ry, z)
        radii = (rng.uniform(0.45, 0.75) * rx, rng.uniform(0.35, 0.6) * ry, rng.uniform(1.2, 2.5))
        blob = _ellipsoid(shape, centre, radii) & masks_of_bone[bone_name]
        image[blob] = 1100.0
        mask |= blob
        named.append((bone_name, LEVELS[level]))
    image += rng.normal(0.0, 25.0, size=shape).astype(np.float32)
    places = list(dict.fromkeys(f"the {bone} ({level} third of the volume)" for bone, level in named))
    sentence = f"{COUNTS[count]} in " + " and ".join(places) + "."
    return np.round(image).astype(np.int16), mask.astype(np.uint8), sentence


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6)


def generate_ct_volumes(
    output_dir: str | os.PathLike,
    n_train: int = 12,
    n_val: int = 2,
    n_test: int = 4,
    shape: Sequence[int] = (64, 64, 32),
    seed: int = 0,
) -> Path:
    """Write the dataset (module docstring) and return its ``datalist.json``.

    Args:
        output_dir: the folder (created).
        n_train, n_val, n_test: volumes per section.
        shape: the array shape of each volume (LPS order).
        seed: the generator's seed.

    Raises:
        ConfigError: a count below 0 (training: below 1) or a side below 16.
    """
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise ConfigError(f"n_train must be >= 1 and n_val, n_test >= 0; got {n_train}, {n_val}, {n_test}")
    if len(shape) != 3 or min(shape) < 16:
        raise ConfigError(f"shape must be three sides of at least 16 voxels, got {shape!r}")
    out = Path(output_dir)
    rng = np.random.default_rng(seed)
    affine = lps_affine(LPS_SPACING, shape)
    sections: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    counts = {"training": n_train, "validation": n_val, "test": n_test}
    index = 0
    for section, n in counts.items():
        for _ in range(n):
            image, mask, sentence = ct_phantom(rng, shape)
            name = f"case_{index:03d}"
            atomic_write_bytes(out / "images" / f"{name}.nii.gz", _nifti_bytes(image, affine))
            atomic_write_bytes(out / "masks" / f"{name}.nii.gz", _nifti_bytes(mask, affine))
            sections[section].append(
                {"image": f"images/{name}.nii.gz", "label": f"masks/{name}.nii.gz", "text": sentence}
            )
            index += 1
    return atomic_write_json(out / "datalist.json", sections)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the dataset; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dussss_monai.data.ct_volumes", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--n_train", type=int, default=12)
    parser.add_argument("--n_val", type=int, default=2)
    parser.add_argument("--n_test", type=int, default=4)
    parser.add_argument("--shape", type=json.loads, default=[64, 64, 32], help="e.g. '[64, 64, 32]'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = generate_ct_volumes(args.output_dir, args.n_train, args.n_val, args.n_test, args.shape, args.seed)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(f"wrote {args.n_train + args.n_val + args.n_test} volumes and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
