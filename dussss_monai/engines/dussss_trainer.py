"""Stage 2 of DuSSS: the mean teacher whose pseudo labels the VLM refiner corrects with each image's sentence
(``docs/method.md``, "Pseudo labels and losses").

:class:`DuSSSTrainer` overrides one hook of :class:`~dussss_monai.engines.MeanTeacherTrainer`,
:meth:`~dussss_monai.engines.MeanTeacherTrainer.pseudo_labels`, top to bottom:

1. the refiner turns the teacher's logits and the sentences into ``merged = sigmoid(teacher_logits + text_logits)``
   and ``text_mask = sigmoid(text_logits)``, the targets of ``L_merged`` and ``L_text``, and returns the grounding
   it computed (with the labeled images' when f_g is supervised on them);
2. f_g's loss (:class:`~dussss_monai.losses.GroundingDecoderLoss`) is computed from that grounding;
3. the hook returns the targets and f_g's loss (:class:`~dussss_monai.engines.PseudoLabels`); the iteration
   back-propagates it after the student's and steps f_g's optimiser with the student's.

The targets are detached, so the student's losses never reach f_g and f_g's loss never reaches the student.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim.optimizer import Optimizer

from dussss_monai.data.transforms import CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY, CROP_BOX_KEY
from dussss_monai.engines.batches import LabeledBatch, PseudoLabels, UnlabeledBatch
from dussss_monai.engines.distributed import average_gradients, broadcast_from_rank0
from dussss_monai.engines.mean_teacher_trainer import MeanTeacherTrainer
from dussss_monai.errors import ConfigError, DuSSSError
from dussss_monai.losses.grounding import GroundingDecoderLoss
from dussss_monai.refiner import GroundingTargets, VLMPseudoLabelRefiner
from dussss_monai.utils.texts import text_list

__all__ = ["DuSSSTrainer"]


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
        refiner: the :class:`~dussss_monai.refiner.VLMPseudoLabelRefiner` (frozen VLM + f_g); moved to ``device``.
        decoder_optimizer: f_g's optimiser; required when ``use_tg``.
        decoder_loss_function: f_g's objective, :class:`~dussss_monai.losses.GroundingDecoderLoss`; required when
            ``use_tg``. With its ``grounding_weight > 0`` the labeled images are grounded too (``L_ground``).
        use_merged: include ``L_merged`` (ablation switch of the paper).
        use_text_loss: include ``L_text``.
        use_tg: train f_g in stage 2 (off: f_g stays as loaded and the refiner runs in eval mode).
        text_key: key of the sentences in the batches.
        kwargs: the other arguments of :class:`~dussss_monai.engines.MeanTeacherTrainer`.

    Raises:
        ConfigError: when both ``use_merged`` and ``use_text_loss`` are off, or ``use_tg`` has no optimiser or no
            loss.
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
        decoder_loss_function: GroundingDecoderLoss | None = None,
        use_merged: bool = True,
        use_text_loss: bool = True,
        use_tg: bool = True,
        text_key: str = "text",
        **kwargs: Any,
    ) -> None:
        if not (use_merged or use_text_loss):
            raise ConfigError("DuSSSTrainer needs use_merged or use_text_loss (or both) switched on")
        if use_tg and (decoder_optimizer is None or decoder_loss_function is None):
            raise ConfigError(
                "DuSSSTrainer: use_tg=True needs a decoder_optimizer and a decoder_loss_function "
                "(or use_tg=False to keep f_g fixed)"
            )
        super().__init__(
            device, max_epochs, train_data_loader, network, optimizer, loss_function, unlabeled_data_loader, **kwargs
        )
        self.refiner = refiner.to(device).train(bool(use_tg))
        self.grounding_decoder: torch.nn.Module = refiner.grounding_decoder
        self.use_merged = bool(use_merged)
        self.use_text_loss = bool(use_text_loss)
        self.use_tg = bool(use_tg)
        self.decoder_optimizer = decoder_optimizer if self.use_tg else None
        self.decoder_loss_function = decoder_loss_function if self.use_tg else None
        self.text_key = text_key
        if self.use_tg:
            broadcast_from_rank0(list(self.grounding_decoder.parameters()) + list(self.grounding_decoder.buffers()))

    def _texts(self, data: Any, what: str) -> list[str]:
        texts = data.get(self.text_key) if isinstance(data, Mapping) else None
        if texts is None:
            raise DuSSSError(f"DuSSS needs the sentence of every {what} image in the batch (key {self.text_key!r})")
        return text_list(texts)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.state.device, non_blocking=self.non_blocking)

    def _grounding_targets(self, labeled: LabeledBatch) -> GroundingTargets | None:
        """f_g's supervision: the whole labeled images and masks and the patches' boxes when the batch carries a
        grounding context (patch training; f_g learns on the regions of the patches, as it decodes them for the
        unlabeled images), else the batch itself; ``None`` when f_g is not supervised."""
        if self.decoder_loss_function is None or not self.decoder_loss_function.supervised:
            return None
        texts = self._texts(labeled.data, "labeled")
        data = labeled.data
        if isinstance(data, Mapping) and all(k in data for k in (CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY, CROP_BOX_KEY)):
            images, masks, boxes = (
                self._to_device(data[k]) for k in (CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY, CROP_BOX_KEY)
            )
            return GroundingTargets(images, masks, texts, boxes)
        return GroundingTargets(labeled.images, labeled.masks, texts)

    def pseudo_labels(
        self, unlabeled: UnlabeledBatch, teacher_logits: torch.Tensor, labeled: LabeledBatch
    ) -> PseudoLabels:
        """The text-refined targets (``merged``, ``text``: the terms switched on) and, when f_g is trained, its loss."""
        data = unlabeled.data
        images, boxes = unlabeled.images, None
        if isinstance(data, Mapping) and CONTEXT_IMAGE_KEY in data and CROP_BOX_KEY in data:
            images, boxes = self._to_device(data[CONTEXT_IMAGE_KEY]), self._to_device(data[CROP_BOX_KEY])
        self.refiner.train(self.use_tg)
        refinement = self.refiner(
            images, self._texts(data, "unlabeled"), teacher_logits, boxes, self._grounding_targets(labeled)
        )
        targets = {}
        if self.use_merged:
            targets["merged"] = refinement.merged
        if self.use_text_loss:
            targets["text"] = refinement.text_mask
        if self.decoder_loss_function is None:
            return PseudoLabels(targets)
        grounding = refinement.grounding
        decoder_loss, terms = self.decoder_loss_function(
            grounding.pixel_features,
            grounding.feature_logits,
            grounding.text_embed,
            refinement.texts,
            refinement.labeled_logits,
            refinement.labeled_masks,
        )
        return PseudoLabels(targets, losses={"decoder": decoder_loss}, terms=terms)

    def optimizers(self) -> list[Optimizer]:
        """The student's optimiser and, when f_g is trained, f_g's."""
        return super().optimizers() + ([self.decoder_optimizer] if self.decoder_optimizer is not None else [])

    def before_optimizer_step(self) -> None:
        """Average f_g's gradients across ranks (f_g is not wrapped in DistributedDataParallel)."""
        if self.decoder_optimizer is not None:
            average_gradients(self.grounding_decoder)
