"""Stage-2 trainer of DuSSS: VLM-guided mean teacher (method.md, "Stage 2").

One iteration draws a labeled batch (Ignite's data stream, as in MONAI's ``SupervisedTrainer``) and an
unlabeled batch (the trainer's own stream, restarted when exhausted) and computes

- ``L_sup    = l(student(x_l), y_l)``
- ``L_merged = l(student(x_u), sigmoid(teacher_logits(x_u) + text_logits(x_u)))``   (logits summed)
- ``L_text   = l(student(x_u), sigmoid(text_logits(x_u)))``
- ``L_semi   = (L_merged + L_text) / 2`` (the one that is switched on, if only one is)
- ``total    = L_sup + w(t) * L_semi``; the student's optimiser steps on ``total``;
- ``L_tg`` (text-guided loss) trains the grounding decoder f_g with its own optimiser;
- the teacher follows the student by EMA after the student's step.

The pseudo labels are detached, so the student's losses never reach f_g and L_tg never reaches the student.
``method="mean_teacher"`` uses ``L_semi = l(student(x_u), sigmoid(teacher_logits(x_u)))`` (the same ``l``,
soft targets, instead of the MSE of Tarvainen & Valpola, so that the methods differ only in their targets);
``method="supervised"`` uses ``L_sup`` alone.

Multi-GPU (``torch.distributed`` initialised, ``network`` wrapped in ``DistributedDataParallel``): the teacher
is a copy of ``network.module`` (never of the wrapper) and follows it by EMA; the student's two forward passes
per iteration (labeled, unlabeled) before one backward are fine for DDP, which averages the gradient of the
total loss across ranks. f_g is called through the refiner, not through DDP, so the trainer itself keeps it
in step: f_g's parameters are broadcast from rank 0 at construction and its gradients averaged across ranks
(all-reduce) before its optimiser steps. The teacher's floating-point buffers (BatchNorm statistics, which
each rank updates from its own batches) are broadcast from rank 0 after every EMA update, as DDP does for
the student's buffers, so that every rank holds the same teacher.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.inferers import Inferer
from monai.transforms import Transform
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from dussss_monai.data.transforms import CONTEXT_IMAGE_KEY, CONTEXT_LABEL_KEY, CROP_BOX_KEY
from dussss_monai.engines.cutmix import BatchCutMix, draw_cutmix
from dussss_monai.engines.ema import ema_decay as teacher_ema_decay
from dussss_monai.engines.schedules import ConsistencyWeight
from dussss_monai.errors import ConfigError, DuSSSError
from dussss_monai.handlers.nonfinite import check_finite_losses
from dussss_monai.losses.text_guided import TextGuidedLoss
from dussss_monai.utils.ema import ema_update
from dussss_monai.refiner import GroundingResult

if TYPE_CHECKING:
    from ignite.engine import EventEnum
    from ignite.metrics import Metric

    from dussss_monai.refiner import VLMPseudoLabelRefiner

__all__ = ["SemiSupervisedTrainer", "METHODS", "default_epoch_length", "unwrap_network"]

METHODS = ("dussss", "mean_teacher", "supervised")


def default_epoch_length(labeled_loader: Any, unlabeled_loader: Any = None) -> int | None:
    """``max(len(labeled_loader), len(unlabeled_loader))``: one epoch visits every labeled batch and every
    unlabeled batch (``ceil(N_u / batch_u)`` iterations without ``drop_last``) at least once.

    Returns:
        ``None`` when a loader has no length (iterable datasets).
    """
    lengths = [_len_or_none(labeled_loader)]
    if unlabeled_loader is not None:
        lengths.append(_len_or_none(unlabeled_loader))
    if any(n is None for n in lengths):
        return None
    return max(int(n) for n in lengths)  # type: ignore[arg-type]


class SemiSupervisedTrainer(SupervisedTrainer):
    """Stage-2 trainer: DuSSS (VLM-refined mean teacher), plain mean teacher, or supervised only.

    A :class:`monai.engines.SupervisedTrainer` whose ``_iteration`` is replaced, so MONAI/Ignite handlers
    (``StatsHandler``, ``ValidationHandler``, ``CheckpointSaver``, ``LrScheduleHandler``, train metrics ...)
    work unchanged. Train metrics see ``pred``/``label`` of the labeled batch.

    For checkpoints, the engine exposes ``teacher``, ``grounding_decoder`` and ``decoder_optimizer``
    (``None`` where the method has none); a ``CheckpointSaver`` with ``save_dict={"network": net,
    "teacher": trainer.teacher, "grounding_decoder": trainer.grounding_decoder, "optimizer": opt,
    "decoder_optimizer": trainer.decoder_optimizer, "trainer": trainer}`` holds the whole training state, and
    :class:`~dussss_monai.handlers.SafeCheckpointLoader` with the same dict resumes it (iteration count, hence
    the EMA and ramp-up schedules, teacher and optimiser states). On resume the unlabeled stream starts a new
    pass (its pass number is derived from the iteration count, for ``DistributedSampler.set_epoch``).

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: the labeled data (dicts with ``image`` and ``label``).
        network: the student (output: one channel of logits).
        optimizer: the student's optimiser.
        loss_function: the pixel-wise loss ``l(logits, target)`` with soft targets, e.g.
            :class:`~dussss_monai.losses.SegmentationLoss`.
        unlabeled_data_loader: the unlabeled data (dicts with ``image`` and, for DuSSS, ``text``); required
            unless ``method="supervised"``. Iterated by the trainer itself and restarted when exhausted, so
            each unlabeled image is used once within ``len(unlabeled_data_loader)`` iterations.
        method: ``"dussss"``, ``"mean_teacher"`` or ``"supervised"``.
        teacher: the teacher network; default a deep copy of ``network``. A given teacher is overwritten
            with the student's weights at construction: the teacher always starts as an exact copy of the
            student (method.md; the research code initialised it independently). Its parameters get
            ``requires_grad=False``; it runs in eval mode.
        ema_decay: upper bound of the teacher's EMA factor. After the student's step ``s`` (0-based: the
            engine's iteration minus one) the teacher is updated with ``alpha = min(1 - 1/(s+1), ema_decay)``
            (:func:`dussss_monai.engines.ema.ema_decay`, the research code's schedule; the paper gives no
            alpha): the first update copies the student, the teacher then averages all student states seen
            until ``1 - 1/(s+1)`` reaches ``ema_decay``. Floating-point buffers (BatchNorm statistics) are
            averaged the same way.
        consistency_weight: ``w(t)``: a number, or a callable on the 0-based iteration count such as
            :class:`~dussss_monai.engines.schedules.ConsistencyWeight`.
        refiner: :class:`~dussss_monai.refiner.VLMPseudoLabelRefiner` (required for ``"dussss"``).
        decoder_optimizer: optimiser of the refiner's grounding decoder f_g (required when ``use_tg``).
        text_guided_loss: L_tg; default :class:`~dussss_monai.losses.TextGuidedLoss`.
        use_text_loss: include ``L_text`` in ``L_semi``.
        use_merged: include ``L_merged`` in ``L_semi``.
        use_tg: train f_g with ``L_tg`` (off: f_g stays as loaded).
        pseudo_label_threshold: ``None`` trains the student on the soft pseudo labels (probabilities);
            a value ``p`` in (0, 1) turns every pseudo label (mean teacher's, merged and text mask) into hard
            ``{0, 1}`` labels at ``p``. The paper names no threshold; the bundles' choice is documented there.
        ignore_uncertain_pixels: with ``pseudo_label_threshold`` ``p``, leave out of each consistency term the
            pixels whose pseudo-label probability lies in ``[1 - p, p]`` (confidence masking, as FixMatch):
            only confident foreground (``> p``) and confident background (``< 1 - p``) pixels teach the
            student, instead of every uncertain pixel being taught "background". The consistency loss must
            accept a ``mask`` keyword (:class:`~dussss_monai.losses.SegmentationLoss` does).
        grounding_supervision_weight: weight ``beta`` of an extra loss of f_g on the LABELED batch,
            ``L_ground = l(text_logits(x_l, text_l), y_l)``, added to ``L_tg`` (f_g's own objective; the student
            is not involved). ``0`` (default) is the paper: f_g learns from ``L_tg`` alone. Our measurements
            on the demo data (docs/benchmarks.md) found L_tg alone gives text masks too poor to help; the
            bundles document the value they use. Only with ``use_tg``.
        text_guided_weight: weight ``gamma`` of ``L_tg`` in f_g's objective ``gamma * L_tg + beta * L_ground``.
            ``1`` (default) is the paper. ``L_tg`` alone does not penalise the size of the text mask (pooling a
            larger mask aligns just as well with its sentence), and on the demo data a weight of 1 next to
            ``L_ground`` grew the masks to a third of the image; the bundles document the value they use.
        student_noise_std: standard deviation of Gaussian noise added to the STUDENT's copy of each unlabeled
            image (the teacher and the VLM see the clean image), the input perturbation of the original mean
            teacher (Tarvainen & Valpola, 2017); ``0`` (default) feeds both the same image. The paper is silent.
        cutmix: CutMix of the STUDENT's unlabeled batch (:func:`dussss_monai.engines.cutmix.draw_cutmix`; French
            et al., BMVC 2020): each unlabeled image gets a box (a quarter to half of its area) pasted from another
            image of the batch. The teacher and the VLM see the clean images; every pseudo label (teacher, merged,
            text mask) is computed on them and mixed with the same boxes, so the student must predict, for each
            pixel, what the teacher predicts for it in its own image. Off by default (the paper has no such
            perturbation); batches of one image are not mixed. Its draws follow torch's seed.
        consistency_loss_function: the loss of the unlabeled terms (``L_merged``, ``L_text`` and the mean
            teacher's consistency) against their pseudo labels; default ``loss_function``. The paper uses one
            pixel-wise loss for every term. A class-balanced loss is not minimised by the target itself (it
            favours the rarer class), so fed its own teacher's outputs it drifts; a proper loss such as soft
            cross-entropy (``SegmentationLoss(dice_weight=0, class_balanced=False)``) is minimised by the
            pseudo label. The bundles document their choice and its measured effect.
        epoch_length: iterations per epoch; default ``max(len(train_data_loader), len(unlabeled_data_loader))``
            (``len(train_data_loader)`` for supervised). The labeled stream is restarted by Ignite when shorter.
        non_blocking: see ``SupervisedTrainer``.
        prepare_batch: parses the labeled batch, see ``SupervisedTrainer``.
        image_key: key of the image in unlabeled batches.
        text_key: key of the text in unlabeled batches.
        iteration_update, inferer, postprocessing, key_train_metric, additional_metrics, metric_cmp_fn,
        train_handlers, event_names, event_to_attr, decollate, optim_set_to_none, to_kwargs, amp_kwargs:
            as in ``SupervisedTrainer``.
        amp: mixed precision with a ``GradScaler``; only on CUDA (ignored with a warning on other devices).

    Raises:
        ConfigError: on an unknown method, a missing unlabeled loader / refiner / decoder optimiser, or
            DuSSS with both ``use_merged`` and ``use_text_loss`` off.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        unlabeled_data_loader: Iterable | DataLoader | None = None,
        method: str = "dussss",
        teacher: torch.nn.Module | None = None,
        ema_decay: float = 0.99,
        consistency_weight: float | Callable[[int], float] = 1.0,
        refiner: VLMPseudoLabelRefiner | None = None,
        decoder_optimizer: Optimizer | None = None,
        text_guided_loss: Callable | None = None,
        use_text_loss: bool = True,
        use_merged: bool = True,
        use_tg: bool = True,
        pseudo_label_threshold: float | None = None,
        ignore_uncertain_pixels: bool = False,
        grounding_supervision_weight: float = 0.0,
        text_guided_weight: float = 1.0,
        student_noise_std: float = 0.0,
        cutmix: bool = False,
        consistency_loss_function: Callable | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        image_key: str = "image",
        text_key: str = "text",
        iteration_update: Callable | None = None,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        method = str(method).lower()
        if method not in METHODS:
            raise ConfigError(f"SemiSupervisedTrainer: method must be one of {METHODS}, got {method!r}")
        if not 0.0 <= float(ema_decay) <= 1.0:
            raise ConfigError(f"SemiSupervisedTrainer: ema_decay must be in [0, 1], got {ema_decay}")
        if method != "supervised" and unlabeled_data_loader is None:
            raise ConfigError(f"SemiSupervisedTrainer: method {method!r} needs an unlabeled_data_loader")
        if method == "supervised" and unlabeled_data_loader is not None:
            warnings.warn("SemiSupervisedTrainer: method 'supervised' ignores the unlabeled_data_loader")
            unlabeled_data_loader = None
        if method == "dussss":
            if refiner is None:
                raise ConfigError("SemiSupervisedTrainer: method 'dussss' needs a refiner (VLMPseudoLabelRefiner)")
            if not (use_merged or use_text_loss):
                raise ConfigError("SemiSupervisedTrainer: method 'dussss' needs use_merged or use_text_loss")
            if use_tg and decoder_optimizer is None:
                raise ConfigError(
                    "SemiSupervisedTrainer: use_tg=True needs a decoder_optimizer for the grounding decoder "
                    "(or set use_tg=False to keep it fixed)"
                )
        if epoch_length is None:
            epoch_length = default_epoch_length(train_data_loader, unlabeled_data_loader)
        dev = device if isinstance(device, torch.device) else torch.device(device)
        if amp and dev.type != "cuda":
            warnings.warn(f"SemiSupervisedTrainer: amp is only used on CUDA; disabled on {dev}")
            amp = False

        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.method = method
        self.unlabeled_data_loader = unlabeled_data_loader
        self.ema_decay = float(ema_decay)
        self.consistency_weight: Callable[[int], float] = (
            consistency_weight if callable(consistency_weight) else ConsistencyWeight(float(consistency_weight), 0)
        )
        self.use_text_loss = bool(use_text_loss)
        self.use_merged = bool(use_merged)
        self.use_tg = bool(use_tg) and method == "dussss"
        if pseudo_label_threshold is not None and not 0.0 < float(pseudo_label_threshold) < 1.0:
            raise ConfigError(f"pseudo_label_threshold must be in (0, 1) or None, got {pseudo_label_threshold}")
        self.pseudo_label_threshold = None if pseudo_label_threshold is None else float(pseudo_label_threshold)
        if grounding_supervision_weight < 0:
            raise ConfigError(f"grounding_supervision_weight must be >= 0, got {grounding_supervision_weight}")
        self.grounding_supervision_weight = float(grounding_supervision_weight) if self.use_tg else 0.0
        if text_guided_weight < 0:
            raise ConfigError(f"text_guided_weight must be >= 0, got {text_guided_weight}")
        if self.use_tg and text_guided_weight == 0 and self.grounding_supervision_weight == 0:
            raise ConfigError(
                "text_guided_weight and grounding_supervision_weight are both 0: f_g would have no objective "
                "(set use_tg to false to keep f_g as loaded)"
            )
        self.text_guided_weight = float(text_guided_weight)
        if student_noise_std < 0:
            raise ConfigError(f"student_noise_std must be >= 0, got {student_noise_std}")
        self.student_noise_std = float(student_noise_std)
        self.cutmix = bool(cutmix)
        self.consistency_loss_function: Callable = (
            consistency_loss_function if consistency_loss_function is not None else loss_function
        )
        self.ignore_uncertain_pixels = bool(ignore_uncertain_pixels)
        if self.ignore_uncertain_pixels:
            if self.pseudo_label_threshold is None or self.pseudo_label_threshold <= 0.5:
                raise ConfigError(
                    "ignore_uncertain_pixels needs a pseudo_label_threshold above 0.5 (the confidence a pixel must "
                    f"reach), got {pseudo_label_threshold}"
                )
            if not _accepts_keyword(self.consistency_loss_function, "mask"):
                raise ConfigError(
                    "ignore_uncertain_pixels needs a consistency loss that takes a `mask` keyword "
                    f"(e.g. dussss_monai.losses.SegmentationLoss); got {type(self.consistency_loss_function).__name__}"
                )
        self.image_key = image_key
        self.text_key = text_key

        self.teacher: torch.nn.Module | None = None
        if method != "supervised":
            student = unwrap_network(network)  # never copy a DistributedDataParallel wrapper
            if teacher is None:
                teacher = copy.deepcopy(student)
            else:
                teacher.load_state_dict(student.state_dict())
            teacher.requires_grad_(False)
            self.teacher = teacher
        self.refiner = refiner if method == "dussss" else None
        self.grounding_decoder: torch.nn.Module | None = None if self.refiner is None else self.refiner.grounding_decoder
        self.decoder_optimizer = decoder_optimizer if self.use_tg else None
        self.text_guided_loss = text_guided_loss if text_guided_loss is not None else TextGuidedLoss()
        if self.use_tg and self.grounding_decoder is not None:
            _broadcast_from_rank0(list(self.grounding_decoder.parameters()) + list(self.grounding_decoder.buffers()))

        self._unlabeled_iter: Iterator | None = None
        self._unlabeled_pass = 0
        self.state.unlabeled_batch = None  # the current unlabeled batch, for handlers

    def checkpoint_objects(self, **extra: Any) -> dict[str, Any]:
        """Everything a checkpoint needs to resume this training, for ``CheckpointSaver`` / ``SafeCheckpointLoader``.

        Args:
            extra: more objects with ``state_dict`` (e.g. ``lr_scheduler=...``); ``None`` values are skipped.

        Returns:
            ``{"network", "optimizer", "trainer"}`` plus ``"teacher"``, ``"grounding_decoder"`` and
            ``"decoder_optimizer"`` where the method has them, plus ``extra``.
        """
        objects: dict[str, Any] = {"network": self.network, "optimizer": self.optimizer, "trainer": self}
        for key in ("teacher", "grounding_decoder", "decoder_optimizer"):
            if getattr(self, key) is not None:
                objects[key] = getattr(self, key)
        objects.update({k: v for k, v in extra.items() if v is not None})
        return objects

    # ------------------------------------------------------------------ unlabeled stream
    def _start_unlabeled_pass(self) -> None:
        loader = self.unlabeled_data_loader
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self._unlabeled_pass)
        self._unlabeled_iter = iter(loader)  # type: ignore[arg-type]

    def next_unlabeled_batch(self) -> Any:
        """Next unlabeled batch; a new pass over the unlabeled data starts when the previous one ends.

        Raises:
            DuSSSError: when the unlabeled loader yields nothing.
        """
        if self._unlabeled_iter is None:
            n = _len_or_none(self.unlabeled_data_loader)
            # after a resume, continue the pass numbering (DistributedSampler shuffles by pass number)
            self._unlabeled_pass = max(self.state.iteration - 1, 0) // n if n else 0
            self._start_unlabeled_pass()
        try:
            return next(self._unlabeled_iter)  # type: ignore[arg-type]
        except StopIteration:
            self._unlabeled_pass += 1
            self._start_unlabeled_pass()
            try:
                return next(self._unlabeled_iter)  # type: ignore[arg-type]
            except StopIteration:
                raise DuSSSError("SemiSupervisedTrainer: the unlabeled data loader is empty") from None

    def _unlabeled_inputs(self, batch: Any) -> tuple[torch.Tensor, list[str] | None]:
        if not isinstance(batch, dict) or self.image_key not in batch:
            raise DuSSSError(f"SemiSupervisedTrainer: unlabeled batches must be dicts with key {self.image_key!r}")
        images = batch[self.image_key]
        images = images.to(self.state.device, non_blocking=self.non_blocking, **self.to_kwargs)
        texts = batch.get(self.text_key)
        if self.method == "dussss":
            if texts is None:
                raise DuSSSError(
                    f"SemiSupervisedTrainer: method 'dussss' needs the text of every unlabeled image (key {self.text_key!r})"
                )
            texts = _as_text_list(texts)
        return images, texts

    # ------------------------------------------------------------------ one iteration
    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One stage-2 iteration (method.md, Stage 2, Losses).

        Returns ``engine.state.output``: ``image``, ``label``, ``pred`` (labeled batch), ``loss`` (total),
        ``loss_sup``, ``weight`` (``w(t)``), and for the semi-supervised methods ``loss_semi``, with DuSSS also
        ``loss_merged`` / ``loss_text`` / ``loss_tg`` (and ``loss_ground``) for the terms switched on, and the
        foreground share of each consistency target, ``fg_fraction_teacher`` (mean teacher) or
        ``fg_fraction_merged`` / ``fg_fraction_text`` (DuSSS). The unlabeled batch is left in
        ``engine.state.unlabeled_batch``.

        Raises:
            ValueError: when ``batchdata`` is None.
            DuSSSError: when a loss is NaN/Inf (before any optimiser step, naming the iteration).
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        step = engine.state.iteration - 1
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        terms: dict[str, torch.Tensor] = {}

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.decoder_optimizer is not None:
            engine.decoder_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        weight = float(engine.consistency_weight(step)) if engine.method != "supervised" else 0.0

        use_amp = engine.amp and engine.scaler is not None
        with torch.autocast("cuda", **engine.amp_kwargs) if use_amp else nullcontext():
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms["loss_sup"] = engine.loss_function(pred, targets).mean()
            loss = terms["loss_sup"]
            loss_tg: torch.Tensor | None = None
            if engine.method != "supervised":
                labeled = None
                if engine.use_tg and engine.grounding_supervision_weight > 0:
                    labeled = engine._labeled_grounding_inputs(batchdata, inputs, targets)
                loss_semi, loss_tg = engine._semi_supervised_terms(terms, labeled)
                terms["loss_semi"] = loss_semi
                loss = loss + weight * loss_semi
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        check_finite_losses({"loss": loss, **terms}, engine.state.iteration, engine.state.epoch)

        if use_amp:
            engine.scaler.scale(loss).backward()  # type: ignore[union-attr]
            if loss_tg is not None:
                engine.scaler.scale(loss_tg).backward()  # type: ignore[union-attr]
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if loss_tg is not None:
                _average_gradients(engine.grounding_decoder)  # type: ignore[arg-type]
            engine.scaler.step(engine.optimizer)  # type: ignore[union-attr]
            if loss_tg is not None:
                engine.scaler.step(engine.decoder_optimizer)  # type: ignore[union-attr]
            engine.scaler.update()  # type: ignore[union-attr]
        else:
            loss.backward()
            if loss_tg is not None:
                loss_tg.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if loss_tg is not None:
                _average_gradients(engine.grounding_decoder)  # type: ignore[arg-type]
            engine.optimizer.step()
            if loss_tg is not None:
                engine.decoder_optimizer.step()  # type: ignore[union-attr]
        if engine.teacher is not None:
            ema_update(engine.teacher, unwrap_network(engine.network), teacher_ema_decay(step, engine.ema_decay))
            _broadcast_from_rank0([b for b in engine.teacher.buffers() if torch.is_floating_point(b)])

        engine.state.output.update({k: v.detach() for k, v in terms.items()})
        engine.state.output["weight"] = weight
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _labeled_grounding_inputs(
        self, batchdata: Any, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """``(images, masks, sentences)`` for f_g's supervision: the whole images and masks (``vlm_image`` /
        ``vlm_label``) when the batch carries a grounding context (patch training), else the batch itself."""
        texts = self._labeled_texts(batchdata)
        if isinstance(batchdata, dict) and CONTEXT_IMAGE_KEY in batchdata and CONTEXT_LABEL_KEY in batchdata:
            kw = {"device": self.state.device, "non_blocking": self.non_blocking}
            return batchdata[CONTEXT_IMAGE_KEY].to(**kw), batchdata[CONTEXT_LABEL_KEY].to(**kw), texts
        return inputs, targets, texts

    def _grounding_context(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(whole images, crop boxes)`` of an unlabeled patch batch, or ``None`` (no grounding context)."""
        if not (isinstance(batch, dict) and CONTEXT_IMAGE_KEY in batch and CROP_BOX_KEY in batch):
            return None
        kw = {"device": self.state.device, "non_blocking": self.non_blocking}
        return batch[CONTEXT_IMAGE_KEY].to(**kw), batch[CROP_BOX_KEY].to(**kw)

    def _labeled_texts(self, batchdata: Any) -> list[str]:
        """The sentences of the labeled batch (needed by the grounding supervision of f_g)."""
        texts = batchdata.get(self.text_key) if isinstance(batchdata, dict) else None
        if texts is None:
            raise ConfigError(f"grounding supervision needs the sentences of the labeled images under {self.text_key!r}")
        return _as_text_list(texts)

    def _target(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Pseudo-label target: the soft probabilities, or hard ``{0, 1}`` labels at ``pseudo_label_threshold``."""
        if self.pseudo_label_threshold is None:
            return probabilities
        return (probabilities > self.pseudo_label_threshold).to(probabilities.dtype)

    def _consistency(self, student_logits: torch.Tensor, probabilities: torch.Tensor, name: str | None = None) -> torch.Tensor:
        """One consistency term: the consistency loss of the student against a pseudo label.

        With ``ignore_uncertain_pixels`` only the confident pixels (probability above the threshold ``p`` or
        below ``1 - p``) count. With a ``name``, the share of the target that is foreground (the mean of the hard
        or soft target) is put in ``state.output`` as ``fg_fraction_<name>``: a target that is empty, or that
        grows, is visible in the training log.
        """
        target = self._target(probabilities)
        if name is not None and isinstance(self.state.output, dict):
            self.state.output[f"fg_fraction_{name}"] = target.detach().float().mean()
        if not self.ignore_uncertain_pixels:
            return self.consistency_loss_function(student_logits, target).mean()
        p = self.pseudo_label_threshold
        assert p is not None
        confident = ((probabilities > p) | (probabilities < 1.0 - p)).to(student_logits.dtype)
        return self.consistency_loss_function(student_logits, target, mask=confident).mean()

    def _draw_cutmix(self, images: torch.Tensor) -> BatchCutMix | None:
        """This unlabeled batch's CutMix draw, or ``None`` when CutMix is off or the batch holds one image."""
        if not self.cutmix or images.shape[0] < 2:
            return None
        return draw_cutmix(images.shape[0], images.shape[2:], device=images.device)

    def _semi_supervised_terms(
        self, terms: dict[str, torch.Tensor], labeled: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Compute ``L_semi`` on the next unlabeled batch, and for DuSSS f_g's objective; fill ``terms``.

        f_g's objective is ``text_guided_weight * L_tg`` on the unlabeled batch, plus, when ``labeled`` =
        ``(images, masks, sentences)`` is given, ``grounding_supervision_weight * L_ground`` with ``L_ground =
        l(text logits of the labeled images, their masks)``. The labeled and unlabeled images then go through
        the frozen VLM and f_g in ONE batched forward (both are per-sample: eval-mode VLM, instance-norm f_g),
        which is what keeps the supervision cheap on a GPU. Gradients of ``L_ground`` reach f_g only.
        """
        batch_u = self.next_unlabeled_batch()
        self.state.unlabeled_batch = batch_u
        x_u, texts = self._unlabeled_inputs(batch_u)
        cutmix = self._draw_cutmix(x_u)
        x_student = x_u if cutmix is None else cutmix.apply(x_u)
        if self.student_noise_std > 0:
            x_student = x_student + self.student_noise_std * torch.randn_like(x_student)
        student_u = self.inferer(x_student, self.network)
        teacher = self.teacher
        assert teacher is not None
        teacher.eval()
        with torch.no_grad():
            teacher_logits = self.inferer(x_u, teacher).float()

        def mixed(probabilities: torch.Tensor) -> torch.Tensor:
            return probabilities if cutmix is None else cutmix.apply(probabilities)

        if self.method == "mean_teacher":
            return self._consistency(student_u, mixed(torch.sigmoid(teacher_logits)), "teacher"), None

        refiner = self.refiner
        assert refiner is not None and texts is not None
        refiner.train(self.use_tg)
        # Patch training: ground the sentence on the whole image it describes, then crop to the patch.
        context = self._grounding_context(batch_u)
        g_u = x_u if context is None else context[0]
        grounding_l: GroundingResult | None = None
        with torch.set_grad_enabled(self.use_tg):
            if labeled is None:
                grounding = refiner.ground(g_u, texts)
            elif labeled[0].shape[1:] == g_u.shape[1:]:
                n_u = g_u.shape[0]
                both = refiner.ground(torch.cat([g_u, labeled[0].to(g_u.dtype)]), list(texts) + list(labeled[2]))
                grounding = GroundingResult(*(t[:n_u] for t in both))
                grounding_l = GroundingResult(*(t[n_u:] for t in both))
            else:  # labeled and unlabeled images of different sizes: two forwards
                grounding = refiner.ground(g_u, texts)
                grounding_l = refiner.ground(labeled[0], labeled[2])
        text_logits_u = grounding.text_logits
        if context is not None:
            text_logits_u = refiner.crop_to_boxes(grounding.feature_logits.detach(), context[1], x_u.shape[-2:])
        # Detached targets: the student's losses never reach f_g.
        pseudo = refiner.merge(teacher_logits, text_logits_u)
        semi = []
        if self.use_merged:
            terms["loss_merged"] = self._consistency(student_u, mixed(pseudo.merged), "merged")
            semi.append(terms["loss_merged"])
        if self.use_text_loss:
            terms["loss_text"] = self._consistency(student_u, mixed(pseudo.text_mask), "text")
            semi.append(terms["loss_text"])
        loss_tg = None
        if self.use_tg:
            # Only f_g's output is in this graph (the VLM is frozen, the student is not involved).
            terms["loss_tg"] = self.text_guided_loss(
                grounding.pixel_features, grounding.feature_logits, grounding.text_embed, texts
            )
            loss_tg = self.text_guided_weight * terms["loss_tg"]
            if grounding_l is not None and labeled is not None:
                terms["loss_ground"] = self.loss_function(grounding_l.text_logits, labeled[1]).mean()
                loss_tg = loss_tg + self.grounding_supervision_weight * terms["loss_ground"]
        return torch.stack(semi).mean(), loss_tg


def _accepts_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` (a function or an ``nn.Module``, whose ``forward`` is inspected) takes keyword ``name``."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _as_text_list(texts: Any) -> list[str]:
    """The sentences of a batch as a list of strings (a collated batch of one may hold a bare string)."""
    return [texts] if isinstance(texts, str) else [str(t) for t in texts]


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper; other modules unchanged."""
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _broadcast_from_rank0(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with rank 0's values (one coalesced broadcast); no-op in one process."""
    if _world_size() == 1 or not tensors:
        return
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
            offset += n


def _average_gradients(module: torch.nn.Module) -> None:
    """All-reduce (mean) the gradients of ``module``'s trainable parameters across ranks; no-op in one process.

    A parameter without a gradient on this rank contributes zeros, so every rank joins the same all-reduce.
    """
    world = _world_size()
    if world == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def _len_or_none(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None

