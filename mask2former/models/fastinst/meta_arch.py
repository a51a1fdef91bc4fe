"""``FastInst`` meta-architecture: backbone -> FastInst head -> losses or post-processed results.

Pre-processing, target padding, the network contract and inference are Mask2Former's
(:class:`~mask2former.models.mask2former.maskformer_model.MaskFormer`); FastInst brings its
config keys (``MODEL.FASTINST``), its criterion and the training pass that hands the targets
and the matcher to the decoder (GT-mask-guided learning).
"""

from __future__ import annotations

import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head

from ...modeling.inference import PostProcessor, run_inference
from ..mask2former.maskformer_model import MaskFormer
from .criterion import FastInstCriterion, FastInstMatcher

__all__ = ["FastInst"]


@META_ARCH_REGISTRY.register()
class FastInst(MaskFormer):
    """FastInst (He et al., CVPR 2023) for instance (and semantic / panoptic) segmentation.

    The constructor is :class:`MaskFormer`'s (keyword-only; ``sem_seg_head`` a
    :class:`FastInstHead`, ``criterion`` a :class:`FastInstCriterion`). The inference contract's
    ``pred_masks`` are at 1/8 of the padded input (FastInst has no 1/4 features); the
    post-processor upsamples them to the input size, as the official model does.
    """

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        fi = cfg.MODEL.FASTINST
        matcher = FastInstMatcher(
            cost_class=fi.CLASS_WEIGHT,
            cost_mask=fi.MASK_WEIGHT,
            cost_dice=fi.DICE_WEIGHT,
            cost_location=fi.LOCATION_WEIGHT,
            num_points=fi.TRAIN_NUM_POINTS,
        )
        base = {"loss_ce": fi.CLASS_WEIGHT, "loss_mask": fi.MASK_WEIGHT,
                "loss_dice": fi.DICE_WEIGHT}
        weight_dict = dict(base)
        if fi.DEEP_SUPERVISION:
            # L guided + (initial + L - 1 intermediate) predictions.
            for i in range(2 * fi.DEC_LAYERS):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        weight_dict["loss_proposal"] = fi.PROPOSAL_WEIGHT
        criterion = FastInstCriterion(
            num_classes=sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=fi.NO_OBJECT_WEIGHT,
            losses=["labels", "masks"],
            num_points=fi.TRAIN_NUM_POINTS,
            oversample_ratio=fi.OVERSAMPLE_RATIO,
            importance_sample_ratio=fi.IMPORTANCE_SAMPLE_RATIO,
        )
        metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        postprocessor = PostProcessor.from_config(cfg, metadata, test=fi.TEST)
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "postprocessor": postprocessor,
            "num_queries": fi.NUM_OBJECT_QUERIES,
            "size_divisibility": fi.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "compile_network": cfg.TEST.COMPILE,
        }

    def forward(self, batched_inputs: list[dict]):
        """
        Args:
            batched_inputs: per image "image" (3, H, W) 0-255; training: "instances"
                (``gt_classes``, ``gt_masks``); inference: optionally "height", "width".

        Returns:
            training: the weighted losses (keys of ``criterion.weight_dict``); inference: per
            image the results of the enabled tasks (:func:`run_inference`).
        """
        if not self.training:
            return run_inference(self, batched_inputs)
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("FastInst: training inputs need 'instances'")
        images = self.preprocess_image(batched_inputs)  # (B, 3, H_pad, W_pad)
        features = self.backbone(images.tensor)
        targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs],
                                       images)
        outputs = self.sem_seg_head(features, targets=targets, matcher=self.criterion.matcher)
        losses = self.criterion(outputs, targets)
        weight_dict = self.criterion.weight_dict
        return {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}

    def forward_network(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference contract's network: normalised, padded images (B, 3, H, W) ->
        pred_logits (B, N, K+1) and pred_masks (B, N, H/8, W/8) of the last layer."""
        outputs = self.sem_seg_head(self.backbone(images))
        return outputs["pred_logits"], outputs["pred_masks"]
