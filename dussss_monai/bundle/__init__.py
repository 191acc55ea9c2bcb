"""What bundle configs call: command-line checks, checkpoints, component factories and the run record.

Bundle configs evaluate Python expressions (``"$..."``) and import whatever ``_target_`` names: only run configs
from sources you trust, exactly as you would only run scripts you trust.
"""

from dussss_monai.bundle.checkpoints import (
    checkpoint_objects,
    latest_checkpoint,
    load_stage1_model,
    load_state_dict_into,
)
from dussss_monai.bundle.cli import (
    bundle_root,
    check_command_line,
    config_from_command_line,
    config_path,
    install_error_hook,
    prepare_run,
)
from dussss_monai.bundle.factories import (
    default_num_workers,
    feature_perturbation,
    inference_postprocessing,
    labeled_sampler,
    make_inferer,
    matched_epoch_length,
    scoring_postprocessing,
    student_perturbation,
    use_bfloat16,
)
from dussss_monai.bundle.inputs import check_inputs, check_stage2_inputs
from dussss_monai.bundle.model_record import apply_model_record, read_model_record, write_model_record
from dussss_monai.bundle.run_folder import RunFolder
from dussss_monai.bundle.run_record import environment_versions, training_scalars
from dussss_monai.bundle.settings import SETTINGS, check_settings

__all__ = [
    "SETTINGS",
    "RunFolder",
    "apply_model_record",
    "check_settings",
    "read_model_record",
    "write_model_record",
    "bundle_root",
    "check_command_line",
    "check_inputs",
    "check_stage2_inputs",
    "checkpoint_objects",
    "config_from_command_line",
    "config_path",
    "default_num_workers",
    "feature_perturbation",
    "inference_postprocessing",
    "install_error_hook",
    "prepare_run",
    "environment_versions",
    "latest_checkpoint",
    "load_stage1_model",
    "load_state_dict_into",
    "labeled_sampler",
    "make_inferer",
    "matched_epoch_length",
    "scoring_postprocessing",
    "student_perturbation",
    "training_scalars",
    "use_bfloat16",
]
