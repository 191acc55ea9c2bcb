"""How good are DuSSS's pseudo labels, against the truth, at a point of stage-2 training?

A diagnostic for MoNuSeg stage 2 (``docs/method.md``, "Pseudo labels and losses"). For each stage-2 training
checkpoint given (``training_final.pt`` or ``training_checkpoint_epoch=N.pt`` of a run's ``run/checkpoints``,
which hold the teacher and, for DuSSS, f_g), it draws patches of the *validation* tiles exactly as stage 2 draws
unlabeled patches (the bundle's patch size, the whole tile at the VLM's size as grounding context, no
augmentation) and scores, against the validation masks, the targets the student would be trained on:

- ``teacher``: the teacher's own mask ``sigmoid(t) > 0.5``, the mean teacher's pseudo label;
- ``text``: f_g's text-guided mask ``sigmoid(text) > 0.5``, the target of ``L_text`` (DuSSS checkpoints only);
- ``merged``: ``sigmoid(t + text) > 0.5``, the target of ``L_merged``, and ``merged_rotated`` with each tile
  grounded with the next tile's sentence (a control of the sentence's content);
- ``flipped``: the share (%) of pixels whose hard label the text changes (merged against teacher), and the
  shares f_g's mask and the truth mark.

Dice (%) is pooled over all patches (``2 TP / (P + G)``). The validation tiles stand in for unlabeled tiles:
stage 2 never sees their masks. Not a test: about a minute per checkpoint on 2 CPU cores.

Usage (from the repository root)::

    python benchmarks/pseudo_label_quality.py --vlm_checkpoint WORKDIR/stage1/models/vlm.pt \\
        --checkpoint WORKDIR/seed0/dussss/run/checkpoints/training_final.pt [--checkpoint ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


from dussss_monai.errors import ConfigError  # noqa: E402
from dussss_monai.refiner import rotate  # noqa: E402  (each image gets its neighbour's sentence)

CONFIG = REPO / "bundles" / "dussss_monuseg" / "configs" / "train.json"


class PooledDice:
    """Dice (%) of hard masks pooled over every pixel added: ``2 TP / (|prediction| + |truth|)``."""

    def __init__(self) -> None:
        self.tp = self.pred = self.true = 0.0

    def add(self, prediction: torch.Tensor, truth: torch.Tensor) -> None:
        """Add a batch of boolean masks of the same shape."""
        self.tp += float((prediction & truth).sum())
        self.pred += float(prediction.sum())
        self.true += float(truth.sum())

    def value(self) -> float:
        """The pooled Dice (%); 100 when both are empty."""
        total = self.pred + self.true
        return 100.0 if total == 0 else 200.0 * self.tp / total


def validation_patches(
    items: Sequence[dict[str, Any]], pipeline: Callable[[dict[str, Any]], dict[str, Any]], patches_per_tile: int
) -> list[dict[str, Any]]:
    """``patches_per_tile`` draws of ``pipeline`` from every item (validation tile), each with the sentence of the
    next tile as ``rotated_text`` (the control).

    Raises:
        ConfigError: when there are fewer than two tiles (no other sentence to ground with).
    """
    if len(items) < 2:
        raise ConfigError(f"the rotated-sentence control needs at least 2 validation tiles, got {len(items)}")
    others = rotate([str(item["text"]) for item in items]) or []
    return [
        {**pipeline(item), "rotated_text": other} for item, other in zip(items, others) for _ in range(patches_per_tile)
    ]


def patch_pipeline(parser: Any, seed: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Stage 2's unlabeled patch drawing without augmentation: the bundle's patch size, the whole tile at the VLM's
    size as grounding context (``vlm_image``, ``crop_box``), seeded."""
    from dussss_monai.data import train_transforms

    pipeline = train_transforms(
        image_size=parser.get_parsed_content("image_size"),
        channels=parser.get_parsed_content("in_channels"),
        augment=False,
        patch_size=parser.get_parsed_content("patch_size"),
        grounding_context=True,
    )
    pipeline.set_random_state(seed=seed)
    return pipeline


def score(
    teacher: torch.nn.Module, refiner: Any | None, patches: list[dict[str, Any]], batch_size: int = 4
) -> dict[str, float]:
    """The figures of the module docstring for one teacher (and f_g, when ``refiner`` is given)."""
    names = ["teacher"] + (["text", "merged", "merged_rotated"] if refiner is not None else [])
    dice = {name: PooledDice() for name in names}
    flipped = changed = marked = 0.0
    with torch.no_grad():
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size]
            images = torch.stack([p["image"] for p in batch])
            truth = torch.stack([p["label"] for p in batch]) > 0.5
            teacher_logits = teacher(images).float()
            dice["teacher"].add(teacher_logits > 0, truth)
            if refiner is None:
                continue
            context = torch.stack([p["vlm_image"] for p in batch])
            boxes = torch.stack([p["crop_box"] for p in batch])
            texts = [str(p["text"]) for p in batch]
            right = refiner(context, texts, teacher_logits, boxes)
            wrong = refiner(context, [str(p["rotated_text"]) for p in batch], teacher_logits, boxes)
            dice["text"].add(right.text_mask > 0.5, truth)
            dice["merged"].add(right.merged > 0.5, truth)
            dice["merged_rotated"].add(wrong.merged > 0.5, truth)
            flipped += float(((right.merged > 0.5) != (teacher_logits > 0)).sum())
            changed += float(truth.numel())
            marked += float((right.text_mask > 0.5).sum())
    result = {f"{name}_dice": d.value() for name, d in dice.items()}
    if refiner is not None:
        result["flipped_pct"] = 100.0 * flipped / max(changed, 1.0)
        result["text_marks_pct"] = 100.0 * marked / max(changed, 1.0)
        result["truth_pct"] = 100.0 * dice["teacher"].true / max(changed, 1.0)
    return result


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Score every checkpoint of ``args``; one dict of figures per checkpoint."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    torch.set_num_threads(args.threads)
    set_determinism(seed=args.seed)
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, value in {
            "dataset_dir": str(Path(args.dataset_dir).resolve()),
            "output_dir": tmp,
            "method": "dussss",
            "vlm_checkpoint": str(Path(args.vlm_checkpoint).resolve()),
            "device": "$torch.device('cpu')",
            "amp": False,
        }.items():
            parser[key] = value
        items = parser.get_parsed_content("datalist")["validation"]
        patches = validation_patches(items, patch_pipeline(parser, args.seed), args.patches_per_tile)
        refiner = parser.get_parsed_content("refiner")
        teacher = parser.get_parsed_content("network_def")
    for path in args.checkpoint:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "teacher" not in state:
            raise ConfigError(f"{path}: no 'teacher' in this checkpoint; give a stage-2 training checkpoint")
        teacher.load_state_dict(state["teacher"])
        teacher.eval()
        use_text = state.get("grounding_decoder") is not None
        if use_text:
            refiner.grounding_decoder.load_state_dict(state["grounding_decoder"])
            refiner.eval()
        iteration = int(state.get("trainer", {}).get("iteration", -1))
        rows.append(
            {"checkpoint": str(path), "iteration": iteration, **score(teacher, refiner if use_text else None, patches)}
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="stage-2 training checkpoint (repeatable)")
    p.add_argument("--vlm_checkpoint", required=True, help="the stage-1 vlm.pt the DuSSS run used")
    p.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "monuseg"))
    p.add_argument("--patches_per_tile", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="draws the patches")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for path in [args.vlm_checkpoint, *args.checkpoint]:
        if not Path(path).is_file():
            print(f"pseudo_label_quality: no file at {path}", file=sys.stderr)
            return 2
    try:
        rows = run(args)
    except ConfigError as e:
        print(f"pseudo_label_quality: {e}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
