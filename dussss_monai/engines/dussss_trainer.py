"""Stage 2 of DuSSS: the mean teacher whose pseudo labels the VLM refiner corrects with each image's sentence
(``docs/method.md``, "Pseudo labels and losses").

:class:`DuSSSTrainer` overrides one hook of :class:`~dussss_monai.engines.MeanTeacherTrainer`,
:meth:`~dussss_monai.engines.MeanTeacherTrainer.pseudo_labels`: the refiner turns the teacher's logits and the
sentences into ``merged = sigmoid(teacher_logits + text_logits)`` and ``text_mask = sigmoid(text_logits)``, the
targets of ``L_merged`` and ``L_text``, and returns f_g's objective, which this trainer optimises with f_g's
own optimiser in the same step as the student. The targets are detached, so the student's losses never reach
f_g and f_g's loss never reaches the student.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim.optimizer import Optimizer

from dussss_monai.data.transforms import CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY, CROP_BOX_KEY
from dussss_monai.engines.batches import LabeledBatch, UnlabeledBatch
from dussss_monai.engines.distributed import average_gradients, broadcast_from_rank0
from dussss_monai.engines.mean_teacher_trainer import MeanTeacherTrainer
from dussss_monai.errors import ConfigError, DuSSSError
from dussss_monai.refiner import GroundingTargets, Refinement, VLMPseudoLabelRefiner

__all__ = ["DuSSSTrainer"]


def _text_list(texts: Any) -> list[str]:
    """The sentences of a batch as a list of strings (a collated batch of one may hold a bare string)."""
    return [texts] if isinstance(texts, str) else [str(t) for t in texts]


class DuSSSTrainer(MeanTeacherTrainer):
    """DuSSS stage 2: a :class:`~dussss_monai.engines.MeanTeacherTrainer` with VLM-refined pseudo labels.

    In patch training the batches carry a grounding context (``vlm_image``, ``vlm_label``, ``crop_box`` of
    :mod:`dussss_monai.data.transforms`): the sentence is grounded on the whole image it describes and the text
    mask cropped to the patch. For checkpoints the engine exposes ``grounding_decoder`` and ``decoder_optimizer``
    (``None`` when f_g is not trained).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function, unlabeled_data_loader:
            as in :class:`~dussss_monai.engines.MeanTeacherTrainer`; unlabeled batches carry ``text_key``, and so
            do labeled batches when f_g is supervised on them (the refiner's ``grounding_weight > 0``).
        refiner: the :class:`~dussss_monai.refiner.VLMPseudoLabelRefiner` (frozen VLM + f_g).
        decoder_optimizer: f_g's optimiser; required when ``use_tg``.
        use_merged: include ``L_merged`` (ablation switch of the paper).
        use_text_loss: include ``L_text``.
        use_tg: train f_g in stage 2 (off: f_g stays as loaded and the refiner runs in eval mode).
        text_key: key of the sentences in the batches.
        kwargs: the other arguments of :class:`~dussss_monai.engines.MeanTeacherTrainer`.

    Raises:
        ConfigError: when both ``use_merged`` and ``use_text_loss`` are off, or ``use_tg`` has no optimiser or
            f_g no objective (both of the refiner's loss weights 0).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        unlabeled_data_loader: Iterable,
        refiner: VLMPseudoLabelRefiner,
        decoder_optimizer: Optimizer | None = None,
        use_merged: bool = True,
        use_text_loss: bool = True,
        use_tg: bool = True,
        text_key: str = "text",
        **kwargs: Any,
    ) -> None:
        if not (use_merged or use_text_loss):
            raise ConfigError("DuSSSTrainer needs use_merged or use_text_loss (or both) switched on")
        if use_tg and decoder_optimizer is None:
            raise ConfigError("DuSSSTrainer: use_tg=True needs a decoder_optimizer (or use_tg=False to keep f_g fixed)")
        if use_tg and refiner.text_guided_weight == 0 and refiner.grounding_weight == 0:
            raise ConfigError(
                "text_guided_weight and grounding_supervision_weight are both 0: f_g would have no objective "
                "(set use_text_guided_loss to False to keep f_g as loaded)"
            )
        super().__init__(
            device, max_epochs, train_data_loader, network, optimizer, loss_function, unlabeled_data_loader, **kwargs
        )
        self.refiner = refiner.train(bool(use_tg))
        self.grounding_decoder: torch.nn.Module = refiner.grounding_decoder
        self.use_merged = bool(use_merged)
        self.use_text_loss = bool(use_text_loss)
        self.use_tg = bool(use_tg)
        self.decoder_optimizer = decoder_optimizer if self.use_tg else None
        self.text_key = text_key
        self._refinement: Refinement | None = None
        if self.use_tg:
            broadcast_from_rank0(list(self.grounding_decoder.parameters()) + list(self.grounding_decoder.buffers()))

    def _texts(self, data: Any, what: str) -> list[str]:
        texts = data.get(self.text_key) if isinstance(data, Mapping) else None
        if texts is None:
            raise DuSSSError(f"DuSSS needs the sentence of every {what} image in the batch (key {self.text_key!r})")
        return _text_list(texts)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.state.device, non_blocking=self.non_blocking)

    def _grounding_targets(self, labeled: LabeledBatch) -> GroundingTargets | None:
        """f_g's supervision: the whole labeled images and masks and the patches' boxes when the batch carries a
        grounding context (patch training; f_g learns on the regions of the patches, as it decodes them for the
        unlabeled images), else the batch itself; ``None`` when f_g is not supervised."""
        if not (self.use_tg and self.refiner.grounding_weight > 0):
            return None
        texts = self._texts(labeled.data, "labeled")
        data = labeled.data
        if isinstance(data, Mapping) and all(k in data for k in (CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY, CROP_BOX_KEY)):
            images, masks, boxes = (
                self._to_device(data[k]) for k in (CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY, CROP_BOX_KEY)
            )
            return GroundingTargets(images, masks, texts, boxes)
        return GroundingTargets(labeled.images, labeled.masks, texts)

    def unlabeled_texts(self, unlabeled: UnlabeledBatch) -> list[str]:
        """The sentences the unlabeled images are grounded with: their own (a control may override this)."""
        return self._texts(unlabeled.data, "unlabeled")

    def pseudo_labels(
        self, unlabeled: UnlabeledBatch, teacher_logits: torch.Tensor, labeled: LabeledBatch
    ) -> dict[str, torch.Tensor]:
        """``{"merged": sigmoid(teacher + text logits), "text": sigmoid(text logits)}``, the terms switched on."""
        data = unlabeled.data
        images, boxes = unlabeled.images, None
        if isinstance(data, Mapping) and CONTEXT_IMAGE_KEY in data and CROP_BOX_KEY in data:
            images, boxes = self._to_device(data[CONTEXT_IMAGE_KEY]), self._to_device(data[CROP_BOX_KEY])
        self.refiner.train(self.use_tg)
        self._refinement = self.refiner(
            images, self.unlabeled_texts(unlabeled), teacher_logits, boxes, self._grounding_targets(labeled)
        )
        targets = {}
        if self.use_merged:
            targets["merged"] = self._refinement.merged
        if self.use_text_loss:
            targets["text"] = self._refinement.text_mask
        return targets

    def auxiliary_terms(self) -> dict[str, torch.Tensor]:
        """f_g's loss terms of this iteration (``loss_tg``, ``loss_ground``)."""
        return {} if self._refinement is None else dict(self._refinement.terms)

    def optimizers(self) -> list[Optimizer]:
        """The student's optimiser and, when f_g is trained, f_g's."""
        return super().optimizers() + ([self.decoder_optimizer] if self.decoder_optimizer is not None else [])

    def objectives(self, loss: torch.Tensor) -> list[torch.Tensor]:
        """The student's ``loss`` and f_g's objective (when f_g is trained)."""
        decoder_loss = None if self._refinement is None else self._refinement.decoder_loss
        return super().objectives(loss) + ([decoder_loss] if decoder_loss is not None else [])

    def before_optimizer_step(self) -> None:
        """Average f_g's gradients across ranks (f_g is not wrapped in DistributedDataParallel)."""
        if self.decoder_optimizer is not None:
            average_gradients(self.grounding_decoder)
