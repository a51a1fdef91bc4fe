"""``TransfinerMaskHead``: Mask R-CNN's coarse head plus the incoherence detector and the
quadtree transformer refinement (spec sections 3-8), registered in ``ROI_MASK_HEAD_REGISTRY``.

Module names follow the reference's ``MaskRCNNConvUpsampleHead`` (``mask_fcn1``..,
``mask_fcn_uncertain1``.., ``deconv``, ``predictor``, ``deconv_bo``, ``predictor_bo``,
``deconv_uncertain``, ``predictor_uncertain``, ``predictor_semantic_s``, ``encoder``) so that
released checkpoints load. Unlike the reference, the incoherence branch outputs logits (its loss
is BCE-with-logits, safe under AMP) and the boundary / semantic branches run only in training.
"""

from __future__ import annotations

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
from detectron2.structures import Instances
from torch import nn
from torch.nn import functional as F

from .encoder import TransfinerEncoder
from .loss import build_mask_targets, dice_loss, semantic_target
from .pooler import TransfinerPooled
from .quadtree import pack_selected, refine_levels, sample_nodes, select_nodes, write_levels

__all__ = ["TransfinerMaskHead", "blur_binomial"]


def blur_binomial(masks: torch.Tensor, kernel_size: int = 7) -> torch.Tensor:
    """Blur (R, 1, H, W) with a normalised binomial kernel, stride 1, zero padding (the
    reference's ``kornia.filters.blur_pool2d(x, 7, stride=1)``)."""
    coeffs = [1.0]  # Pascal's triangle row kernel_size - 1
    for _ in range(kernel_size - 1):
        coeffs = [a + b for a, b in zip([0.0, *coeffs], [*coeffs, 0.0])]
    row = masks.new_tensor(coeffs)  # (k,)
    kernel = torch.outer(row, row) / row.sum() ** 2  # (k, k)
    return F.conv2d(masks, kernel[None, None], padding=kernel_size // 2)  # (R, 1, H, W)


def _conv_stack(
    prefix: str, module: nn.Module, in_ch: int, dims: list[int], norm: str
) -> list[Conv2d]:
    """3x3 conv + ReLU layers registered on ``module`` as ``{prefix}1``, ``{prefix}2``, ..."""
    layers = []
    for k, dim in enumerate(dims):
        conv = Conv2d(in_ch, dim, kernel_size=3, padding=1, bias=not norm,
                      norm=get_norm(norm, dim), activation=nn.ReLU())
        module.add_module(f"{prefix}{k + 1}", conv)
        layers.append(conv)
        in_ch = dim
    return layers


@ROI_MASK_HEAD_REGISTRY.register()
class TransfinerMaskHead(BaseMaskRCNNHead):
    """Coarse masks, incoherence, and quadtree refinement of the top RoIs to 112 x 112.

    Input: a :class:`~mask2former.models.transfiner.pooler.TransfinerPooled`. Training returns
    ``loss_mask``, ``loss_mask_uncertain``, ``loss_mask_refine``, ``loss_semantic``,
    ``loss_bound``; inference sets ``pred_masks`` (N, 1, s, s) probabilities, s = 112.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: list[int],
        conv_norm: str = "",
        inc_conv_dims: list[int],
        encoder: TransfinerEncoder,
        level_sizes: tuple[int, ...],
        inc_thresh_train: tuple[float, ...],
        inc_thresh_test: tuple[float, ...],
        nodes_per_level: int,
        min_nodes_per_level: int,
        residue_thresh: float,
        crop_thresh: float,
        signed_residue: bool = True,
        loss_weights: dict[str, float],
        dilate_and_blur: bool = False,
        upsample_align_corners: bool = True,
        **kwargs,
    ):
        """
        Args:
            input_shape: of the 14x14 RoI features.
            num_classes: mask classes (1: class-agnostic).
            conv_dims: widths of the coarse branch's 3x3 convs, then of its deconv.
            conv_norm: norm of the 3x3 convs (both branches).
            inc_conv_dims: widths of the incoherence branch's 3x3 convs (the last one is also
                its deconv width).
            encoder: node encoder, sequence encoder and pixel decoder.
            level_sizes: quadtree level sides (28, 56, 112); level_sizes[0] = 2 x input side.
            inc_thresh_train, inc_thresh_test: node selection thresholds per level.
            nodes_per_level: training nodes drawn per level and RoI.
            min_nodes_per_level: training RoIs with fewer nodes at any level get no refine loss.
            residue_thresh, crop_thresh: incoherence target thresholds.
            signed_residue: incoherence target from the signed residue (the reference's code).
            loss_weights: "coarse", "incoherent", "refine", "semantic", "boundary".
            dilate_and_blur: test-time dilation of the last node set and blur of the result.
            upsample_align_corners: of the 2x upsamplings between quadtree levels at inference
                (True: the reference; see :func:`write_levels`).
        """
        super().__init__(**kwargs)
        if level_sizes[0] != 2 * input_shape.height:
            raise ValueError(
                f"LEVEL_SIZES[0] ({level_sizes[0]}) must be twice ROI_MASK_HEAD."
                f"POOLER_RESOLUTION ({input_shape.height}): the coarse mask is the top level"
            )
        if any(b != 2 * a for a, b in zip(level_sizes, level_sizes[1:])):
            raise ValueError(f"each quadtree level must double the previous one: {level_sizes}")
        channels = input_shape.channels
        self.conv_norm_relus = _conv_stack("mask_fcn", self, channels, conv_dims[:-1], conv_norm)
        fcn_dim = conv_dims[-2] if len(conv_dims) > 1 else channels
        self.deconv = ConvTranspose2d(fcn_dim, conv_dims[-1], kernel_size=2, stride=2)
        self.deconv_bo = ConvTranspose2d(fcn_dim, conv_dims[-1], kernel_size=2, stride=2)
        self.predictor = Conv2d(conv_dims[-1], num_classes, kernel_size=1)
        self.predictor_bo = Conv2d(conv_dims[-1], 1, kernel_size=1)
        self.encoder = encoder
        if fcn_dim != channels:
            raise ValueError(f"the coarse convs must keep the {channels} input channels "
                             f"(the incoherence branch adds their output to the input)")
        self.conv_norm_relus_uncertain = _conv_stack(
            "mask_fcn_uncertain", self, channels, list(inc_conv_dims), conv_norm
        )
        inc_dim = inc_conv_dims[-1]
        self.deconv_uncertain = ConvTranspose2d(inc_dim, inc_dim, kernel_size=2, stride=2)
        self.predictor_uncertain = Conv2d(inc_dim, 1, kernel_size=1)
        self.predictor_semantic_s = Conv2d(channels, 1, kernel_size=1)
        for layer in [*self.conv_norm_relus, self.deconv, self.deconv_bo,
                      *self.conv_norm_relus_uncertain, self.deconv_uncertain]:
            weight_init.c2_msra_fill(layer)
        for layer in (self.predictor, self.predictor_uncertain, self.predictor_bo):
            nn.init.normal_(layer.weight, std=0.001)
            nn.init.constant_(layer.bias, 0)
        self.level_sizes = tuple(level_sizes)
        self.inc_thresh_train = tuple(inc_thresh_train)
        self.inc_thresh_test = tuple(inc_thresh_test)
        self.nodes_per_level = nodes_per_level
        self.min_nodes_per_level = min_nodes_per_level
        self.residue_thresh = residue_thresh
        self.crop_thresh = crop_thresh
        self.signed_residue = signed_residue
        self.loss_weights = dict(loss_weights)
        self.dilate_and_blur = dilate_and_blur
        self.upsample_align_corners = upsample_align_corners

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        t = cfg.MODEL.TRANSFINER
        head = cfg.MODEL.ROI_MASK_HEAD
        ret.update(
            input_shape=input_shape,
            num_classes=1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            conv_dims=[head.CONV_DIM] * (head.NUM_CONV + 1),
            conv_norm=head.NORM,
            inc_conv_dims=list(t.INC_CONV_DIMS),
            encoder=TransfinerEncoder(
                in_channels=input_shape.channels, d_model=t.HIDDEN_DIM, nhead=t.NHEADS,
                num_layers=t.ENC_LAYERS, dim_feedforward=t.DIM_FEEDFORWARD, dropout=t.DROPOUT,
                node_context=t.NODE_CONTEXT_3X3,
            ),
            level_sizes=tuple(t.LEVEL_SIZES),
            inc_thresh_train=tuple(t.INC_THRESH_TRAIN),
            inc_thresh_test=tuple(t.INC_THRESH_TEST),
            nodes_per_level=t.NODES_PER_LEVEL_TRAIN,
            min_nodes_per_level=t.MIN_NODES_PER_LEVEL,
            residue_thresh=t.GT_RESIDUE_THRESH,
            crop_thresh=t.GT_CROP_THRESH,
            signed_residue=t.GT_SIGNED_RESIDUE,
            loss_weights={
                "coarse": t.COARSE_WEIGHT, "incoherent": t.INCOHERENT_WEIGHT,
                "refine": t.REFINE_WEIGHT, "semantic": t.SEMANTIC_WEIGHT,
                "boundary": t.BOUNDARY_WEIGHT,
            },
            dilate_and_blur=t.TEST_DILATE_AND_BLUR,
            upsample_align_corners=t.UPSAMPLE_ALIGN_CORNERS,
        )
        return ret

    def layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coarse logits (R, K, S, S), incoherence logits (R, 1, S, S), and the coarse branch's
        features (R, C, P, P), from 14x14 RoI features x (R, C, P, P); S = 2P."""
        f = x
        for layer in self.conv_norm_relus:
            f = layer(f)  # (R, C, P, P)
        inc = x.detach() + f  # (R, C, P, P)
        for layer in self.conv_norm_relus_uncertain:
            inc = layer(inc)  # (R, C_inc, P, P)
        inc_logits = self.predictor_uncertain(self.deconv_uncertain(inc))  # (R, 1, S, S)
        coarse = self.predictor(F.relu(self.deconv(f)))  # (R, K, S, S)
        return coarse, inc_logits, f

    def forward(self, pooled: TransfinerPooled, instances: list[Instances]):
        coarse, inc_logits, f = self.layers(pooled.coarse)
        if self.training:
            boundary = self.predictor_bo(F.relu(self.deconv_bo(f)))  # (R, 1, S, S)
            semantic = self.predictor_semantic_s(pooled.p2_residual)  # (B, 1, H/4, W/4)
            return self.losses(coarse, inc_logits, boundary, semantic, pooled, instances)
        self.predict(coarse, inc_logits, pooled, instances)
        return instances

    def _class_channel(self, coarse: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(R, K, S, S) logits -> (R, 1, S, S) of each RoI's class (K = 1: class-agnostic)."""
        if coarse.shape[1] == 1:
            return coarse
        index = torch.arange(coarse.shape[0], device=coarse.device)
        return coarse[index, classes].unsqueeze(1)

    def losses(self, coarse, inc_logits, boundary, semantic, pooled, instances) -> dict:
        """The loss dict of spec section 7 (weights from ``loss_weights``)."""
        device = coarse.device
        targets = build_mask_targets(
            instances, coarse_size=coarse.shape[-1], context_size=pooled.coarse.shape[-1],
            level_sizes=self.level_sizes, refine_limit=pooled.refine_limit,
            residue_thresh=self.residue_thresh, crop_thresh=self.crop_thresh,
            signed_residue=self.signed_residue, device=device,
        )
        w = self.loss_weights
        sem_t = semantic_target(instances, tuple(semantic.shape[-2:]), pooled.p2_stride, device)
        loss_semantic = F.binary_cross_entropy_with_logits(semantic, sem_t)
        if coarse.shape[0] == 0:
            zero = coarse.sum() * 0 + inc_logits.sum() * 0 + boundary.sum() * 0
            zero = zero + sum(p.sum() * 0 for p in self.encoder.parameters())
            return {
                "loss_mask": zero, "loss_mask_uncertain": zero, "loss_mask_refine": zero,
                "loss_semantic": loss_semantic * w["semantic"], "loss_bound": zero,
            }
        logits = self._class_channel(coarse, targets.classes)  # (R, 1, S, S)
        loss_mask = F.binary_cross_entropy_with_logits(logits.squeeze(1), targets.coarse)
        inc = inc_logits.squeeze(1)  # (R, S, S)
        loss_inc = dice_loss(inc.sigmoid(), targets.incoherence) + (
            F.binary_cross_entropy_with_logits(inc, targets.incoherence)
        )
        # The reference adds the same BCE twice (pytorch_toolbelt JointLoss of two BceLoss).
        loss_bound = 2 * F.binary_cross_entropy_with_logits(boundary.squeeze(1), targets.boundary)
        loss_refine = self.refine_loss(logits, inc_logits, pooled, targets)
        return {
            "loss_mask": loss_mask * w["coarse"],
            "loss_mask_uncertain": loss_inc * w["incoherent"],
            "loss_mask_refine": loss_refine * w["refine"],
            "loss_semantic": loss_semantic * w["semantic"],
            "loss_bound": loss_bound * w["boundary"],
        }

    def refine_loss(self, logits, inc_logits, pooled: TransfinerPooled, targets) -> torch.Tensor:
        """L1 between refined probabilities and GT on every token of the refined RoIs that have
        enough nodes at every level; if none has, on the context tokens of all refined RoIs."""
        index = pooled.refine_index  # (R',)
        if index.numel() == 0:
            return sum(p.sum() * 0 for p in self.encoder.parameters()) + logits.sum() * 0
        probs = logits[index].detach().sigmoid()  # (R', 1, S, S)
        selected = select_nodes(
            inc_logits[index].detach().sigmoid(), self.inc_thresh_train, self.level_sizes
        )
        level_index, valid = [], torch.ones_like(index, dtype=torch.bool)
        for sel in selected:
            idx, ok = sample_nodes(sel, self.nodes_per_level, self.min_nodes_per_level)
            level_index.append(idx)  # (R', n)
            valid = valid & ok
        pad = (~valid)[:, None].expand(-1, self.nodes_per_level)  # (R', n)
        outputs = refine_levels(
            self.encoder, context_feats=pooled.coarse[index], coarse_probs=probs,
            level_feats=pooled.fine, level_index=level_index, level_padding=[pad] * len(selected),
        )
        preds = torch.cat(outputs, dim=1).sigmoid()  # (R', P*P + levels * n)
        gts = [targets.context.flatten(1)] + [
            gt.flatten(1).gather(1, idx) for gt, idx in zip(targets.levels, level_index)
        ]
        gt = torch.cat(gts, dim=1)  # (R', P*P + levels * n)
        num_context = outputs[0].shape[1]
        is_context = torch.arange(gt.shape[1], device=gt.device) < num_context  # (L,)
        weight = torch.where(
            valid.any(), valid[:, None].expand_as(gt), is_context[None, :].expand_as(gt)
        ).float()  # (R', L)
        return ((preds - gt).abs() * weight).sum() / weight.sum().clamp(min=1)

    @torch.no_grad()
    def refined_masks(
        self, probs: torch.Tensor, inc_logits: torch.Tensor, pooled: TransfinerPooled
    ) -> torch.Tensor:
        """Refine the RoIs of ``pooled.refine_index``: (R', 1, S, S) coarse probabilities and
        incoherence logits -> (R', 1, s, s) at the finest level."""
        selected = select_nodes(
            inc_logits.sigmoid(), self.inc_thresh_test, self.level_sizes,
            dilate_last=self.dilate_and_blur,
        )
        packed = [pack_selected(sel) for sel in selected]
        level_index = [idx for idx, _ in packed]
        level_padding = [pad for _, pad in packed]
        outputs = refine_levels(
            self.encoder, context_feats=pooled.coarse[pooled.refine_index], coarse_probs=probs,
            level_feats=pooled.fine, level_index=level_index, level_padding=level_padding,
        )
        level_probs = [o.sigmoid() for o in outputs[1:]]
        mask = write_levels(
            probs, level_probs, level_index, level_padding, self.level_sizes,
            align_corners=self.upsample_align_corners,
        )  # (R', 1, s, s)
        return blur_binomial(mask) if self.dilate_and_blur else mask

    def predict(self, coarse, inc_logits, pooled: TransfinerPooled, instances) -> None:
        """Set ``pred_masks`` (n, 1, s, s) probabilities on each image's instances."""
        classes = torch.cat([x.pred_classes for x in instances]) if instances else None
        size = self.level_sizes[-1]
        if coarse.shape[0] == 0:
            masks = coarse.new_zeros((0, 1, size, size))
        else:
            probs = self._class_channel(coarse, classes).sigmoid()  # (N, 1, S, S)
            masks = F.interpolate(probs, (size, size), mode="bilinear", align_corners=False)
            index = pooled.refine_index  # (N',)
            if index.numel():
                refined = self.refined_masks(probs[index], inc_logits[index], pooled)
                masks = masks.index_copy(0, index, refined)  # (N, 1, s, s)
        for mask, inst in zip(masks.split([len(x) for x in instances]), instances):
            inst.pred_masks = mask
