"""Stage-1 engines: the VLM pre-trainer (DCL + SSS) and the retrieval evaluator used for model selection.

:class:`VLMPretrainer` is a :class:`monai.engines.SupervisedTrainer` whose iteration implements DuSSS
stage 1 (``docs/method.md``, "Dual Contrastive Learning (DCL)"): online and momentum features of the image, its second augmented view, the
text and an augmented text; :class:`~dussss_monai.losses.DualContrastiveLoss`; backward; optimiser step;
then the momentum update of the VLM. Everything else (handlers, events, checkpointing, ``run()``) is MONAI's,
so bundle configs use the usual ``StatsHandler``, ``TensorBoardStatsHandler``, ``CheckpointSaver`` and
``ValidationHandler``.

:class:`VLMEvaluator` encodes validation images and texts with the online encoders and feeds
:class:`~dussss_monai.metrics.RetrievalRecall` (key metric ``"recall_at_1"``, the mean of
image->text and text->image recall@1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from monai.utils.enums import ForwardMode
from torch.optim import Optimizer

from dussss_monai.data.text_augmentation import TextAugmenter
from dussss_monai.errors import ConfigError
from dussss_monai.losses.dual_contrastive import DualContrastiveLoss
from dussss_monai.metrics.retrieval import RetrievalRecall
from dussss_monai.networks.vlm import DuSSSVisionLanguageModel
from dussss_monai.utils.texts import text_list

__all__ = ["VLMPretrainer", "VLMEvaluator", "PRETRAIN_OUTPUT_KEYS"]

#: keys of ``engine.state.output`` after a pre-training iteration, besides the loss components
PRETRAIN_OUTPUT_KEYS = ("loss", "temperature")


def _texts_of(batch: Any, key: str, n: int) -> list[str]:
    if key not in batch:
        raise ConfigError(f"the batch has no {key!r} entry (keys: {sorted(batch)})")
    raw = batch[key]
    if not isinstance(raw, str) and not all(isinstance(t, str) for t in raw):
        raise ConfigError(f"batch[{key!r}] must be {n} strings (one per image), got {type(raw).__name__}")
    texts = text_list(raw)
    if len(texts) != n:
        raise ConfigError(f"batch[{key!r}] must be {n} strings (one per image), got {len(texts)} items")
    return texts


def _image_of(batch: Any, key: str, device: torch.device, non_blocking: bool) -> torch.Tensor:
    if key not in batch:
        raise ConfigError(f"the batch has no {key!r} entry (keys: {sorted(batch)})")
    x = batch[key]
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ConfigError(f"batch[{key!r}] must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor -> Tensor: metadata is not needed here
    return x.to(device=device, dtype=torch.float32, non_blocking=non_blocking)


def _check_amp(amp: bool, device: str | torch.device) -> None:
    if amp and torch.device(device).type != "cuda":
        raise ConfigError(f"amp=True needs a CUDA device, got {device!r} (set amp to false on CPU)")


class VLMPretrainer(SupervisedTrainer):
    """DuSSS stage-1 trainer (DCL + SSS with momentum encoders).

    Each iteration, for a batch ``{"image": (B,C,H,W), "image_aug": (B,C,H,W), "text": list[str]}``:

    1. online features ``img = encode_image(image)``, ``txt = encode_text(text)`` (with gradient);
    2. momentum features (no gradient) ``img_m`` of ``image``, ``img_aug_m`` of ``image_aug``, ``txt_m`` of
       ``text`` and ``txt_aug_m`` of ``text_augmenter(text)``;
    3. ``loss, parts = loss_function(img, img_m, img_aug_m, txt, txt_m, txt_aug_m, network.temperature, text)``;
    4. backward, optimiser step, then ``network.momentum_update()``.

    ``engine.state.output`` is ``{"loss": tensor, "temperature": float, "loss_i2t": ..., ...}`` (the parts of
    :class:`~dussss_monai.losses.DualContrastiveLoss`, detached). With the default ``decollate=False`` the
    output stays one dict: log it with ``StatsHandler(output_transform="$lambda x: x['loss'].item()")``.
    ``IterationEvents`` (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
    ``MODEL_COMPLETED``) fire as in :class:`~monai.engines.SupervisedTrainer`.

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields batches as above.
        network: the :class:`~dussss_monai.networks.vlm.DuSSSVisionLanguageModel`.
        optimizer: optimiser over ``network.trainable_parameters()`` (paper: Adam, lr 3e-5).
        loss_function: default :class:`~dussss_monai.losses.DualContrastiveLoss` ``()``.
        text_augmenter: ``list[str] -> list[str]``; default :class:`~dussss_monai.data.text_augmentation.TextAugmenter` ``(seed=0)``.
        image_key, image_aug_key, text_key: batch keys.
        use_duplicate_texts: pass the batch's sentences to the loss so that identical sentences are shared
            positives instead of negatives (recommended for templated reports).
        momentum_update: call ``network.momentum_update()`` after every optimiser step.
        epoch_length, non_blocking, iteration_update, key_train_metric, additional_metrics, metric_cmp_fn,
        train_handlers, amp, event_names, event_to_attr, decollate, optim_set_to_none, to_kwargs,
        amp_kwargs: as in :class:`~monai.engines.SupervisedTrainer` (``amp`` needs CUDA).

    Raises:
        ConfigError: for a network without the VLM interface, ``amp`` without CUDA, and (during the run)
            batches missing a key or with a wrong number of texts.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: DuSSSVisionLanguageModel,
        optimizer: Optimizer,
        loss_function: Callable | None = None,
        text_augmenter: Callable[[list[str]], list[str]] | None = None,
        image_key: str = "image",
        image_aug_key: str = "image_aug",
        text_key: str = "text",
        use_duplicate_texts: bool = True,
        momentum_update: bool = True,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        iteration_update: Callable | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        for attr in ("encode_image", "encode_text", "momentum_update", "temperature"):
            if not hasattr(network, attr):
                raise ConfigError(f"VLMPretrainer needs a DuSSSVisionLanguageModel-like network (missing {attr!r})")
        _check_amp(amp, device)
        kwargs: dict[str, Any] = {}
        if metric_cmp_fn is not None:
            kwargs["metric_cmp_fn"] = metric_cmp_fn
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=DualContrastiveLoss() if loss_function is None else loss_function,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            iteration_update=iteration_update,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            train_handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
            **kwargs,
        )
        self.text_augmenter = TextAugmenter(seed=0) if text_augmenter is None else text_augmenter
        self.image_key, self.image_aug_key, self.text_key = image_key, image_aug_key, text_key
        self.use_duplicate_texts = bool(use_duplicate_texts)
        self.do_momentum_update = bool(momentum_update)

    def _iteration(self, engine: VLMPretrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        """One stage-1 step (see the class docstring).

        Returns:
            ``engine.state.output``: ``loss``, ``temperature`` and the loss components.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        net = cast(DuSSSVisionLanguageModel, engine.network)  # checked for the VLM interface in __init__
        image = _image_of(batchdata, engine.image_key, device, engine.non_blocking)
        texts = _texts_of(batchdata, engine.text_key, image.shape[0])
        intra = getattr(engine.loss_function, "intra_modal", True)
        image_aug = _image_of(batchdata, engine.image_aug_key, device, engine.non_blocking) if intra else None
        if image_aug is not None and image_aug.shape != image.shape:
            raise ConfigError(
                f"{engine.image_aug_key!r} {tuple(image_aug.shape)} differs in shape from {engine.image_key!r} {tuple(image.shape)}"
            )
        texts_aug = list(engine.text_augmenter(texts)) if intra else None

        engine.state.output = {Keys.IMAGE: image}
        net.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        autocast = torch.autocast("cuda", **engine.amp_kwargs) if engine.amp else contextlib.nullcontext()
        with autocast:
            img = net.encode_image(image)
            txt = net.encode_text(texts)
            with torch.no_grad():
                img_m = net.encode_image(image, momentum=True)
                txt_m = net.encode_text(texts, momentum=True)
                img_aug_m = net.encode_image(image_aug, momentum=True) if image_aug is not None else None
                txt_aug_m = net.encode_text(texts_aug, momentum=True) if texts_aug is not None else None
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss, parts = engine.loss_function(
                img,
                img_m,
                img_aug_m,
                txt,
                txt_m,
                txt_aug_m,
                net.temperature,
                texts=texts if engine.use_duplicate_texts else None,
            )
        engine.state.output[Keys.LOSS] = loss
        engine.state.output["temperature"] = float(net.temperature.detach())
        engine.state.output.update(parts)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        if engine.do_momentum_update:
            net.momentum_update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class VLMEvaluator(SupervisedEvaluator):
    """Encodes validation pairs with the online VLM and scores image-text retrieval.

    Each iteration puts ``{"image_embed": (B, D), "text_embed": (B, D), "text": list[str]}`` (detached) in
    ``engine.state.output``; the key metric (default ``{"recall_at_1": RetrievalRecall(k=1)}``, the mean of
    both directions) reads it. Add e.g. ``{"recall_chance": RetrievalRecall(direction="chance")}`` to
    ``additional_metrics`` to log the chance level.

    Args:
        device: evaluation device.
        val_data_loader: yields ``{"image": (B, C, H, W), "text": list[str]}``.
        network: the :class:`~dussss_monai.networks.vlm.DuSSSVisionLanguageModel`.
        image_key, text_key: batch keys.
        momentum: score the momentum encoders instead of the online ones.
        key_val_metric: default ``{"recall_at_1": RetrievalRecall(k=1)}``.
        epoch_length, non_blocking, additional_metrics, metric_cmp_fn, val_handlers, amp, mode, event_names,
        event_to_attr, decollate, to_kwargs, amp_kwargs: as in :class:`~monai.engines.SupervisedEvaluator`.

    Raises:
        ConfigError: for ``amp`` without CUDA, and for malformed batches during the run.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable,
        network: DuSSSVisionLanguageModel,
        image_key: str = "image",
        text_key: str = "text",
        momentum: bool = False,
        key_val_metric: dict[str, Metric] | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable | None = None,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        mode: ForwardMode | str = ForwardMode.EVAL,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        _check_amp(amp, device)
        kwargs: dict[str, Any] = {}
        if metric_cmp_fn is not None:
            kwargs["metric_cmp_fn"] = metric_cmp_fn
        super().__init__(
            # SupervisedEvaluator annotates torch.device, but passes it on to Evaluator, which takes str too
            device=cast(torch.device, device),
            val_data_loader=val_data_loader,
            network=network,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_val_metric={"recall_at_1": RetrievalRecall(k=1)} if key_val_metric is None else key_val_metric,
            additional_metrics=additional_metrics,
            val_handlers=val_handlers,
            amp=amp,
            mode=mode,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
            **kwargs,
        )
        self.image_key, self.text_key = image_key, text_key
        self.use_momentum = bool(momentum)

    def _iteration(self, engine: VLMEvaluator, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image = _image_of(batchdata, engine.image_key, engine.state.device, engine.non_blocking)
        texts = _texts_of(batchdata, engine.text_key, image.shape[0])
        autocast = torch.autocast("cuda", **engine.amp_kwargs) if engine.amp else contextlib.nullcontext()
        net = cast(DuSSSVisionLanguageModel, engine.network)
        with engine.mode(engine.network), torch.no_grad(), autocast:
            img = net.encode_image(image, momentum=engine.use_momentum)
            txt = net.encode_text(texts, momentum=engine.use_momentum)
        engine.state.output = {"image_embed": img.embed.detach(), "text_embed": txt.embed.detach(), "text": texts}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
