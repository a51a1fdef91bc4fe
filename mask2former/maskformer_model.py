"""``MaskFormer`` meta-architecture: backbone -> head (pixel + transformer decoder) -> losses or
post-processed semantic / panoptic / instance predictions."""

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, ImageList, Instances
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn
from torch.nn import functional as F

from .modeling.criterion import SetCriterion
from .modeling.matcher import HungarianMatcher
from .modeling.mp_former import MaskPilotingLoss, mp_loss_names
from .modeling.postprocessing import instance_inference, panoptic_inference, semantic_inference

__all__ = ["MaskFormer"]


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Mask-classification model (Mask2Former) for semantic, panoptic and instance segmentation.

    Training returns the weighted losses of ``criterion``. Inference takes the last prediction
    of the head, upsamples its masks to the padded input size and post-processes each image at
    the requested output size ("height", "width" of the input dict, default: the image size).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        mp_loss: nn.Module | None = None,
    ):
        """
        Args:
            backbone: a Detectron2 backbone.
            sem_seg_head: maps backbone features to the decoder output dict ("pred_logits"
                (B, Q, K+1), "pred_masks" (B, Q, H/4, W/4), "aux_outputs"); has ``num_classes``.
            criterion: loss module; called as ``criterion(outputs, targets)``, has
                ``weight_dict``.
            num_queries: Q.
            object_mask_threshold: panoptic: minimum class score of a kept query.
            overlap_threshold: panoptic: minimum visible fraction of a query's mask.
            metadata: dataset metadata; ``thing_dataset_id_to_contiguous_id`` tells things from
                stuff (missing: every class is stuff). May be None.
            size_divisibility: pad the batch to a multiple of this; < 0: the backbone's.
            sem_seg_postprocess_before_inference: resize mask logits to the output size before
                inference (required for panoptic and instance) instead of resizing the semantic
                scores after it.
            pixel_mean, pixel_std: per-channel normalisation of the input image.
            semantic_on, panoptic_on, instance_on: which results inference returns.
            test_topk_per_image: instance: detections kept per image.
            mp_loss: MP-Former's loss of the piloted queries (:class:`MaskPilotingLoss`), or
                None. When set, training passes the targets to the head, whose decoder must
                then return "mp_outputs".
        """
        super().__init__()
        if not semantic_on and not sem_seg_postprocess_before_inference:
            raise ValueError(
                "MaskFormer: sem_seg_postprocess_before_inference must be True when semantic_on "
                "is False (panoptic and instance inference need masks at the output size)"
            )
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.metadata = metadata
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.test_topk_per_image = test_topk_per_image
        self.mp_loss = mp_loss

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        mf = cfg.MODEL.MASK_FORMER

        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        weight_dict = {
            "loss_ce": mf.CLASS_WEIGHT,
            "loss_mask": mf.MASK_WEIGHT,
            "loss_dice": mf.DICE_WEIGHT,
        }
        base_weights = dict(weight_dict)
        # DEC_LAYERS counts the prediction before the first layer: DEC_LAYERS - 1 aux sets.
        num_aux = mf.DEC_LAYERS - 1 if mf.DEEP_SUPERVISION else 0
        for i in range(num_aux):
            weight_dict.update({f"{k}_{i}": v for k, v in base_weights.items()})
        mp_loss = None
        if cfg.MODEL.MP_FORMER.ENABLED:
            # MP-Former: the piloted queries' losses, "{name}_mp" and "{name}_mp_{i}", with the
            # matching weights.
            class_loss = cfg.MODEL.MP_FORMER.CLASS_LOSS
            mp_names = mp_loss_names(list(base_weights), num_aux, class_loss)
            weight_dict.update({k: base_weights[k.split("_mp")[0]] for k in mp_names})
            mp_loss = MaskPilotingLoss(loss_names=mp_names, class_loss=class_loss)
        criterion = SetCriterion(
            num_classes=sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=["labels", "masks"],
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": mf.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": mf.TEST.OVERLAP_THRESHOLD,
            "metadata": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE
                or mf.TEST.PANOPTIC_ON
                or mf.TEST.INSTANCE_ON
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": mf.TEST.SEMANTIC_ON,
            "instance_on": mf.TEST.INSTANCE_ON,
            "panoptic_on": mf.TEST.PANOPTIC_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "mp_loss": mp_loss,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def thing_ids(self) -> list[int]:
        """Contiguous ids of the thing classes (empty without metadata)."""
        mapping = getattr(self.metadata, "thing_dataset_id_to_contiguous_id", None) or {}
        return list(mapping.values())

    def forward(self, batched_inputs: list[dict]):
        """
        Args:
            batched_inputs: one dict per image with "image" (C, H, W) in 0-255 (RGB/BGR as
                the config's PIXEL_MEAN), for training "instances" (``gt_classes``,
                ``gt_masks`` as BitMasks or a (G, H, W) tensor), for inference optionally the
                output "height" and "width".

        Returns:
            training: dict of weighted losses (keys of ``criterion.weight_dict`` only).
            inference: one dict per image with, as switched on, "sem_seg" (K, height, width)
            scores, "panoptic_seg" ((height, width) int32 ids, segments_info) and "instances".
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)

        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise ValueError("MaskFormer: training inputs need 'instances'")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            targets = self.prepare_targets(gt_instances, images)
            if self.mp_loss is None:
                outputs = self.sem_seg_head(features)
                losses = self.criterion(outputs, targets)
            else:
                outputs = self.sem_seg_head(features, targets=targets)
                if "mp_outputs" not in outputs:
                    raise ValueError(
                        "MODEL.MP_FORMER.ENABLED is on, but the transformer decoder "
                        f"{type(self.sem_seg_head.predictor).__name__} returned no 'mp_outputs'"
                    )
                mp_outputs = outputs.pop("mp_outputs")
                losses = self.criterion(outputs, targets)
                losses.update(self.mp_loss(self.criterion, mp_outputs, targets))
            weight_dict = self.criterion.weight_dict
            return {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}

        outputs = self.sem_seg_head(features)
        return self.inference(outputs, batched_inputs, images)

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalised images on the model's device, zero-padded into one batch tensor
        (B, C, H_pad, W_pad) with H_pad, W_pad multiples of ``size_divisibility``.

        The model does not mask the padding: an image's prediction depends on how much padding
        its batch adds (see :class:`mask2former.predictor.Predictor`, which batches only images
        of the same padded size).
        """
        images = [x["image"].to(self.device) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]  # (C, H, W) each
        return ImageList.from_tensors(images, self.size_divisibility)  # (B, C, H_pad, W_pad)

    def prepare_targets(self, gt_instances: list[Instances], images: ImageList) -> list[dict]:
        """Per image, "labels" (G,) int64 and "masks" (G, H_pad, W_pad) zero-padded to the
        batch tensor size. Instances without ``gt_masks`` give empty targets."""
        h_pad, w_pad = images.tensor.shape[-2:]
        new_targets = []
        for instances in gt_instances:
            if instances.has("gt_masks"):
                gt_masks = instances.gt_masks
                if isinstance(gt_masks, BitMasks):
                    gt_masks = gt_masks.tensor
                if not isinstance(gt_masks, torch.Tensor):
                    raise TypeError(
                        f"MaskFormer: gt_masks must be BitMasks or a tensor, got {type(gt_masks)}"
                    )
                labels = instances.gt_classes
            else:
                gt_masks = torch.zeros((0, *instances.image_size), device=self.device)
                labels = torch.zeros((0,), dtype=torch.int64, device=self.device)
            padded_masks = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))  # (G, H, W)
            padded_masks[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            new_targets.append({"labels": labels.to(torch.int64), "masks": padded_masks})
        return new_targets

    def inference(
        self, outputs: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        """Post-process the last prediction of each image (see ``forward``)."""
        output_sizes = [
            (x.get("height", size[0]), x.get("width", size[1]))
            for x, size in zip(batched_inputs, images.image_sizes)
        ]
        return self.postprocess(
            outputs["pred_logits"],
            outputs["pred_masks"],
            padded_size=tuple(images.tensor.shape[-2:]),
            image_sizes=images.image_sizes,
            output_sizes=output_sizes,
        )

    def postprocess(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        *,
        padded_size: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        output_sizes: Sequence[tuple[int, int]],
    ) -> list[dict]:
        """Raw decoder outputs -> one result dict per image, as ``forward`` returns them.

        Args:
            pred_logits: (B, Q, K+1) class logits of the last prediction point.
            pred_masks: (B, Q, h, w) mask logits at 1/4 of the padded input.
            padded_size: (H_pad, W_pad) of the input batch tensor.
            image_sizes: per image, the (H, W) of its valid (unpadded) part of the input.
            output_sizes: per image, the (height, width) the results are resized to.
        """
        mask_pred_results = F.interpolate(
            pred_masks, size=padded_size, mode="bilinear", align_corners=False
        )  # (B, Q, H_pad, W_pad)

        num_classes = self.sem_seg_head.num_classes
        processed_results = []
        for mask_cls, mask_pred, (height, width), image_size in zip(
            pred_logits, mask_pred_results, output_sizes, image_sizes
        ):
            result = {}
            if self.sem_seg_postprocess_before_inference:
                mask_pred = retry_if_cuda_oom(sem_seg_postprocess)(
                    mask_pred, image_size, height, width
                )  # (Q, height, width)
                mask_cls = mask_cls.to(mask_pred)

            if self.semantic_on:
                sem_seg = retry_if_cuda_oom(semantic_inference)(mask_cls, mask_pred)
                if not self.sem_seg_postprocess_before_inference:
                    sem_seg = retry_if_cuda_oom(sem_seg_postprocess)(
                        sem_seg, image_size, height, width
                    )  # (K, height, width)
                result["sem_seg"] = sem_seg
            if self.panoptic_on:
                result["panoptic_seg"] = retry_if_cuda_oom(panoptic_inference)(
                    mask_cls,
                    mask_pred,
                    num_classes=num_classes,
                    object_mask_threshold=self.object_mask_threshold,
                    overlap_threshold=self.overlap_threshold,
                    thing_ids=self.thing_ids,
                )
            if self.instance_on:
                result["instances"] = retry_if_cuda_oom(instance_inference)(
                    mask_cls,
                    mask_pred,
                    num_classes=num_classes,
                    test_topk_per_image=self.test_topk_per_image,
                    thing_ids=self.thing_ids if self.panoptic_on else None,
                    image_size=(height, width),
                )
            processed_results.append(result)
        return processed_results
