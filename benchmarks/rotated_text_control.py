"""Control experiment: does DuSSS use the sentence's content? Run any ``python -m monai.bundle`` command with
the sentences of every UNLABELED batch rotated by one image, so that each unlabeled image is grounded with
another image's sentence (same vocabulary, same batch statistics, wrong content).

If a DuSSS run scores the same with rotated sentences as with the right ones, its gain (or loss) over the mean
teacher does not come from the text. Labeled batches (f_g's supervision) keep their own sentences, and so does
validation: only what the student learns from on unlabeled images is changed.

Usage (any bundle command line after the script's name)::

    python benchmarks/rotated_text_control.py run training \\
        --config_file bundles/dussss_qata_cov19/configs/train.json --method dussss ...

Results of this control: ``docs/benchmarks.md`` ("Does the sentence matter?").
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dussss_monai.engines.semi_supervised_trainer import SemiSupervisedTrainer


def rotate(texts: list[str] | None) -> list[str] | None:
    """``texts[1:] + texts[:1]``: each image gets its neighbour's sentence (unchanged for 0 or 1 sentences)."""
    return texts[1:] + texts[:1] if texts else texts


def install() -> Callable[[], None]:
    """Make :class:`SemiSupervisedTrainer` rotate the sentences of every unlabeled batch.

    Returns:
        a function that undoes the change.
    """
    original = SemiSupervisedTrainer._unlabeled_inputs

    def rotated_inputs(self: SemiSupervisedTrainer, batch: Any) -> tuple[Any, list[str] | None]:
        images, texts = original(self, batch)
        return images, rotate(texts)

    SemiSupervisedTrainer._unlabeled_inputs = rotated_inputs  # type: ignore[method-assign]

    def uninstall() -> None:
        SemiSupervisedTrainer._unlabeled_inputs = original  # type: ignore[method-assign]

    return uninstall


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``python -m monai.bundle <argv>`` with the rotation installed."""
    install()
    sys.argv = ["monai.bundle", *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
