"""COCO instance segmentation with large-scale jitter (DATASET_MAPPER_NAME "coco_instance_lsj")."""

from __future__ import annotations

from .common import instance_targets
from .lsj_dataset_mapper import LSJDatasetMapper

__all__ = ["COCOInstanceNewBaselineDatasetMapper"]


class COCOInstanceNewBaselineDatasetMapper(LSJDatasetMapper):
    """One target per non-crowd annotation (polygons, RLE or bitmask); masks emptied by the crop
    are dropped. See :class:`LSJDatasetMapper` for the output keys."""

    def _targets(self, dataset_dict, transforms, original_shape, image_shape):
        classes, masks = instance_targets(
            dataset_dict, transforms, original_shape, image_shape, type(self).__name__
        )
        # As Detectron2's filter_empty_instances in the official mapper: the crop can empty a mask.
        keep = [i for i, mask in enumerate(masks) if mask.any()]
        return [classes[i] for i in keep], [masks[i] for i in keep]
