"""Prepare what ``benchmarks/gpu.sh`` needs on a CUDA machine that can download nothing (at most 64 MiB).

Writes into ``--out`` (default ``.device/``, git-ignored):

- ``monuseg/``: the MoNuSeg Train and Val folders in LViT's layout, images resized to ``--size`` (bilinear,
  masks nearest neighbour). Training resizes to 224 anyway; 512 keeps the upload small (about 15 MB
  instead of 54 MB) while leaving more than twice the resolution the paper's protocol uses.
- ``text_cache.pt``: the frozen text encoder's per-sentence features for every sentence of the dataset
  (:meth:`HFTextEncoder.cache_state`), so the 84 MB text-model wheel need not travel; the GPU run reads
  them with :class:`~dussss_monai.networks.text_encoder.CachedTextEncoder`.
- ``plain_unet_monuseg.py``: the plain MONAI U-Net reference (``--reference``), which ``monuseg_table.py`` runs
  on the same splits.
- ``wheels/``: pure-Python wheels of the packages the GPU image lacks (monai, pytorch-ignite, nibabel,
  openpyxl, fire and their small dependencies), downloaded with pip for Python 3.12.

Usage::

    python benchmarks/prepare_gpu_payload.py --monuseg ../shared/data/monuseg \
        --reference ../shared/reference/plain_unet_monuseg.py --out .device
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

WHEELS = [
    "monai==1.6.1",
    "pytorch-ignite==0.5.5",
    "nibabel==5.4.2",
    "openpyxl==3.1.5",
    "et-xmlfile",
    "fire==0.7.1",
    "termcolor",
]


def resize_dataset(src: Path, dst: Path, size: int) -> list[str]:
    """Copy LViT's Train/Val folders with images and masks resized to ``size``; return all sentences."""
    from dussss_monai.data import read_lvit_dataset

    datalist = read_lvit_dataset(src)
    for folder in ("Train_Folder", "Val_Folder"):
        if not (src / folder).is_dir():
            continue
        for sub in ("img", "labelcol"):
            (dst / folder / sub).mkdir(parents=True, exist_ok=True)
            for f in sorted((src / folder / sub).iterdir()):
                with Image.open(f) as im:
                    resample = Image.NEAREST if sub == "labelcol" else Image.BILINEAR
                    im.resize((size, size), resample).save(dst / folder / sub / f.name)
        for table in (src / folder).glob("*_text.*"):
            shutil.copy2(table, dst / folder / table.name)
    return sorted({item["text"] for split in datalist.values() for item in split})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--monuseg", default="../shared/data/monuseg")
    parser.add_argument("--out", default=".device")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--text_max_length", type=int, default=64)
    parser.add_argument("--reference", default=None, help="the plain U-Net reference script to carry")
    parser.add_argument("--skip_wheels", action="store_true")
    args = parser.parse_args()

    from dussss_monai.networks import HFTextEncoder

    out = Path(args.out)
    sentences = resize_dataset(Path(args.monuseg), out / "monuseg", args.size)
    encoder = HFTextEncoder(max_length=args.text_max_length)
    encoder(sentences)
    torch.save(encoder.cache_state(), out / "text_cache.pt")
    print(f"{len(sentences)} sentences cached -> {out / 'text_cache.pt'}")
    if args.reference:
        shutil.copy2(args.reference, out / "plain_unet_monuseg.py")
    if not args.skip_wheels:
        (out / "wheels").mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "-d",
            str(out / "wheels"),
            *WHEELS,
        ]
        subprocess.run(cmd, check=True)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"payload: {total / 2**20:.1f} MiB in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
