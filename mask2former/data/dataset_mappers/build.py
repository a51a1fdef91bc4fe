"""Pick the training mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``."""

from __future__ import annotations

from .coco_instance_new_baseline_dataset_mapper import COCOInstanceNewBaselineDatasetMapper
from .coco_panoptic_new_baseline_dataset_mapper import COCOPanopticNewBaselineDatasetMapper
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = ["MAPPERS", "build_train_mapper", "register_train_mapper"]

# Official mapper names -> classes.
MAPPERS = {
    "coco_instance_lsj": COCOInstanceNewBaselineDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticNewBaselineDatasetMapper,
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
}


def register_train_mapper(
    name: str,
    mapper_cls,
    *,
    task: str,
    classes_key: str,
    num_classes_key: str = "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
) -> None:
    """Make ``INPUT.DATASET_MAPPER_NAME name`` build ``mapper_cls(cfg, is_train=True)``.

    A model family registers its own mappers from its subpackage (the data package imports no
    family). ``task`` ("semantic", "panoptic" or "instance") and ``classes_key``
    ("stuff_classes" or "thing_classes") tell the pre-training checks what the mapper needs, and
    ``num_classes_key`` which config key holds the model's class count.
    """
    from ..checks import register_mapper_needs

    MAPPERS[name] = mapper_cls
    register_mapper_needs(name, task, classes_key, num_classes_key)


def build_train_mapper(cfg):
    """The training mapper for ``cfg`` (a callable from a dataset record to a model input)."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in MAPPERS:
        raise ValueError(
            f"Unknown INPUT.DATASET_MAPPER_NAME {name!r}; valid names: {sorted(MAPPERS)}"
        )
    return MAPPERS[name](cfg, is_train=True)
