"""The text check: do a dataset's sentences make DuSSS's pseudo labels better than the teacher's own?

DuSSS differs from a mean teacher only in its target ``merged = sigmoid(teacher + text)``
(``docs/method.md``, "Pseudo labels and losses"). After a DuSSS run, this check scores the three targets the run
could train its student on, against masks it never trained on (the validation images by default):

- ``teacher``: ``sigmoid(t) > 0.5``, the mean teacher's target;
- ``text``: f_g's text mask ``sigmoid(text) > 0.5``;
- ``merged``: DuSSS's target, and ``merged_rotated``, the same with each image grounded with another image's
  sentence (what the sentence's *content* is worth);
- ``changed``: the share (%) of pixels whose label the sentence changes (merged against teacher).

Dice (%) is pooled over all pixels (``2 TP / (P + G)``). The verdict: the sentences help when ``merged`` beats
both ``teacher`` and ``merged_rotated`` by at least :data:`MARGIN` Dice; otherwise train the mean teacher
(``configs/mean_teacher.json``), which needs no stage 1. Images are read as the run's stage 2 reads unlabeled
images (its size or patches, no augmentation).

Usage::

    python -m dussss_monai.bundle.text_check --run <the run's output_dir> [--split validation|unlabeled]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dussss_monai.bundle.run_folder import RECORD_NAME
from dussss_monai.errors import CheckpointError, ConfigError, DuSSSError
from dussss_monai.refiner import VLMPseudoLabelRefiner
from dussss_monai.utils.io import safe_torch_load

__all__ = ["MARGIN", "PseudoLabelMasks", "TextCheck", "load_run", "check_samples", "pseudo_label_masks", "main"]

#: Dice points by which the merged target must beat the teacher's and the rotated control's for a verdict "helps"
MARGIN = 0.5
TARGETS = ("teacher", "text", "merged", "merged_rotated")


@dataclass(frozen=True)
class PseudoLabelMasks:
    """The hard targets of one image (or patch), each ``(1, H, W)`` bool, and its true mask."""

    truth: torch.Tensor
    teacher: torch.Tensor
    text: torch.Tensor
    merged: torch.Tensor
    merged_rotated: torch.Tensor


@dataclass(frozen=True)
class TextCheck:
    """Figures of the check (Dice in %, pooled over all pixels).

    Attributes:
        dice: ``{target: Dice}`` for :data:`TARGETS`.
        changed_pct: pixels whose label the sentence changes (merged against teacher), % of all pixels.
        n_samples: images (or patches) scored.
    """

    dice: dict[str, float]
    changed_pct: float
    n_samples: int

    @property
    def helps(self) -> bool:
        """Whether merged beats the teacher and the rotated control by at least :data:`MARGIN`."""
        merged = self.dice["merged"]
        return merged - self.dice["teacher"] >= MARGIN and merged - self.dice["merged_rotated"] >= MARGIN

    def report(self) -> str:
        """The figures and the verdict, in words."""
        d = self.dice
        lines = [
            f"text check on {self.n_samples} images (Dice %, pooled):",
            f"  teacher alone (the mean teacher's target)       {d['teacher']:6.2f}",
            f"  f_g's text mask                                 {d['text']:6.2f}",
            f"  merged (DuSSS's target)                         {d['merged']:6.2f}",
            f"  merged, each image with another's sentence      {d['merged_rotated']:6.2f}",
            f"  pixels the sentence changes: {self.changed_pct:.2f} %",
        ]
        gain, content = d["merged"] - d["teacher"], d["merged"] - d["merged_rotated"]
        if self.helps:
            lines.append(
                f"verdict: the sentences improve the pseudo labels (+{gain:.2f} over the teacher, +{content:.2f} over "
                "another image's sentence): DuSSS suits this data."
            )
        else:
            lines.append(
                f"verdict: the sentences do not improve the pseudo labels ({gain:+.2f} over the teacher, {content:+.2f} "
                f"over another image's sentence; {MARGIN} needed): train the mean teacher (configs/mean_teacher.json)."
            )
        return "\n".join(lines)


def load_run(run_dir: str | Path) -> Any:
    """The config of a finished stage-2 run, from its ``run.json``, set to run on the CPU.

    Args:
        run_dir: the run's ``output_dir`` (the folder with ``run.json`` and ``checkpoints/``).

    Returns:
        a ``monai.bundle.ConfigParser`` holding the run's config.

    Raises:
        ConfigError: no readable ``run.json``, or a run of a method that reads no sentences.
    """
    from monai.bundle import ConfigParser

    record_path = Path(run_dir) / RECORD_NAME
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        config = record["config"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"{record_path}: no run record ({e}); give --run the output_dir of a stage-2 DuSSS run"
        ) from e
    method = record.get("method", config.get("method"))
    if method != "dussss":
        raise ConfigError(
            f"{record_path} is a {method!r} run: the text check needs a DuSSS run (train.json without a method "
            "layer), whose grounding decoder it scores"
        )
    parser = ConfigParser(config)
    parser["device"] = "$torch.device('cpu')"
    parser["amp"] = False
    return parser


def check_samples(parser: Any, split: str, samples_per_image: int, seed: int) -> list[dict[str, Any]]:
    """The images of ``split`` as stage 2 reads unlabeled images (the run's size, or patches with the whole image
    as grounding context; volumes: ``samples_per_image`` slices drawn as in training, each with its sentence), each
    with a mask and ``rotated_text`` (the sentence of the same draw of the next image).

    Raises:
        ConfigError: ``split`` unknown, without masks, or with fewer than two images.
    """
    from dussss_monai.data import train_transforms

    if split not in ("validation", "unlabeled"):
        raise ConfigError(f"--split must be 'validation' or 'unlabeled', got {split!r}")
    items = [item for item in parser.get_parsed_content("datalist")[split] if item.get("label")]
    if len(items) < 2:
        raise ConfigError(
            f"the text check needs at least 2 {split} images with masks, found {len(items)}"
            + ("; the unlabeled images have no masks here: use --split validation" if split == "unlabeled" else "")
        )
    volumes = bool(parser.get_parsed_content("volumes"))
    pipeline = train_transforms(
        image_size=parser.get_parsed_content("image_size"),
        channels=parser.get_parsed_content("in_channels"),
        augment=False,
        patch_size=parser.get_parsed_content("patch_size"),
        grounding_context=True,
        volumes=volumes,
        window=parser.get_parsed_content("intensity_window") if volumes else None,
        slice_axis=parser.get_parsed_content("slice_axis") if volumes else "axial",
    )
    pipeline.set_random_state(seed=seed)
    draws = samples_per_image if volumes or parser.get_parsed_content("patch_size") else 1
    drawn = [[pipeline(item) for _ in range(draws)] for item in items]
    rotated = drawn[1:] + drawn[:1]  # as refiner.rotate: each image gets its neighbour's sentence
    return [
        {**sample, "rotated_text": str(other["text"])}
        for samples, others in zip(drawn, rotated)
        for sample, other in zip(samples, others)
    ]


def pseudo_label_masks(
    teacher: torch.nn.Module, refiner: VLMPseudoLabelRefiner, samples: Sequence[dict[str, Any]], batch_size: int = 8
) -> list[PseudoLabelMasks]:
    """The hard targets of every sample (module docstring), without gradients.

    Args:
        teacher: the teacher network (in eval mode).
        refiner: the refiner (in eval mode, grounding each image with the sentence it is given).
        samples: from :func:`check_samples`.
        batch_size: samples per forward.

    Returns:
        one :class:`PseudoLabelMasks` per sample.
    """
    out: list[PseudoLabelMasks] = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            images = torch.stack([torch.as_tensor(s["image"]) for s in batch])
            truth = torch.stack([torch.as_tensor(s["label"]) for s in batch]) > 0.5
            patches = "crop_box" in batch[0]
            context = torch.stack([torch.as_tensor(s["vlm_image"]) for s in batch]) if patches else images
            boxes = torch.stack([torch.as_tensor(s["crop_box"]) for s in batch]) if patches else None
            logits = teacher(images).float()
            right = refiner(context, [str(s["text"]) for s in batch], logits, boxes)
            wrong = refiner(context, [str(s["rotated_text"]) for s in batch], logits, boxes)
            for i in range(len(batch)):
                out.append(
                    PseudoLabelMasks(
                        truth[i], logits[i] > 0, right.text_mask[i] > 0.5, right.merged[i] > 0.5, wrong.merged[i] > 0.5
                    )
                )
    return out


def pooled_dice(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Dice (%) of ``(prediction, truth)`` bool masks pooled over every pixel; 100 when both are empty."""
    tp = sum(float((p & t).sum()) for p, t in pairs)
    total = sum(float(p.sum()) + float(t.sum()) for p, t in pairs)
    return 100.0 if total == 0 else 200.0 * tp / total


def summarise(masks: Sequence[PseudoLabelMasks]) -> TextCheck:
    """:class:`TextCheck` of the hard targets of :func:`pseudo_label_masks`."""
    dice = {name: pooled_dice([(getattr(m, name), m.truth) for m in masks]) for name in TARGETS}
    changed = sum(float((m.merged != m.teacher).sum()) for m in masks)
    pixels = sum(m.truth.numel() for m in masks)
    return TextCheck(dice, 100.0 * changed / max(pixels, 1), len(masks))


def load_trained(parser: Any, checkpoint: Path) -> tuple[torch.nn.Module, VLMPseudoLabelRefiner]:
    """The teacher and the refiner (the stage-1 VLM and the run's f_g) of a stage-2 training checkpoint, in eval
    mode.

    Raises:
        CheckpointError: the checkpoint is missing or holds no teacher or grounding decoder.
    """
    if not checkpoint.is_file():
        raise CheckpointError(f"no training checkpoint at {checkpoint}; give --checkpoint or finish the run first")
    state = safe_torch_load(checkpoint)
    missing = [key for key in ("teacher", "grounding_decoder") if key not in state]
    if missing:
        raise CheckpointError(f"{checkpoint} holds no {' and no '.join(missing)}: give a DuSSS training checkpoint")
    teacher = parser.get_parsed_content("network_def")
    teacher.load_state_dict(state["teacher"])
    refiner = parser.get_parsed_content("refiner")
    refiner.grounding_decoder.load_state_dict(state["grounding_decoder"])
    refiner.rotate_texts = False  # a rotated-sentence control run is checked with the images' own sentences
    return teacher.eval(), refiner.eval()


def run_check(args: argparse.Namespace, progress: Callable[[str], None] = print) -> TextCheck:
    """The check of ``args`` (see :func:`main`)."""
    from monai.utils import set_determinism

    set_determinism(seed=args.seed)
    parser = load_run(args.run)
    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(parser.get_parsed_content("checkpoint_dir"))
    if checkpoint.is_dir():
        checkpoint = checkpoint / "training_final.pt"
    teacher, refiner = load_trained(parser, checkpoint)
    samples = check_samples(parser, args.split, args.samples_per_image, args.seed)
    progress(f"scoring {len(samples)} {args.split} samples with {checkpoint} ...")
    return summarise(pseudo_label_masks(teacher, refiner, samples))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (module docstring); exit status 0, or 2 with one message on bad input."""
    p = argparse.ArgumentParser(prog="python -m dussss_monai.bundle.text_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--run", required=True, help="the output_dir of a finished DuSSS stage-2 run")
    p.add_argument("--checkpoint", default=None, help="a training checkpoint (default: the run's training_final.pt)")
    p.add_argument("--split", default="validation", help="validation (default) or unlabeled (when they have masks)")
    p.add_argument(
        "--samples_per_image", type=int, default=8, help="patches per image in patch training, slices per volume"
    )
    p.add_argument("--seed", type=int, default=0, help="draws the patches or slices")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of words")
    args = p.parse_args(argv)
    try:
        check = run_check(args, progress=lambda line: print(line, file=sys.stderr))
    except DuSSSError as e:
        print(f"text_check: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"dice": check.dice, "changed_pct": check.changed_pct, "n_samples": check.n_samples,
                          "helps": check.helps}))  # fmt: skip
    else:
        print(check.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
