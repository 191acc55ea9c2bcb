"""Data layer: image/mask and volume reading, LViT folders, datalists and tables, splits, checks, transforms, demo
data.

See ``docs/data_format.md`` for the formats and every check's message.
"""

from __future__ import annotations

from dussss_monai.data.checks import check_dataset, collect_problems
from dussss_monai.data.datalist import DatasetSource, load_datalist, read_dataset, save_datalist
from dussss_monai.data.demo import generate_demo_dataset
from dussss_monai.data.image_io import read_image_2d, read_image_info, read_mask_2d
from dussss_monai.data.lvit import read_lvit_dataset, read_text_table
from dussss_monai.data.pipelines import (
    eval_transforms,
    pretrain_transforms,
    pretrain_validation_transforms,
    train_transforms,
    unlabeled_transforms,
)
from dussss_monai.data.splits import (
    holdout_validation,
    prepare_datalist,
    read_evaluation_items,
    read_training_data,
    split_filename,
    split_labeled,
    split_name,
    write_split_files,
)
from dussss_monai.data.stain import RandHEDJitterd
from dussss_monai.data.stain_transfer import HEStain, RandStainTransferd, estimate_he_stain, he_stain_references
from dussss_monai.data.tables import read_table
from dussss_monai.data.transforms import DataPipeline, LoadImage2Dd
from dussss_monai.data.volumes import RandSliced, holds_volumes

__all__ = [
    "read_image_2d",
    "read_mask_2d",
    "read_image_info",
    "read_lvit_dataset",
    "read_text_table",
    "check_dataset",
    "collect_problems",
    "DatasetSource",
    "read_dataset",
    "read_table",
    "load_datalist",
    "save_datalist",
    "read_training_data",
    "write_split_files",
    "read_evaluation_items",
    "split_name",
    "split_labeled",
    "holdout_validation",
    "split_filename",
    "prepare_datalist",
    "generate_demo_dataset",
    "holds_volumes",
    "RandSliced",
    "DataPipeline",
    "LoadImage2Dd",
    "RandHEDJitterd",
    "HEStain",
    "RandStainTransferd",
    "estimate_he_stain",
    "he_stain_references",
    "train_transforms",
    "eval_transforms",
    "unlabeled_transforms",
    "pretrain_transforms",
    "pretrain_validation_transforms",
]
