"""The declared settings of the bundles: one list, checked before anything runs.

Every top-level key of every bundle config is declared here: a *setting* (a value a user may change, with its type,
range and meaning) or a *component* (a network, a loader, a workflow step: built by the config, not a value).
:func:`check_settings` validates a run's configuration against the list with ``jsonschema`` and reports every
problem at once: an override of a key that the config does not have (with the nearest known setting), a value of
the wrong type, a value out of range. Values written as config expressions (``"$..."``, ``"@..."``) are checked
where they are used.

The list also says which settings define a run (:func:`identity_keys`): resuming a run with any of them changed is
refused (:mod:`dussss_monai.bundle.run_folder`), while the others (``max_epochs``, where files go, the device, how
often to validate, ...) may change between the attempts of one run.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dussss_monai.errors import ConfigError

__all__ = [
    "Setting",
    "SETTINGS",
    "COMPONENTS",
    "METHOD_KEYS",
    "json_schema",
    "identity_keys",
    "check_settings",
    "is_expression",
]


@dataclass(frozen=True)
class Setting:
    """One setting of the bundles.

    Attributes:
        types: its JSON types (``"integer"``, ``"number"``, ``"boolean"``, ``"string"``, ``"array"``, ``"object"``,
            ``"null"``).
        description: what it does, in a few words (the settings tables of the bundles' docs).
        limits: further JSON-schema keywords (``minimum``, ``exclusiveMinimum``, ``maximum``, ``enum``, ``items``).
        resumable: the setting may change when a run is resumed (it does not define the run).
    """

    types: tuple[str, ...]
    description: str
    limits: Mapping[str, Any] = field(default_factory=dict)
    resumable: bool = False


def _s(types: str, description: str, *, resumable: bool = False, **limits: Any) -> Setting:
    return Setting(tuple(types.split("|")), description, limits, resumable)


_POSITIVE_INT: dict[str, Any] = {"minimum": 1}
_FRACTION: dict[str, Any] = {"minimum": 0.0, "maximum": 1.0}
_INT_LIST: dict[str, Any] = {"items": {"type": "integer", "minimum": 1}, "minItems": 1}

SETTINGS: dict[str, Setting] = {
    # where things are
    "bundle_root": _s("string", "the bundle folder (found from --config_file)", resumable=True),
    "dataset_dir": _s(
        "string", "the data: an LViT-layout folder, a datalist .json, a table .csv/.xlsx or a folder of images"
    ),
    "columns": _s("object|null", 'a table\'s column names, e.g. {"image": "filename", "text": "report"}'),
    "image_dir": _s("string|null", "where a table's relative image paths start (default: the table's folder)"),
    "mask_dir": _s(
        "string|null", "the folder of masks, found by the image's file name; images without one are unlabeled"
    ),
    "val_fraction": _s("number", "without a validation set, the share of labeled images held out", **_FRACTION),
    "output_dir": _s("string", "the run folder (logs, records, checkpoints; evaluation: the report)", resumable=True),
    "ckpt_dir": _s("string", "where the best model is written (stage 1: vlm.pt; stage 2: model.pt)", resumable=True),
    "eval_dir": _s(
        "string", "evaluation: where the report goes (default: eval_<split> in the run folder)", resumable=True
    ),
    "checkpoint_dir": _s("string", "where the training checkpoints of a run are written", resumable=True),
    "checkpoint": _s("string", "the model file to evaluate or apply", resumable=True),
    "vlm_checkpoint": _s("string", "the stage-1 model DuSSS reads", resumable=True),
    "run_name": _s("string", "the run folder's name under runs/", resumable=True),
    "input_dir": _s("string", "inference: a folder of images, an image, or a datalist/table", resumable=True),
    "split": _s(
        "string",
        "the datalist section to evaluate or segment",
        resumable=True,
        enum=["training", "validation", "test", "unlabeled"],
    ),
    "output_format": _s("string", "inference: the masks' file type", resumable=True, enum=["auto", "png", "nifti"]),
    "threshold": _s(
        "number", "foreground threshold of the probability", resumable=True, exclusiveMinimum=0.0, exclusiveMaximum=1.0
    ),
    "max_overlays": _s("integer", "evaluation: the number of overlay pictures written", resumable=True, minimum=0),
    # the run
    "method": _s(
        "string", "stage 2: dussss, mean_teacher or supervised", enum=["dussss", "mean_teacher", "supervised"]
    ),
    "labeled_ratio": _s(
        "number",
        "fully masked data: the share of training images that keep their mask",
        exclusiveMinimum=0.0,
        maximum=1.0,
    ),
    "seed": _s("integer", "the seed of the split and of the initialisation", minimum=0),
    "resume": _s("boolean", "continue the run in output_dir from its last checkpoint", resumable=True),
    "device": _s("string", "cpu, cuda or cuda:<n> (default: the first GPU if there is one)", resumable=True),
    "amp": _s("boolean", "mixed precision on CUDA", resumable=True),
    "bfloat16": _s("boolean", "run the networks in bfloat16 on a CPU with bfloat16 units", resumable=True),
    "num_workers": _s("integer", "data loader worker processes", resumable=True, minimum=0),
    "max_epochs": _s("integer", "epochs to train (raise it to extend a resumed run)", resumable=True, **_POSITIVE_INT),
    "epoch_length": _s("integer|null", "iterations per epoch (null: one pass over the data)", **_POSITIVE_INT),
    "val_interval": _s("integer", "validate every this many epochs", resumable=True, **_POSITIVE_INT),
    "log_iterations": _s("boolean", "print the losses of every iteration", resumable=True),
    "early_stop_patience": _s(
        "integer", "stop after this many validations without improvement", resumable=True, **_POSITIVE_INT
    ),
    # images and network
    "in_channels": _s("integer", "image channels: 1 (grey) or 3 (colour)", enum=[1, 3]),
    "intensity_window": _s(
        "array|null",
        "3D volumes: the intensities [low, high] scaled to [0, 1] (CT: Hounsfield units; null: each volume's range)",
        items={"type": "number"},
        minItems=2,
        maxItems=2,
    ),
    "slice_axis": _s(
        "string", "3D volumes: the axis they are cut along into 2D slices", enum=["axial", "coronal", "sagittal"]
    ),
    "slices_per_volume": _s("integer", "3D volumes: slices drawn from each training volume per epoch", minimum=1),
    "image_size": _s("integer", "the size images are resized to (the VLM's input)", minimum=8),
    "patch_size": _s("integer|null", "train on native-resolution patches of this size (null: resize)", minimum=8),
    "score_size": _s(
        "integer|null", "the grid Dice is scored on (null: the prediction's size)", resumable=True, minimum=8
    ),
    "sw_batch_size": _s("integer", "sliding-window patches per forward pass", resumable=True, **_POSITIVE_INT),
    "flip_tta": _s("boolean", "average the predictions of the four flips at evaluation and inference", resumable=True),
    "batch_size": _s("integer", "images per batch (stage 2: labeled images)", **_POSITIVE_INT),
    "unlabeled_batch_size": _s("integer", "unlabeled images per batch", **_POSITIVE_INT),
    "unet_channels": _s("array", "the U-Net's channels per level", **_INT_LIST),
    "unet_strides": _s("array", "the U-Net's strides between levels", **_INT_LIST),
    "unet_norm": _s("string", "the U-Net's normalisation", enum=["batch", "instance"]),
    # optimiser and schedule
    "learning_rate": _s("number", "the optimiser's learning rate", exclusiveMinimum=0.0),
    "min_learning_rate": _s("number", "the learning rate at the end of the schedule", minimum=0.0),
    "decoder_learning_rate": _s("number", "f_g's learning rate", exclusiveMinimum=0.0),
    # augmentation
    "augment_flip": _s("boolean", "random flips of training images"),
    "augment_rot90": _s("boolean", "random 90-degree rotations of training images"),
    "augment_degrees": _s("number", "random rotations up to this many degrees", minimum=0.0, maximum=180.0),
    "stain_jitter": _s("number", "H&E stain jitter of labeled crops", minimum=0.0),
    "stain_transfer_prob": _s("number", "probability of re-staining a labeled crop", **_FRACTION),
    "strong_view": _s("boolean", "the student sees a strongly augmented view (weak-to-strong consistency)"),
    "strong_stain_jitter": _s("number", "H&E stain jitter of the strong view", minimum=0.0),
    "strong_stain_transfer_prob": _s("number", "probability of re-staining the strong view", **_FRACTION),
    # semi-supervision
    "consistency_weight": _s("number", "the weight of the unlabeled loss after the ramp-up", minimum=0.0),
    "consistency_rampup_epochs": _s("number", "epochs of the weight's ramp-up", minimum=0.0),
    "ema_decay": _s("number", "the teacher's EMA decay", minimum=0.0, exclusiveMaximum=1.0),
    "pseudo_label_threshold": _s("number|null", "hard pseudo labels at this probability (null: soft)", **_FRACTION),
    "ignore_uncertain_pixels": _s("boolean", "learn from confident pixels only"),
    "student_noise_std": _s("number", "Gaussian noise on the student's input", minimum=0.0),
    "feature_dropout": _s(
        "number", "the feature-perturbed stream's channel dropout (0: off)", minimum=0.0, exclusiveMaximum=1.0
    ),
    "perturbation": _s("string", "the student's perturbation", enum=["none", "cutmix", "copy_paste"]),
    # DuSSS's text
    "grounding_supervision_weight": _s("number", "beta: f_g's supervision on labeled masks", minimum=0.0),
    "text_guided_weight": _s("number", "gamma: the text-guided loss of f_g", minimum=0.0),
    "text_logit_scale_init": _s("number", "f_g's initial logit scale", exclusiveMinimum=0.0),
    "text_logit_scale_max": _s("number", "f_g's largest logit scale", exclusiveMinimum=0.0),
    "use_text_loss": _s("boolean", "L_text: the student learns f_g's text mask too"),
    "use_merged_loss": _s("boolean", "L_merged: the student learns the text-refined pseudo label"),
    "use_text_guided_loss": _s("boolean", "L_tg: f_g's text-guided loss"),
    "rotate_texts": _s("boolean", "control: ground each unlabeled image with the next image's sentence"),
    "decoder_channels": _s("integer", "f_g's hidden channels", **_POSITIVE_INT),
    "decoder_image_skip_channels": _s("integer", "f_g's image skip channels (0: none)", minimum=0),
    "decoder_prior_grid": _s("integer", "side of f_g's spatial prior of the sentence (0: none)", minimum=0),
    "decoder_crop_size": _s("integer|null", "the size f_g decodes a patch's region at", minimum=8),
    # the vision-language model (stage 1)
    "text_encoder": _s("string|null", "a Hugging Face id or folder (null: the offline all-MiniLM-L6-v2)"),
    "text_max_length": _s("integer", "the text encoder's token limit", **_POSITIVE_INT),
    "image_encoder": _s("string", "the VLM's image encoder", enum=["vit", "conv"]),
    "vit_patch_size": _s("integer", "ViT patch size", **_POSITIVE_INT),
    "vit_hidden_size": _s("integer", "ViT width", **_POSITIVE_INT),
    "vit_mlp_dim": _s("integer", "ViT MLP width", **_POSITIVE_INT),
    "vit_num_layers": _s("integer", "ViT depth", **_POSITIVE_INT),
    "vit_num_heads": _s("integer", "ViT heads", **_POSITIVE_INT),
    "conv_channels": _s("array", "the convolutional image encoder's channels", **_INT_LIST),
    "conv_hidden_size": _s("integer", "the convolutional image encoder's width", **_POSITIVE_INT),
    "conv_pool": _s("string", "how the convolutional encoder pools", enum=["flatten", "mean"]),
    "embed_dim": _s("integer", "the shared image-text embedding size", **_POSITIVE_INT),
    "momentum": _s("number", "the momentum encoders' EMA", minimum=0.0, exclusiveMaximum=1.0),
    "use_sss": _s("boolean", "Semantic Similarity-Supervision"),
    "cross_modal": _s("boolean", "the cross-modal contrastive term"),
    "intra_modal": _s("boolean", "the intra-modal contrastive term"),
    "sss_a": _s("number", "SSS's a", exclusiveMinimum=0.0),
    "sss_b": _s("number", "SSS's b", exclusiveMinimum=0.0),
    "sss_lambda": _s("number", "SSS's lambda", minimum=0.0),
}

#: top-level config keys that are built by the config rather than set (networks, data, engines, workflow steps)
COMPONENTS: frozenset[str] = frozenset(
    {
        "imports", "network_def", "network", "vlm_def", "grounding_decoder", "refiner", "loss", "consistency_loss",
        "text_guided_loss", "grounding_decoder_loss", "text_augmenter", "optimizer", "decoder_optimizer", "datalist",
        "data_source", "method", "text_sections", "grounding_context", "stage1_checkpoint",
        "eval_items", "inputs", "stain_references", "strong_stain_references", "preprocessing", "dataset", "dataloader",
        "inferer", "postprocessing", "handlers", "evaluator", "train", "validate", "run_folder", "trained",
        "model_record", "is_main_rank", "initialize", "training", "evaluating", "run", "finalize", "_meta_", "volumes",
    }
)  # fmt: skip

#: what a method's config layer sets (``configs/mean_teacher.json``, ``configs/supervised.json``): not settings
METHOD_KEYS = ("method", "text_sections", "grounding_context", "stage1_checkpoint")

_EXPRESSION_PREFIXES = ("$", "@", "%")


def is_expression(value: Any) -> bool:
    """Whether a config value is evaluated by MONAI (``"$..."``, ``"@ref"``, ``"%macro"``) rather than literal."""
    return isinstance(value, str) and value.startswith(_EXPRESSION_PREFIXES)


def json_schema() -> dict[str, Any]:
    """The settings as a JSON Schema (draft 2020-12) of a config's top-level object."""
    properties = {
        name: {"type": list(s.types) if len(s.types) > 1 else s.types[0], "description": s.description, **s.limits}
        for name, s in SETTINGS.items()
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": properties}


def identity_keys(keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` that define a run: the method's name and every declared setting that is not
    ``resumable``."""
    return [k for k in keys if k == "method" or (k in SETTINGS and not SETTINGS[k].resumable)]


def _typename(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _expected(name: str) -> str:
    s = SETTINGS[name]
    words = {"integer": "an integer", "number": "a number", "boolean": "True or False", "string": "text",
             "array": "a list", "object": "an object", "null": "'$None'"}  # fmt: skip
    kinds = " or ".join(words[t] for t in s.types)
    limits = s.limits
    if "enum" in limits:
        return "one of " + ", ".join(map(str, limits["enum"]))
    bounds = []
    if "minimum" in limits:
        bounds.append(f">= {limits['minimum']:g}")
    if "exclusiveMinimum" in limits:
        bounds.append(f"> {limits['exclusiveMinimum']:g}")
    if "maximum" in limits:
        bounds.append(f"<= {limits['maximum']:g}")
    if "exclusiveMaximum" in limits:
        bounds.append(f"< {limits['exclusiveMaximum']:g}")
    if "items" in limits:
        bounds.append("of positive integers")
    return kinds + (" " + " and ".join(bounds) if bounds else "")


def check_settings(
    config: Mapping[str, Any], overrides: Iterable[str] = (), known: Iterable[str] | None = None
) -> None:
    """Check a run's configuration against :data:`SETTINGS`, every problem at once.

    Args:
        config: the run's configuration (the config files merged, the overrides applied, expressions unevaluated).
        overrides: the keys set on the command line or in the Python call; each must be a key of the config files
            (``known``) or a declared setting, else it is reported with the nearest known name.
        known: the top-level keys of the config files (default: the keys of ``config``).

    Raises:
        ConfigError: naming each problem (``--key value: ...``) and the fix.
    """
    from jsonschema import Draft202012Validator

    known_keys = set(config if known is None else known)
    problems: list[str] = []
    for key in set(overrides) & set(METHOD_KEYS):
        problems.append(
            f"--{key}: the method is chosen by its config layer, not a setting: "
            "--config_file \"['configs/train.json','configs/mean_teacher.json']\" (or supervised.json; train.json alone "
            "trains DuSSS), the same files for evaluation"
        )
    for key in overrides:
        if key in METHOD_KEYS:
            continue
        top = key.replace("::", "#").split("#", 1)[0]
        if top in known_keys:
            continue
        # the declared settings and the components a user may replace (``--consistency_loss "{'_target_': ...}"``)
        candidates = sorted(known_keys & (set(SETTINGS) | COMPONENTS) - set(METHOD_KEYS))
        near = difflib.get_close_matches(top, candidates, n=1, cutoff=0.6)
        hint = f" (did you mean --{near[0]}?)" if near else ""
        problems.append(f"--{key}: this config has no setting '{top}'{hint}")
    literal = {k: v for k, v in config.items() if k in SETTINGS and not is_expression(v)}
    validator = Draft202012Validator(json_schema())
    reported: set[str] = set()
    for error in sorted(validator.iter_errors(literal), key=lambda e: [str(p) for p in e.absolute_path]):
        name = str(error.absolute_path[0]) if error.absolute_path else ""
        if name not in SETTINGS or name in reported:
            continue
        reported.add(name)
        value = literal[name]
        kind = f", not {_typename(value)}" if error.validator == "type" else ""
        problems.append(f"--{name} {value!r}: must be {_expected(name)}{kind} ({SETTINGS[name].description})")
    if problems:
        raise ConfigError(
            f"{len(problems)} setting problem{'s' if len(problems) > 1 else ''}: " + "; ".join(dict.fromkeys(problems))
        )
