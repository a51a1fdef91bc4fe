"""MaskFormer head: a pixel decoder followed by a transformer decoder ("predictor")."""

import logging

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .pixel_decoder.fpn import build_pixel_decoder
from .transformer_decoder.mask2former_transformer_decoder import build_transformer_decoder

logger = logging.getLogger(__name__)


def _insert_pixel_decoder_prefix(state_dict: dict, prefix: str) -> int:
    """Move legacy head keys (before the pixel decoder became a submodule) under it.

    Keys below ``prefix`` that are neither under ``predictor.`` nor already under
    ``pixel_decoder.`` get ``pixel_decoder.`` inserted after ``prefix``; the rule is idempotent,
    so checkpoints that lack version metadata but use the current layout are left unchanged.
    Returns the number of renamed keys.
    """
    keep = (prefix + "predictor.", prefix + "pixel_decoder.")
    legacy = [k for k in state_dict if k.startswith(prefix) and not k.startswith(keep)]
    for k in legacy:
        state_dict[prefix + "pixel_decoder." + k[len(prefix) :]] = state_dict.pop(k)
    return len(legacy)


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """Runs the pixel decoder, then the transformer decoder on the chosen features.

    Args:
        input_shape: backbone features the head reads (channels and stride).
        num_classes: number of classes K.
        pixel_decoder: module with ``forward_features`` (see ``build_pixel_decoder``).
        loss_weight: weight of the head's losses (kept for configs; the criterion weighs them).
        ignore_value: label ignored in semantic targets.
        transformer_predictor: the transformer decoder.
        transformer_in_feature: what the transformer decoder reads: "multi_scale_pixel_decoder"
            (the pixel decoder's 3 multi-scale maps), "pixel_embedding" (the mask features),
            "transformer_encoder" (the pixel decoder's encoder output) or a backbone level name.
    """

    _version = 2

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in shapes]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if in_feature in ("transformer_encoder", "multi_scale_pixel_decoder"):
            predictor_in_channels = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
        elif in_feature == "pixel_embedding":
            predictor_in_channels = cfg.MODEL.SEM_SEG_HEAD.MASK_DIM
        elif in_feature in input_shape:
            predictor_in_channels = input_shape[in_feature].channels
        else:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={in_feature!r} is neither "
                "'multi_scale_pixel_decoder', 'pixel_embedding', 'transformer_encoder' nor a "
                f"backbone feature ({sorted(input_shape)})"
            )
        return {
            "input_shape": {
                k: v for k, v in input_shape.items() if k in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
            },
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "transformer_in_feature": in_feature,
            "transformer_predictor": build_transformer_decoder(
                cfg, predictor_in_channels, mask_classification=True
            ),
        }

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            renamed = _insert_pixel_decoder_prefix(state_dict, prefix)
            if renamed:
                logger.warning(
                    f"Weight format of {type(self).__name__} has changed: moved {renamed} keys "
                    f"under {prefix}pixel_decoder. Please upgrade the checkpoint."
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(
        self,
        features: dict[str, torch.Tensor],
        mask: torch.Tensor | None = None,
        targets: list[dict] | None = None,
    ):
        """Backbone features by name -> the transformer decoder's prediction dict.

        ``targets`` (training targets) are passed on to the transformer decoder only when
        given (MP-Former's piloting needs them); other decoders never see the argument.
        """
        return self.layers(features, mask, targets)

    def layers(
        self,
        features: dict[str, torch.Tensor],
        mask: torch.Tensor | None = None,
        targets: list[dict] | None = None,
    ):
        mask_features, predictor_input = self._decoder_inputs(features)
        if targets is None:
            return self.predictor(predictor_input, mask_features, mask)
        return self.predictor(predictor_input, mask_features, mask, targets=targets)

    def forward_last(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: backbone features -> the last prediction point only, ``pred_logits``
        (B, Q, K+1) and ``pred_masks`` (B, Q, H/4, W/4) (the transformer decoder's
        ``forward_last`` when it has one: it skips the full-size masks of the earlier points)."""
        mask_features, predictor_input = self._decoder_inputs(features)
        forward_last = getattr(self.predictor, "forward_last", None)
        if forward_last is not None:
            return forward_last(predictor_input, mask_features)
        outputs = self.predictor(predictor_input, mask_features, None)
        return outputs["pred_logits"], outputs["pred_masks"]

    def _decoder_inputs(self, features: dict[str, torch.Tensor]):
        """The pixel decoder's mask features (B, MASK_DIM, H/4, W/4) and the transformer
        decoder's input selected by ``transformer_in_feature``."""
        mask_features, transformer_encoder_features, multi_scale_features = (
            self.pixel_decoder.forward_features(features)
        )
        if self.transformer_in_feature == "multi_scale_pixel_decoder":
            predictor_input = multi_scale_features
        elif self.transformer_in_feature == "transformer_encoder":
            if transformer_encoder_features is None:
                raise ValueError(
                    "TRANSFORMER_IN_FEATURE 'transformer_encoder' needs a pixel decoder that "
                    f"returns encoder features; {type(self.pixel_decoder).__name__} does not."
                )
            predictor_input = transformer_encoder_features
        elif self.transformer_in_feature == "pixel_embedding":
            predictor_input = mask_features
        else:
            predictor_input = features[self.transformer_in_feature]
        return mask_features, predictor_input
