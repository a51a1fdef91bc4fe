"""MaskFormerHead: builds from a config, runs, and upgrades legacy checkpoints."""

import pytest
import torch
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from test_pixel_decoder import INPUT_SHAPE, _hw, tiny_cfg, tiny_features
from torch import nn

from mask2former.models.mask2former import MaskFormerHead
from mask2former.models.mask2former.pixel_decoder.fpn import BasePixelDecoder
from mask2former.models.mask2former.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder


def tiny_head_cfg(pixel_decoder="MSDeformAttnPixelDecoder", in_feature="multi_scale_pixel_decoder"):
    cfg = tiny_cfg(pixel_decoder, NAME="MaskFormerHead", NUM_CLASSES=3, IGNORE_VALUE=255)
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_IN_FEATURE = in_feature
    mf.HIDDEN_DIM, mf.NHEADS, mf.DIM_FEEDFORWARD = 32, 4, 64
    mf.NUM_OBJECT_QUERIES, mf.DEC_LAYERS = 4, 4
    return cfg


def build_head(cfg) -> MaskFormerHead:
    torch.manual_seed(0)
    return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, INPUT_SHAPE)


@pytest.mark.parametrize(
    "pixel_decoder, cls",
    [
        ("MSDeformAttnPixelDecoder", MSDeformAttnPixelDecoder),
        ("BasePixelDecoder", BasePixelDecoder),
    ],
)
def test_head_from_config_runs(pixel_decoder, cls):
    head = build_head(tiny_head_cfg(pixel_decoder))
    assert isinstance(head.pixel_decoder, cls)
    assert head.num_classes == 3 and head.ignore_value == 255
    out = head(tiny_features())
    assert out["pred_logits"].shape == (2, 4, 4)
    assert out["pred_masks"].shape == (2, 4, *_hw(4))
    assert len(out["aux_outputs"]) == 3


def test_transformer_encoder_feature_needs_an_encoder():
    head = build_head(tiny_head_cfg("BasePixelDecoder", in_feature="transformer_encoder"))
    with pytest.raises(ValueError, match="encoder features"):
        head(tiny_features())


def test_unknown_transformer_in_feature_is_rejected():
    with pytest.raises(ValueError, match="TRANSFORMER_IN_FEATURE='res7'"):
        build_head(tiny_head_cfg(in_feature="res7"))


class Wrapper(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.sem_seg_head = head


def test_legacy_keys_move_under_pixel_decoder():
    model = Wrapper(build_head(tiny_head_cfg()))
    legacy = {
        k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v
        for k, v in model.state_dict().items()
    }  # a plain dict: no version metadata, old layout
    fresh = Wrapper(build_head(tiny_head_cfg()))
    nn.init.zeros_(fresh.sem_seg_head.pixel_decoder.mask_features.weight)
    result = fresh.load_state_dict(legacy, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)


def test_current_keys_without_metadata_load_unchanged():
    model = Wrapper(build_head(tiny_head_cfg()))
    plain = dict(model.state_dict())  # version metadata lost, e.g. in a converted .pkl
    result = Wrapper(build_head(tiny_head_cfg())).load_state_dict(plain, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_state_dict_records_version_2():
    state = Wrapper(build_head(tiny_head_cfg())).state_dict()
    assert state._metadata["sem_seg_head"]["version"] == 2
    assert state._metadata["sem_seg_head.predictor"]["version"] == 2
