"""Stage 2 without text: the mean teacher (Tarvainen & Valpola, NeurIPS 2017), ``docs/method.md``, "Student
and teacher" and "Pseudo labels and losses".

One iteration takes a labeled batch (Ignite's data, as in MONAI's ``SupervisedTrainer``) and an unlabeled batch
(:class:`~dussss_monai.engines.unlabeled_stream.UnlabeledStream`) and computes

- ``L_sup  = l(student(x_l), y_l)``
- ``L_semi = mean over the pseudo labels p of l_c(student(view(x_u)), view(p))``
- with a ``feature_perturbation`` (UniMatch's third stream), ``L_semi`` is the mean of that and of the same terms
  for the student's feature-perturbed prediction of the teacher's view
- ``total  = L_sup + w(t) * L_semi``; the student's optimiser steps on ``total``, then the teacher follows the
  student by EMA.

Two hooks are meant to be overridden, and each returns what it computes: :meth:`MeanTeacherTrainer.student_view`
(what the student sees of the unlabeled batch, and how each pseudo label is carried over to it) and
:meth:`MeanTeacherTrainer.pseudo_labels` (a :class:`~dussss_monai.engines.PseudoLabels`: the targets computed from
the teacher's output, and the losses of any other network trained in the same step;
:class:`~dussss_monai.engines.DuSSSTrainer` refines the targets with the text and returns f_g's loss). A subclass
that trains another network adds its optimiser through :meth:`MeanTeacherTrainer.optimizers`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from dussss_monai.engines.batches import LabeledBatch, PseudoLabels, StudentView, UnlabeledBatch
from dussss_monai.engines.distributed import broadcast_from_rank0, unwrap_network
from dussss_monai.engines.schedules import ConsistencyWeight
from dussss_monai.engines.schedules import ema_decay as teacher_ema_decay
from dussss_monai.engines.unlabeled_stream import UnlabeledStream, loader_length
from dussss_monai.errors import ConfigError, DuSSSError
from dussss_monai.utils.ema import ema_update
from dussss_monai.utils.finite import check_finite_losses

__all__ = ["MeanTeacherTrainer"]


def _accepts_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` (a function, or an ``nn.Module`` whose ``forward`` is inspected) takes keyword ``name``."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class MeanTeacherTrainer(SupervisedTrainer):
    """Mean-teacher training on a labeled and an unlabeled stream, as a MONAI ``SupervisedTrainer``.

    MONAI/Ignite handlers work unchanged; train metrics see ``pred``/``label`` of the labeled batch. The engine's
    ``teacher`` belongs in checkpoints next to the student (``dussss_monai.bundle.checkpoint_objects``).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function: as in ``SupervisedTrainer``;
            ``loss_function`` is the pixel loss ``l(logits, target)`` of ``L_sup``.
        unlabeled_data_loader: batches of dicts with ``image_key`` (and ``student_image_key`` when named).
        teacher: the teacher network; default a deep copy of the student. A given teacher is overwritten with the
            student's weights: the teacher always starts as an exact copy of the student. It gets
            ``requires_grad=False`` and runs in eval mode.
        ema_decay: upper bound ``alpha`` of the EMA factor ``min(1 - 1/(s+1), alpha)`` after the student's step
            ``s`` (0-based); floating-point buffers are averaged the same way.
        consistency_weight: ``w(t)``: a number, or a callable on the 0-based iteration such as
            :class:`~dussss_monai.engines.schedules.ConsistencyWeight`.
        consistency_loss_function: ``l_c(logits, target)`` of the unlabeled terms; default ``loss_function``.
        pseudo_label_threshold: ``None`` keeps the pseudo labels soft; ``p`` in (0, 1) makes them hard at ``p``.
        ignore_uncertain_pixels: with a threshold ``p > 0.5``, leave out the pixels whose pseudo label lies in
            ``[1 - p, p]`` (confidence masking as in FixMatch); ``l_c`` must take a ``mask`` keyword.
        student_perturbation: ``(unlabeled, labeled) -> StudentView``, a perturbation of the student's view that
            carries every pseudo label along, e.g. :class:`~dussss_monai.engines.CutMix` (French et al., BMVC 2020)
            or :class:`~dussss_monai.engines.CopyPaste` (BCP, Bai et al., CVPR 2023); ``None``: none.
        feature_perturbation: ``(network, images) -> logits``, a second prediction of the teacher's view by the
            student with perturbed features, taught by the same pseudo labels, e.g.
            :class:`~dussss_monai.engines.FeatureDropout` (UniMatch, Yang et al., CVPR 2023); ``L_semi`` is then the
            mean of the strong-view and the feature-perturbed terms; ``None``: no such stream.
        student_noise_std: Gaussian noise added to the student's unlabeled input (the original mean teacher's
            input perturbation), after ``student_perturbation``; 0 turns it off.
        student_image_key: batch key of the student's own view of the unlabeled images (e.g. a strongly
            augmented copy); ``None``: the student sees the teacher's view.
        teacher_inferer: how the teacher predicts the pseudo labels of the unlabeled batch, e.g.
            :class:`~dussss_monai.inferers.FlipTTAInferer` for the mean probability of its flips (as ``g_inferer``
            and ``d_inferer`` of MONAI's ``GanTrainer``); default the trainer's ``inferer``.
        epoch_length: iterations per epoch; default ``max(len(train_data_loader), len(unlabeled_data_loader))``.
        image_key: key of the image in unlabeled batches.
        kwargs: the other arguments of ``SupervisedTrainer`` (``inferer``, ``postprocessing``, ``amp`` ...).

    Raises:
        ConfigError: on an ``ema_decay`` outside ``[0, 1]``, a bad threshold, negative noise, or confidence
            masking (or a perturbation that weighs pixels) without a threshold above 0.5 or without a loss that
            takes a ``mask``.
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
        teacher: torch.nn.Module | None = None,
        ema_decay: float = 0.99,
        consistency_weight: float | Callable[[int], float] = 1.0,
        consistency_loss_function: Callable | None = None,
        pseudo_label_threshold: float | None = None,
        ignore_uncertain_pixels: bool = False,
        student_perturbation: Callable[[UnlabeledBatch, LabeledBatch], StudentView] | None = None,
        feature_perturbation: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
        student_noise_std: float = 0.0,
        student_image_key: str | None = None,
        teacher_inferer: Inferer | None = None,
        epoch_length: int | None = None,
        image_key: str = "image",
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= float(ema_decay) <= 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1], got {ema_decay}")
        if pseudo_label_threshold is not None and not 0.0 < float(pseudo_label_threshold) < 1.0:
            raise ConfigError(f"pseudo_label_threshold must be in (0, 1) or None, got {pseudo_label_threshold}")
        if student_noise_std < 0:
            raise ConfigError(f"student_noise_std must be >= 0, got {student_noise_std}")
        consistency = consistency_loss_function if consistency_loss_function is not None else loss_function
        if getattr(student_perturbation, "weighs_pixels", False) and not _accepts_keyword(consistency, "mask"):
            raise ConfigError(
                f"{type(student_perturbation).__name__} weighs the pixels of the consistency loss, which must take a "
                f"`mask` keyword (e.g. dussss_monai.losses.ProbabilityMSELoss); got {type(consistency).__name__}"
            )
        if ignore_uncertain_pixels:
            if pseudo_label_threshold is None or pseudo_label_threshold <= 0.5:
                raise ConfigError(
                    "ignore_uncertain_pixels needs a pseudo_label_threshold above 0.5 (the confidence a pixel must "
                    f"reach), got {pseudo_label_threshold}"
                )
            if not _accepts_keyword(consistency, "mask"):
                raise ConfigError(
                    "ignore_uncertain_pixels needs a consistency loss that takes a `mask` keyword "
                    f"(e.g. dussss_monai.losses.SegmentationLoss); got {type(consistency).__name__}"
                )
        if epoch_length is None:
            lengths = [loader_length(train_data_loader), loader_length(unlabeled_data_loader)]
            epoch_length = None if None in lengths else max(int(n) for n in lengths)  # type: ignore[arg-type]
        super().__init__(
            device,
            max_epochs,
            train_data_loader,
            network,
            optimizer,
            loss_function,
            epoch_length=epoch_length,
            **kwargs,
        )
        self.unlabeled = UnlabeledStream(unlabeled_data_loader)
        self.ema_decay = float(ema_decay)
        self.consistency_weight: Callable[[int], float] = (
            consistency_weight if callable(consistency_weight) else ConsistencyWeight(float(consistency_weight), 0)
        )
        self.consistency_loss_function = consistency
        self.pseudo_label_threshold = None if pseudo_label_threshold is None else float(pseudo_label_threshold)
        self.ignore_uncertain_pixels = bool(ignore_uncertain_pixels)
        self.student_perturbation = student_perturbation
        self.feature_perturbation = feature_perturbation
        self.student_noise_std = float(student_noise_std)
        self.student_image_key = student_image_key
        self.teacher_inferer: Inferer = teacher_inferer if teacher_inferer is not None else self.inferer
        self.image_key = image_key
        student = unwrap_network(network)  # never copy a DistributedDataParallel wrapper
        if teacher is None:
            teacher = copy.deepcopy(student)
        else:
            teacher.load_state_dict(student.state_dict())
        self.teacher: torch.nn.Module = teacher.requires_grad_(False)
        self.state.unlabeled_batch = None  # the current unlabeled batch, for handlers

    # ------------------------------------------------------------------ hooks
    def student_view(self, unlabeled: UnlabeledBatch, labeled: LabeledBatch) -> StudentView:
        """The student's input for the unlabeled batch: its own view, perturbed by ``student_perturbation`` and
        noise when they are switched on."""
        view = StudentView(unlabeled.student_images)
        if self.student_perturbation is not None:
            view = self.student_perturbation(unlabeled, labeled)
        if self.student_noise_std > 0:
            view.images = view.images + self.student_noise_std * torch.randn_like(view.images)
        return view

    def pseudo_labels(
        self, unlabeled: UnlabeledBatch, teacher_logits: torch.Tensor, labeled: LabeledBatch
    ) -> PseudoLabels:
        """The consistency target: the probabilities of the teacher's view, ``{"teacher": sigmoid(t)}``."""
        return PseudoLabels({"teacher": torch.sigmoid(teacher_logits)})

    def optimizers(self) -> list[Optimizer]:
        """The optimisers that step every iteration: the student's."""
        return [self.optimizer]

    def before_optimizer_step(self) -> None:
        """Called after the backward passes and before the optimisers step (nothing to do here)."""

    # ------------------------------------------------------------------ one iteration
    def _unlabeled_batch(self) -> UnlabeledBatch:
        data = self.unlabeled.next(self.state.iteration)
        if not isinstance(data, Mapping) or self.image_key not in data:
            raise DuSSSError(f"unlabeled batches must be dicts with key {self.image_key!r}")
        kw = {"device": self.state.device, "non_blocking": self.non_blocking, **self.to_kwargs}
        images = data[self.image_key].to(**kw)
        student = images if self.student_image_key is None else data[self.student_image_key].to(**kw)
        return UnlabeledBatch(images, student, data)

    def _target(self, probabilities: torch.Tensor) -> torch.Tensor:
        if self.pseudo_label_threshold is None:
            return probabilities
        return (probabilities > self.pseudo_label_threshold).to(probabilities.dtype)

    def _consistency(
        self, student_logits: torch.Tensor, probabilities: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``l_c`` of the student against one carried pseudo label.

        Returns:
            ``(loss, target)``: the loss and the (soft or hard) target it was computed against.
        """
        target = self._target(probabilities)
        if self.ignore_uncertain_pixels:
            p = float(self.pseudo_label_threshold)  # type: ignore[arg-type]
            confident = ((probabilities > p) | (probabilities < 1.0 - p)).to(student_logits.dtype)
            weight = confident if weight is None else weight * confident
        if weight is None:
            return self.consistency_loss_function(student_logits, target).mean(), target
        return self.consistency_loss_function(student_logits, target, mask=weight).mean(), target

    def _iteration(self, engine: MeanTeacherTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One iteration (``docs/method.md``, "Pseudo labels and losses").

        Returns:
            ``engine.state.output``: ``image``, ``label``, ``pred`` (labeled batch), ``loss`` (total), ``loss_sup``,
            ``loss_semi``, ``loss_fp`` (the feature-perturbed terms, with a ``feature_perturbation``), ``weight``
            (``w(t)``), the consistency term of each target of :meth:`pseudo_labels` as ``loss_<name>`` when there
            are several, the hook's own ``terms``, and ``fg_fraction_<name>`` of each target.

        Raises:
            ValueError: when ``batchdata`` is None.
            DuSSSError: when a loss is NaN/Inf (before any optimiser step, naming the iteration).
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        labeled = LabeledBatch(inputs, targets, batchdata)
        step = engine.state.iteration - 1
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        terms: dict[str, torch.Tensor] = {}
        engine.network.train()
        for opt in engine.optimizers():
            opt.zero_grad(set_to_none=engine.optim_set_to_none)
        weight = float(engine.consistency_weight(step))

        use_amp = engine.amp and engine.scaler is not None
        with torch.autocast("cuda", **engine.amp_kwargs) if use_amp else nullcontext():
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms["loss_sup"] = engine.loss_function(pred, targets).mean()
            unlabeled = engine._unlabeled_batch()
            engine.state.unlabeled_batch = unlabeled.data
            view = engine.student_view(unlabeled, labeled)
            student_u = engine.inferer(view.images, engine.network)
            engine.teacher.eval()
            with torch.no_grad():
                teacher_logits = engine.teacher_inferer(unlabeled.images, engine.teacher).float()
            pseudo = engine.pseudo_labels(unlabeled, teacher_logits, labeled)
            semi = []
            for name, probabilities in pseudo.targets.items():
                term, target = engine._consistency(student_u, view.carry(probabilities), view.weight)
                engine.state.output[f"fg_fraction_{name}"] = target.detach().float().mean()
                if len(pseudo.targets) > 1:
                    terms[f"loss_{name}"] = term
                semi.append(term)
            terms["loss_semi"] = torch.stack(semi).mean()
            if engine.feature_perturbation is not None:
                perturb = engine.feature_perturbation
                perturbed = engine.inferer(unlabeled.images, lambda x: perturb(engine.network, x))
                fp = [engine._consistency(perturbed, probabilities)[0] for probabilities in pseudo.targets.values()]
                terms["loss_fp"] = torch.stack(fp).mean()
                terms["loss_semi"] = (terms["loss_semi"] + terms["loss_fp"]) / 2
            loss = terms["loss_sup"] + weight * terms["loss_semi"]
            terms.update(pseudo.terms)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        check_finite_losses({"loss": loss, **terms}, engine.state.iteration, engine.state.epoch)

        scaler = engine.scaler if use_amp else None
        for objective in (loss, *pseudo.losses.values()):
            (scaler.scale(objective) if scaler is not None else objective).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.before_optimizer_step()
        for opt in engine.optimizers():
            scaler.step(opt) if scaler is not None else opt.step()
        if scaler is not None:
            scaler.update()
        ema_update(engine.teacher, unwrap_network(engine.network), teacher_ema_decay(step, engine.ema_decay))
        broadcast_from_rank0([b for b in engine.teacher.buffers() if torch.is_floating_point(b)])

        engine.state.output.update({k: v.detach() for k, v in terms.items()})
        engine.state.output["weight"] = weight
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
