"""The components bundle configs build through a function (named by ``_target_``, with named arguments): the
student's perturbations, the inferer and scoring of a training mode (2D images or 3D volumes), inference's
post-processing, the labeled stream's sampler, and the epoch length shared by every method of a comparison. The method itself is a config layer (``configs/mean_teacher.json``,
``configs/supervised.json`` over ``configs/train.json``, which trains DuSSS), each naming its trainer class."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence, Sized
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer, SliceInferer, SlidingWindowInferer
from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, InvertibleTransform, MapTransform, Resized
from torch.utils.data import RandomSampler

from dussss_monai.engines import CopyPaste, CutMix, FeatureDropout
from dussss_monai.engines.distributed import world_size as distributed_world_size
from dussss_monai.errors import ConfigError
from dussss_monai.inferers import FLIPS_2D, FLIPS_SLICES, AutocastInferer, FlipTTAInferer, cpu_has_fast_bfloat16

__all__ = [
    "PERTURBATIONS",
    "student_perturbation",
    "feature_perturbation",
    "make_inferer",
    "use_bfloat16",
    "default_num_workers",
    "scoring_postprocessing",
    "inference_postprocessing",
    "labeled_sampler",
    "matched_epoch_length",
]


#: the ``perturbation`` setting of the bundles: the student's view of an unlabeled batch
PERTURBATIONS = ("none", "cutmix", "copy_paste")


def student_perturbation(name: str) -> CutMix | CopyPaste | None:
    """The student perturbation called ``name`` (:data:`PERTURBATIONS`): ``None``, CutMix between unlabeled images,
    or bidirectional copy-paste between labeled and unlabeled images (BCP).

    Raises:
        ConfigError: when ``name`` is unknown.
    """
    if name == "cutmix":
        return CutMix()
    if name == "copy_paste":
        return CopyPaste()
    if name == "none":
        return None
    raise ConfigError(f"perturbation must be one of {', '.join(PERTURBATIONS)}; got {name!r}")


def feature_perturbation(rate: float) -> FeatureDropout | None:
    """The student's feature-perturbed stream of the bundles' ``feature_dropout`` setting (docs/method.md,
    "Feature perturbation"): channel dropout of the encoder features at ``rate``, or ``None`` (off) for 0.

    Args:
        rate: the probability of zeroing a feature channel; 0 switches the stream off (the default).

    Returns:
        a :class:`~dussss_monai.engines.FeatureDropout`, or ``None`` when ``rate`` is 0.

    Raises:
        ConfigError: when ``rate`` is neither 0 nor in (0, 1).
    """
    if rate == 0:
        return None
    if not 0 < rate < 1:
        raise ConfigError(f"feature_dropout must be 0 (off) or in (0, 1), got {rate}; e.g. --feature_dropout 0.5")
    return FeatureDropout(rate)


def _pair(size: int | Sequence[int], name: str) -> tuple[int, ...]:
    roi = (size, size) if isinstance(size, int) else tuple(size)
    if len(roi) != 2 or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in roi):
        raise ConfigError(f"{name} must be a positive int or a pair of them, got {size!r}")
    return roi


def make_inferer(
    patch_size: int | Sequence[int] | None = None,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    flip_tta: bool = False,
    bfloat16: bool = False,
    volumes: bool = False,
    image_size: int | Sequence[int] | None = None,
) -> Inferer:
    """The inferer that matches how a network was trained.

    Args:
        patch_size: ``None`` for a network trained on resized whole images (MONAI ``SimpleInferer``); the
            training patch size for one trained on native-resolution patches: a Gaussian-weighted
            ``SlidingWindowInferer`` with windows of that size (the nnU-Net way of predicting a large image).
        sw_batch_size: windows per forward pass (volumes: slices, or windows of slices, per forward pass).
        overlap: fraction of overlap between neighbouring windows.
        flip_tta: average the probabilities of the four flips of the input (of volumes: of each slice)
            (:class:`~dussss_monai.inferers.FlipTTAInferer`).
        bfloat16: run the network under bfloat16 autocast (:class:`~dussss_monai.inferers.AutocastInferer`).
        volumes: the inputs are volumes ``(B, C, H, W, D)`` and the network is 2D: MONAI's ``SliceInferer`` predicts
            them slice by slice along the last axis, whole slices of ``image_size`` (their size after the eval
            transforms' resizing) or Gaussian-weighted windows of ``patch_size``.
        image_size: volumes without ``patch_size``: the slices' size.

    Returns:
        a :class:`monai.inferers.Inferer`.

    Raises:
        ConfigError: a patch size that is not a positive int or pair, an overlap outside ``[0, 1)``, or volumes
            with neither ``patch_size`` nor ``image_size``.
    """
    inferer: Inferer
    if not 0.0 <= float(overlap) < 1.0:
        raise ConfigError(f"sliding-window overlap must be in [0, 1), got {overlap!r}")
    if volumes:
        if patch_size is None and image_size is None:
            raise ConfigError("make_inferer: volumes need the slices' image_size or the patch_size")
        roi = _pair(patch_size, "patch_size") if patch_size is not None else _pair(image_size, "image_size")  # type: ignore[arg-type]
        mode = "gaussian" if patch_size is not None else "constant"
        inferer = SliceInferer(
            spatial_dim=2, roi_size=roi, sw_batch_size=int(sw_batch_size), overlap=float(overlap), mode=mode
        )
    elif patch_size is None:
        inferer = SimpleInferer()
    else:
        roi = _pair(patch_size, "patch_size")
        inferer = SlidingWindowInferer(roi, sw_batch_size=int(sw_batch_size), overlap=float(overlap), mode="gaussian")
    if flip_tta:
        inferer = FlipTTAInferer(inferer, flips=FLIPS_SLICES if volumes else FLIPS_2D)
    return AutocastInferer(inferer) if bfloat16 else inferer


def default_num_workers(device: torch.device | str) -> int:
    """The bundles' loader workers: none on a CPU, where the cores do the maths and the cached datasets leave little
    to load, else one per available core up to 4 (so PyTorch never warns that there are more workers than cores)."""
    if torch.device(device).type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def use_bfloat16(device: torch.device | str) -> bool:
    """The bundles' default of ``bfloat16``: on a CPU that multiplies bfloat16 in hardware (on CUDA the trainers'
    own ``amp`` is used)."""
    return torch.device(device).type == "cpu" and cpu_has_fast_bfloat16()


def scoring_postprocessing(
    score_size: int | Sequence[int] | None = None, threshold: float = 0.5, volumes: bool = False
) -> Compose:
    """Validation post-processing: sigmoid, probabilities on the scoring grid, threshold; the mask on the same grid.

    The DuSSS/LViT protocol scores per-image Dice on 224 x 224 (``docs/method.md``, "What the paper leaves open, and
    what we chose"). A network trained on resized images already predicts on that grid; one trained on
    native-resolution patches predicts at native size, so its probabilities are resized to ``score_size``
    bilinearly and then thresholded, and the ground-truth mask is resized with nearest neighbour.

    Args:
        score_size: the scoring grid, or ``None`` to score at the size the prediction has.
        threshold: foreground threshold on the sigmoid.
        volumes: ``pred`` and ``label`` are volumes: each slice is brought to ``score_size``, every slice kept.

    Returns:
        a :class:`monai.transforms.Compose` over the ``pred`` and ``label`` keys (and ``image``, resized with them,
        for reports that draw prediction and mask over it).
    """
    xforms: list[Any] = [Activationsd(keys="pred", sigmoid=True)]
    if score_size is not None:
        size = (score_size, score_size) if isinstance(score_size, int) else tuple(score_size)
        size = size + ((-1,) if volumes else ())
        xforms += [
            Resized("pred", size, mode="bilinear", align_corners=False),
            Resized("label", size, mode="nearest-exact", allow_missing_keys=True),
            Resized("image", size, mode="bilinear", anti_aliasing=True, allow_missing_keys=True),
        ]
    return Compose(xforms + [AsDiscreted(keys="pred", threshold=float(threshold))])


def inference_postprocessing(
    preprocessing: InvertibleTransform | None = None, volumes: bool = False
) -> MapTransform | Compose:
    """Inference's post-processing: the sigmoid of ``pred``; of a volume, then MONAI's ``Invertd`` with the inference
    pipeline (``preprocessing``), which undoes its resizing and orientation, so that the probabilities lie on the
    input's own voxel grid, in the input's array order, for :class:`~dussss_monai.handlers.MaskWriter`.

    Args:
        preprocessing: the inference pipeline (:func:`~dussss_monai.data.inference_io.inference_transforms`); needed
            for volumes.
        volumes: the inputs are volumes.

    Raises:
        ConfigError: volumes without the pipeline to invert.
    """
    sigmoid = Activationsd(keys="pred", sigmoid=True)
    if not volumes:
        return sigmoid
    if preprocessing is None:
        raise ConfigError("inference_postprocessing: volumes need the inference pipeline (preprocessing) to invert")
    invert = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True)
    return Compose([sigmoid, invert])


def labeled_sampler(
    dataset: Sized, epoch_length: int | None, batch_size: int, slices_per_volume: int = 1, volumes: bool = False
) -> RandomSampler | None:
    """The labeled stream's sampler (stage 1: the stream of every training image).

    Args:
        dataset: the items.
        epoch_length: an epoch is that many batches of items drawn with replacement (a few labeled images, many
            iterations); ``None``: passes over the items.
        batch_size: items per batch.
        slices_per_volume: with ``volumes`` and no ``epoch_length``: an epoch is that many shuffled passes, each
            read of a volume drawing one of its slices.
        volumes: the items are 3D volumes.

    Returns:
        a ``RandomSampler``, or ``None`` for one shuffled pass (the loader's ``shuffle``).
    """
    if epoch_length is not None:
        return RandomSampler(dataset, replacement=True, num_samples=int(epoch_length) * int(batch_size))
    if volumes:
        return RandomSampler(dataset, replacement=False, num_samples=int(slices_per_volume) * len(dataset))
    return None


def matched_epoch_length(
    datalist: Mapping[str, Sequence[Any]],
    batch_size: int,
    unlabeled_batch_size: int | None = None,
    world_size: int | None = None,
    epoch_length: int | None = None,
    slices_per_volume: int = 1,
    volumes: bool = False,
) -> int:
    """Iterations per epoch shared by every method of a comparison: one pass over the larger of the labeled and
    unlabeled streams, ``max(ceil(n_l / (W * b)), ceil(n_u / (W * b_u)))`` with ``W`` ranks (each rank holds
    ``ceil(n / W)`` items, as ``DistributedSampler(even_divisible=True)``).

    The supervised-only baseline uses it too, although it reads no unlabeled data, so that "30 epochs" means
    the same number of optimiser steps and the same learning-rate schedule for supervised-only, mean teacher
    and DuSSS (otherwise the baseline would get ``n_l / n_u`` times fewer steps).

    Args:
        datalist: output of :func:`dussss_monai.data.prepare_datalist` (keys ``labeled`` and ``unlabeled``).
        batch_size: labeled batch size.
        unlabeled_batch_size: unlabeled batch size (default ``batch_size``).
        world_size: number of ranks; default the initialised process group's size, else 1.
        epoch_length: a length set by the user, returned as it is (``None``: the matched length).
        slices_per_volume: with ``volumes``, the slices drawn from each volume per epoch: ``n_l`` and ``n_u`` are
            multiplied by it.
        volumes: the items are 3D volumes.

    Returns:
        the epoch length (at least 1).

    Raises:
        ConfigError: when a batch size is not positive or ``datalist`` lacks the ``labeled`` list.
    """
    if epoch_length is not None:
        return int(epoch_length)
    ub = batch_size if unlabeled_batch_size is None else unlabeled_batch_size
    if int(batch_size) < 1 or int(ub) < 1:
        raise ConfigError(f"batch sizes must be positive, got batch_size={batch_size}, unlabeled_batch_size={ub}")
    if "labeled" not in datalist:
        raise ConfigError(
            "matched_epoch_length: the datalist has no 'labeled' list (see dussss_monai.data.prepare_datalist)"
        )
    w = max(int(distributed_world_size() if world_size is None else world_size), 1)

    def steps(n: int, b: int) -> int:
        per_rank = -(-n // w)
        return -(-per_rank // b)

    draws = max(int(slices_per_volume), 1) if volumes else 1
    n_l = len(datalist["labeled"]) * draws
    n_u = len(datalist.get("unlabeled", [])) * draws
    return max(steps(n_l, int(batch_size)), steps(n_u, int(ub)), 1)
