"""Control experiment: does DuSSS use the sentence's content? Run any ``python -m monai.bundle`` command with
the sentences of every UNLABELED batch rotated by one image, so that each unlabeled image is grounded with
another image's sentence (same vocabulary, same batch statistics, wrong content).

If a DuSSS run scores the same with rotated sentences as with the right ones, its gain (or loss) over the mean
teacher does not come from the text. Labeled batches (f_g's supervision) keep their own sentences, and so does
validation: only what the student learns from on unlabeled images is changed.

Usage (any bundle command line after the script's name)::

    python benchmarks/rotated_text_control.py run training \\
        --config_file bundles/dussss_qata_cov19/configs/train.json --method dussss ...

Results of this control: ``docs/notebook/2026-11-27_benchmarks.md`` ("Does the sentence matter?").
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable, Sequence

from dussss_monai.bundle import factories
from dussss_monai.engines import DuSSSTrainer, UnlabeledBatch


def rotate(texts: list[str] | None) -> list[str] | None:
    """``texts[1:] + texts[:1]``: each image gets its neighbour's sentence (unchanged for 0 or 1 sentences)."""
    return texts[1:] + texts[:1] if texts else texts


class RotatedTextDuSSSTrainer(DuSSSTrainer):
    """DuSSS that grounds every unlabeled image with the sentence of the next image of its batch."""

    def unlabeled_texts(self, unlabeled: UnlabeledBatch) -> list[str]:
        return rotate(super().unlabeled_texts(unlabeled)) or []


def install() -> Callable[[], None]:
    """Make the bundles' ``--method dussss`` train :class:`RotatedTextDuSSSTrainer`.

    Returns:
        a function that undoes the change.
    """
    original = factories.TRAINERS["dussss"]
    factories.TRAINERS["dussss"] = RotatedTextDuSSSTrainer

    def uninstall() -> None:
        factories.TRAINERS["dussss"] = original

    return uninstall


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``python -m monai.bundle <argv>`` with the rotation installed."""
    install()
    sys.argv = ["monai.bundle", *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
