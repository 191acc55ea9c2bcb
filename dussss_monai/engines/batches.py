"""What one stage-2 iteration passes between the trainer's hooks: the labeled and unlabeled batches on the device,
the student's view of the unlabeled one, and the pseudo labels computed from the teacher's output
(:class:`~dussss_monai.engines.MeanTeacherTrainer`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["LabeledBatch", "UnlabeledBatch", "StudentView", "PseudoLabels"]


@dataclass
class LabeledBatch:
    """The labeled batch of one iteration: ``images`` and ``masks`` on the device, ``data`` as the loader gave it."""

    images: torch.Tensor
    masks: torch.Tensor
    data: Any


@dataclass
class UnlabeledBatch:
    """The unlabeled batch of one iteration.

    Attributes:
        images: the teacher's view ``(B, C, H, W)`` on the device.
        student_images: the student's view before any batch-level perturbation: the batch's
            ``student_image_key`` (a strongly augmented copy made by the data pipeline) when the trainer names one,
            else ``images``.
        data: the batch as the loader gave it (sentences, grounding context ...).
    """

    images: torch.Tensor
    student_images: torch.Tensor
    data: Any


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class StudentView:
    """What the student sees of an unlabeled batch, and how a pseudo label of the clean batch maps onto it.

    Attributes:
        images: the student's input ``(B', C, H, W)``.
        carry: maps a pseudo label of the teacher's view ``(B, 1, H, W)`` to the target of ``images``
            ``(B', 1, H, W)`` (e.g. mixed with the same CutMix boxes).
        weight: optional per-pixel weight of the consistency loss ``(B', 1, H, W)``.
    """

    images: torch.Tensor
    carry: Callable[[torch.Tensor], torch.Tensor] = _identity
    weight: torch.Tensor | None = None


@dataclass
class PseudoLabels:
    """What the ``pseudo_labels`` hook computes from the teacher's output.

    Attributes:
        targets: the consistency targets of the student, by name: probabilities ``(B, 1, H, W)`` of the teacher's
            view, detached (e.g. ``{"teacher": ...}``; DuSSS: ``{"merged": ..., "text": ...}``).
        losses: objectives of other networks trained in the same step, by name (DuSSS: f_g's ``"decoder"``); each is
            back-propagated after the student's total, and the trainer's ``optimizers()`` step them all.
        terms: scalars of this computation to check for NaN/Inf and to log (e.g. ``loss_tg``).
    """

    targets: dict[str, torch.Tensor]
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
