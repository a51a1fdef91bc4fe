"""``MaskFormer`` meta-architecture: backbone -> head (pixel + transformer decoder) -> losses or
post-processed semantic / panoptic / instance predictions."""

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import BitMasks, ImageList, Instances
from torch import nn

from ...layers import fold_frozen_batchnorm
from ...modeling.criterion import SetCriterion
from ...modeling.inference import PostProcessor, normalize_and_pad, run_inference
from ...modeling.matcher import HungarianMatcher
from .variant import VariantLoss

__all__ = ["MaskFormer"]


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Mask-classification model (Mask2Former) for semantic, panoptic and instance segmentation.

    Training returns the weighted losses of ``criterion`` (and of the decoder variant's
    ``extra_loss``). Inference is the package's one inference path
    (:mod:`mask2former.modeling.inference`): :func:`normalize_and_pad`,
    :meth:`forward_network` and ``postprocessor``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        postprocessor: PostProcessor,
        num_queries: int,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        extra_loss: VariantLoss | None = None,
        channels_last: bool = False,
        compile_network: bool = False,
    ):
        """
        Args:
            backbone: a Detectron2 backbone.
            sem_seg_head: maps backbone features to the decoder output dict ("pred_logits"
                (B, Q, K+1), "pred_masks" (B, Q, H/4, W/4), "aux_outputs"); has ``num_classes``.
            criterion: loss module; called as ``criterion(outputs, targets)``, has
                ``weight_dict``.
            postprocessor: network outputs -> results of the enabled tasks.
            num_queries: Q.
            size_divisibility: pad the batch to a multiple of this; < 0: the backbone's.
            pixel_mean, pixel_std: per-channel normalisation of the input image.
            extra_loss: the loss of the decoder variant's extra queries (e.g. MP-Former's), or
                None. When set, training passes the targets to the head, whose decoder then
                returns ``outputs[extra_loss.output_key]``.
            channels_last: in eval mode, keep the 4-D weights of the backbone and head and the
                input images in the channels-last memory format
                (``MODEL.MASK_FORMER.CHANNELS_LAST``); training mode uses the default format,
                which trains faster on the CPU (see :meth:`train`).
            compile_network: at inference, run the network through ``torch.compile``
                (``TEST.COMPILE``; see :func:`mask2former.modeling.inference.eval_network`).
        """
        super().__init__()
        # Frozen batch norms run folded into their convolutions at inference (same parameters
        # and state dict; 0.78x the R50 backbone's CPU time at 800x1216).
        fold_frozen_batchnorm(backbone)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.postprocessor = postprocessor
        self.num_queries = num_queries
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.extra_loss = extra_loss
        self.channels_last = channels_last
        self.compile_network = compile_network
        self.train(self.training)

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
        # DEC_LAYERS counts the prediction before the first layer: DEC_LAYERS - 1 aux sets.
        num_aux = mf.DEC_LAYERS - 1 if mf.DEEP_SUPERVISION else 0
        base_weights = dict(weight_dict)
        for i in range(num_aux):
            weight_dict.update({f"{k}_{i}": v for k, v in base_weights.items()})
        variant = getattr(sem_seg_head.predictor, "variant", None)
        extra_loss = None if variant is None else variant.loss
        if extra_loss is not None:
            weight_dict.update(extra_loss.weight_dict)
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
        metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "postprocessor": PostProcessor.from_config(cfg, metadata),
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "extra_loss": extra_loss,
            "channels_last": mf.CHANNELS_LAST,
            "compile_network": cfg.TEST.COMPILE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

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
        if not self.training:
            return run_inference(self, batched_inputs)
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("MaskFormer: training inputs need 'instances'")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(self.format_images(images.tensor))
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        targets = self.prepare_targets(gt_instances, images)
        if self.extra_loss is None:
            losses = self.criterion(self.sem_seg_head(features), targets)
        else:
            outputs = self.sem_seg_head(features, targets=targets)
            key = self.extra_loss.output_key
            if key not in outputs:
                raise ValueError(
                    f"The decoder variant's loss reads '{key}', but the transformer decoder "
                    f"{type(self.sem_seg_head.predictor).__name__} did not return it"
                )
            extra_outputs = outputs.pop(key)
            losses = self.criterion(outputs, targets)
            losses.update(self.extra_loss(self.criterion, extra_outputs, targets))
        weight_dict = self.criterion.weight_dict
        return {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}

    def forward_network(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference contract's network: normalised, padded images (B, 3, H, W) ->
        pred_logits (B, Q, K+1) and pred_masks (B, Q, H/4, W/4) of the last prediction.

        The head's ``forward_last`` (when it has one) computes only that prediction's
        full-size masks (see ``MultiScaleMaskedTransformerDecoder.forward_last``)."""
        features = self.backbone(self.format_images(images))
        forward_last = getattr(self.sem_seg_head, "forward_last", None)
        if forward_last is not None:
            return forward_last(features)
        outputs = self.sem_seg_head(features)
        return outputs["pred_logits"], outputs["pred_masks"]

    def train(self, mode: bool = True):
        """Switch the mode, and with ``channels_last`` the weights' memory format with it:
        channels-last for inference (oneDNN's NHWC kernels, 0.75x the backbone's CPU time),
        the default format for training (channels-last made a CPU training step of the
        synthetic R18 config 1.13x slower: ``benchmarks/main_job_steps.py``). The parameters
        stay the same objects, so an optimizer holding them is unaffected."""
        super().train(mode)
        if getattr(self, "channels_last", False):
            layout = torch.contiguous_format if mode else torch.channels_last
            self.backbone.to(memory_format=layout)
            self.sem_seg_head.to(memory_format=layout)
        return self

    def format_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in the memory format of the convolutions' weights."""
        if self.channels_last and not self.training:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalised images on the model's device, zero-padded into one batch tensor
        (B, C, H_pad, W_pad) with H_pad, W_pad multiples of ``size_divisibility``.

        The model does not mask the padding: an image's prediction depends on how much padding
        its batch adds (see :class:`mask2former.predictor.Predictor`, which batches only images
        of the same padded size).
        """
        return normalize_and_pad(
            [x["image"] for x in batched_inputs],
            self.pixel_mean,
            self.pixel_std,
            size_divisibility=self.size_divisibility,
        )  # (B, C, H_pad, W_pad)

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
