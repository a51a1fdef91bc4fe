"""Data: training mappers, built-in dataset registrations, custom-dataset helpers and checks,
and datasets declared in the config (``DATASETS.CUSTOM``).

Importing this package registers the built-in datasets (lazily: nothing is read from disk).
"""

from . import datasets  # noqa: F401  (registers the built-in datasets)
from .checks import check_dataset_config
from .custom import (
    register_coco_instances_dataset,
    register_coco_panoptic_dataset,
    register_semantic_folder,
)
from .dataset_mappers import (
    MAPPERS,
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_train_mapper,
)
from .declared import register_declared_datasets
from .file_checks import check_declared_files
from .utils import read_image_checked, read_label_map

__all__ = [
    "MAPPERS",
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "build_train_mapper",
    "check_dataset_config",
    "check_declared_files",
    "read_image_checked",
    "read_label_map",
    "register_coco_instances_dataset",
    "register_coco_panoptic_dataset",
    "register_declared_datasets",
    "register_semantic_folder",
]
