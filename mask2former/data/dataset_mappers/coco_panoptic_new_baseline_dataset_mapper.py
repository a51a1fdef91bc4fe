"""COCO panoptic segmentation with large-scale jitter (DATASET_MAPPER_NAME "coco_panoptic_lsj")."""

from __future__ import annotations

from .common import panoptic_targets
from .lsj_dataset_mapper import LSJDatasetMapper

__all__ = ["COCOPanopticNewBaselineDatasetMapper"]


class COCOPanopticNewBaselineDatasetMapper(LSJDatasetMapper):
    """One target per non-crowd panoptic segment (things and stuff), read from the record's
    "pan_seg_file_name" PNG and "segments_info". See :class:`LSJDatasetMapper` for the outputs.

    As in the official mapper, segments emptied by the crop are kept, with all-zero masks (and
    zero boxes): only the instance mapper filters empty targets.
    """

    def _targets(self, dataset_dict, transforms, original_shape, image_shape):
        return panoptic_targets(dataset_dict, transforms, image_shape, type(self).__name__)
