"""How well does the grounding decoder f_g ground the sentence? Train f_g alone and measure its mask.

A diagnostic for DuSSS stage 2 (method.md, "Stage 2", text-guided mask): builds the bundle's frozen stage-1 VLM
and f_g exactly as ``configs/train.json`` does (``@refiner``), trains f_g alone on the labeled training
images with the trainer's grounding supervision (``loss_ground``: the bundle's segmentation loss of the
text-guided mask against the ground truth; L_tg is left out so that the figure isolates what the decoder can
localise), then reports on the validation images:

- the Dice (%) of the text-guided mask ``sigmoid(text_logits) > 0.5`` with each image's own sentence and with
  the sentences *rotated* by one image (a control: if f_g reads the sentence, the wrong one must cost Dice);
- the share of pixels the mask marks, against the ground truth's;
- with ``--teacher model.pt`` (a student saved by a stage-2 run), the Dice of that network alone and of the
  merged pseudo label ``sigmoid(teacher + text)`` (right and rotated sentences): whether f_g's mask would
  correct the teacher or spoil it.

Not a test: it trains for a few hundred steps (about 25 s on 2 CPU cores at the demo's size).

Usage (from the repository root; every ``--set key=value`` is a bundle override, JSON-parsed where it can be)::

    # the demo's VLM and settings (python scripts/demo.py --workdir runs/demo first)
    python benchmarks/grounding_probe.py --demo --vlm_checkpoint runs/demo/models/vlm.pt \\
        --teacher runs/demo/supervised/seed0/models/model.pt
    # the same with the paper's f_g (no image skip, text logit scale at most 2)
    python benchmarks/grounding_probe.py --demo --vlm_checkpoint runs/demo/models/vlm.pt \\
        --set decoder_image_skip_channels=0 --set text_logit_scale_init=1.0 --set text_logit_scale_max=2.0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks", REPO / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


from bundle_runner import parse_extra  # noqa: E402

from dussss_monai.errors import ConfigError  # noqa: E402
from dussss_monai.refiner import rotate  # noqa: E402  (each image gets its neighbour's sentence)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b=[2,3]", "c=x"]`` -> ``{"a": 1, "b": [2, 3], "c": "x"}``: ``bundle_runner.parse_extra`` for ``--set``.

    Raises:
        ConfigError: for an item without ``=``.
    """
    return parse_extra(items, option="--set")


def dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-image Dice (%) of ``logits > 0`` against a binary ``target``, both ``(B, 1, H, W)``
    (MONAI's ``compute_dice``; an image with an empty prediction and an empty target scores 100)."""
    from monai.metrics import compute_dice

    per_image = compute_dice((logits > 0).float(), target, include_background=True, ignore_empty=False)
    return 100.0 * float(per_image.mean())


def _stack(dataset: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([torch.as_tensor(it["image"]) for it in items]).float()
    labels = torch.stack([torch.as_tensor(it["label"]) for it in items]).float()
    return images, (labels > 0.5).float(), [str(it["text"]) for it in items]


def run(args: argparse.Namespace) -> dict[str, float]:
    """Build, train and score f_g as described in the module docstring; returns the figures printed."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    sys.path.insert(0, str(REPO / "scripts"))
    from demo import DEMO_OVERRIDES, TRAIN_OVERRIDES

    overrides: dict[str, Any] = {}
    if args.demo:
        overrides.update(DEMO_OVERRIDES)
        overrides.update(TRAIN_OVERRIDES)
        overrides["dataset_dir"] = str(REPO / "demo_data" / "qata_cov19")
    overrides.update(parse_overrides(args.set))
    overrides.update(
        {
            "method": "dussss",
            "seed": args.seed,
            "vlm_checkpoint": str(Path(args.vlm_checkpoint).resolve()),
            "device": "$torch.device('cpu')",
            "amp": False,
            "augment_degrees": 0.0,  # the probe measures localisation, not robustness to rotation
        }
    )
    set_determinism(seed=args.seed)
    parser = ConfigParser()
    parser.read_config(str(Path(args.config_file)))
    with tempfile.TemporaryDirectory() as tmp:
        overrides["output_dir"] = tmp
        for key, value in overrides.items():
            parser[key] = value
        refiner = parser.get_parsed_content("refiner")
        if refiner is None:
            raise ConfigError(f"{args.config_file}: @refiner is None; the probe needs the DuSSS refiner")
        loss_fn = parser.get_parsed_content("loss")
        x_l, y_l, t_l = _stack(parser.get_parsed_content("train#dataset"))
        x_v, y_v, t_v = _stack(parser.get_parsed_content("validate#dataset"))
        teacher = None
        if args.teacher:
            teacher = parser.get_parsed_content("network_def")
            teacher.load_state_dict(torch.load(args.teacher, map_location="cpu", weights_only=True))
            teacher.eval()

    decoder = refiner.grounding_decoder
    optimizer = torch.optim.Adam(decoder.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    refiner.train()
    for _ in range(args.steps):
        idx = torch.randperm(len(x_l), generator=generator)[: args.batch_size].tolist()
        logits = refiner.ground(x_l[idx], [t_l[i] for i in idx]).text_logits
        loss = loss_fn(logits, y_l[idx]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    refiner.eval()
    with torch.no_grad():
        right = refiner.text_logits(x_v, t_v)
        wrong = refiner.text_logits(x_v, rotate(t_v))
        result = {
            "text_mask_dice": dice(right, y_v),
            "text_mask_dice_rotated": dice(wrong, y_v),
            "text_mask_foreground": 100.0 * float((right > 0).float().mean()),
            "truth_foreground": 100.0 * float(y_v.mean()),
            "text_logit_max": float(right.max()),
        }
        if teacher is not None:
            teacher_logits = teacher(x_v)
            result["teacher_dice"] = dice(teacher_logits, y_v)
            result["merged_dice"] = dice(teacher_logits + right, y_v)
            result["merged_dice_rotated"] = dice(teacher_logits + wrong, y_v)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", default=str(REPO / "bundles" / "dussss_qata_cov19" / "configs" / "train.json"))
    p.add_argument("--vlm_checkpoint", required=True, help="stage-1 vlm.pt")
    p.add_argument("--teacher", default="", help="optional stage-2 student (model.pt) to merge with")
    p.add_argument("--demo", action="store_true", help="apply the demo's overrides (scripts/demo.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override (repeatable)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0, help="draws the labeled split, f_g's initialisation and batches")
    args = p.parse_args(argv)
    if not Path(args.vlm_checkpoint).is_file():
        print(f"grounding_probe: no stage-1 checkpoint at {args.vlm_checkpoint}", file=sys.stderr)
        return 2
    try:
        result = run(args)
    except ConfigError as e:
        print(f"grounding_probe: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: round(v, 2) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
