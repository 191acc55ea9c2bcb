"""Write a trained student's weights into a bundle as ``models/model.pt``: a plain state dict, floating-point tensors
stored in float16 (half the size; they load into the float32 network unchanged in shape), written atomically, with
the record of its network settings (``model.json``, written by the training run) beside it.

    python scripts/ship_weights.py runs/monuseg/seed0/dussss/models/model.pt bundles/dussss_monuseg/models/model.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from dussss_monai.bundle.model_record import read_model_record, write_model_record
from dussss_monai.utils.io import atomic_torch_save, safe_torch_load


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a state dict written by a training run (models/model.pt)")
    parser.add_argument("target", help="where the bundle's models/model.pt goes")
    args = parser.parse_args(argv)
    state = safe_torch_load(args.source)
    half = {k: v.half() if torch.is_floating_point(v) else v for k, v in state.items()}
    Path(args.target).parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(half, args.target)
    record = read_model_record(args.source)
    if record:
        write_model_record(args.target, record)
    size = Path(args.target).stat().st_size / 2**20
    print(f"wrote {args.target}: {len(half)} tensors, {size:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
