"""Training dataset mappers, selected by ``cfg.INPUT.DATASET_MAPPER_NAME`` (see ``build.py``)."""

from .build import MAPPERS, build_train_mapper
from .coco_instance_new_baseline_dataset_mapper import COCOInstanceNewBaselineDatasetMapper
from .coco_panoptic_new_baseline_dataset_mapper import COCOPanopticNewBaselineDatasetMapper
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = [
    "MAPPERS",
    "build_train_mapper",
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
]
