"""``TransfinerROIHeads``: Detectron2's ``StandardROIHeads`` with Mask Transfiner's mask branch
(spec section 11), registered in ``ROI_HEADS_REGISTRY``.

The box branch is the stock one. The mask branch pools 14x14 features of every RoI and 28/56/112
features of the first ``MAX_REFINE_ROIS_*`` RoIs of each image (the first foreground proposals
in training, the top-scoring detections at test time) and hands them to the mask head.
"""

from __future__ import annotations

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    StandardROIHeads,
    build_mask_head,
    select_foreground_proposals,
)
from detectron2.structures import Instances

from .pooler import TransfinerPooler

__all__ = ["TransfinerROIHeads"]


@ROI_HEADS_REGISTRY.register()
class TransfinerROIHeads(StandardROIHeads):
    """Standard R-CNN heads whose mask branch is Mask Transfiner's."""

    @configurable
    def __init__(self, *, max_refine_rois_train: int, max_refine_rois_test: int, **kwargs):
        """
        Args:
            max_refine_rois_train / max_refine_rois_test: RoIs refined per image.
            kwargs: of ``StandardROIHeads``; ``mask_pooler`` must be a ``TransfinerPooler``.
        """
        super().__init__(**kwargs)
        if self.mask_on and not isinstance(self.mask_pooler, TransfinerPooler):
            raise ValueError("TransfinerROIHeads needs a TransfinerPooler as mask_pooler, got "
                             f"{type(self.mask_pooler).__name__}")
        self.max_refine_rois_train = max_refine_rois_train
        self.max_refine_rois_test = max_refine_rois_test

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["max_refine_rois_train"] = cfg.MODEL.TRANSFINER.MAX_REFINE_ROIS_TRAIN
        ret["max_refine_rois_test"] = cfg.MODEL.TRANSFINER.MAX_REFINE_ROIS_TEST
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        if not cfg.MODEL.MASK_ON:
            return {}
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        head = cfg.MODEL.ROI_MASK_HEAD
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"ROI_HEADS.IN_FEATURES {in_features} must have equal channels, "
                             f"got {sorted(channels)}")
        if not head.POOLER_TYPE:
            raise ValueError("TransfinerROIHeads needs ROI_MASK_HEAD.POOLER_TYPE (ROIAlignV2)")
        (in_channels,) = channels
        pooler = TransfinerPooler(
            output_size=head.POOLER_RESOLUTION,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=head.POOLER_SAMPLING_RATIO,
            pooler_type=head.POOLER_TYPE,
            level_sizes=tuple(cfg.MODEL.TRANSFINER.LEVEL_SIZES),
            channels=in_channels,
            num_refine_convs=cfg.MODEL.TRANSFINER.P2_REFINE_CONVS,
        )
        shape = ShapeSpec(
            channels=in_channels, width=head.POOLER_RESOLUTION, height=head.POOLER_RESOLUTION
        )
        return {
            "mask_in_features": in_features,
            "mask_pooler": pooler,
            "mask_head": build_mask_head(cfg, shape),
        }

    def _forward_mask(self, features: dict, instances: list[Instances]):
        """Training: the loss dict of the mask head; inference: ``instances`` with
        ``pred_masks``. The refined subset is chosen per image (spec 12.1)."""
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        feats = [features[f] for f in self.mask_in_features]
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        limit = self.max_refine_rois_train if self.training else self.max_refine_rois_test
        pooled = self.mask_pooler(feats, boxes, limit)
        return self.mask_head(pooled, instances)
