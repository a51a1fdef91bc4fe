"""Checkpoint parity with the reference (SysCV/transfiner): its ROI-head key names and shapes.

The table below is read from the reference's source (``detectron2/modeling/poolers.py``:
``conv_norm_relus_semantic``; ``detectron2/modeling/roi_heads/mask_head.py``:
``MaskRCNNConvUpsampleHead`` and its ``TransformerEncoder``), for its COCO configs (80 classes,
256 channels, 4 convs, 3 encoder layers, 4 heads, FFN 2048). Everything outside ``roi_heads``
is stock Detectron2 and unchanged here.
"""

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_roi_heads

import mask2former  # noqa: F401  (registers the components)
from mask2former.config import load_config

CONFIG = "configs/coco/instance-segmentation/transfiner/mask_rcnn_R_50_FPN_1x.yaml"


def _reference_table() -> dict[str, tuple[int, ...]]:
    t: dict[str, tuple[int, ...]] = {}
    for i in (0, 2, 4, 6):
        t[f"mask_pooler.conv_norm_relus_semantic.{i}.weight"] = (256, 256, 3, 3)
        t[f"mask_pooler.conv_norm_relus_semantic.{i}.bias"] = (256,)
    h = "mask_head."
    for k in range(1, 5):
        t[f"{h}mask_fcn{k}.weight"] = (256, 256, 3, 3)
        t[f"{h}mask_fcn{k}.bias"] = (256,)
        out = 128 if k == 4 else 256
        t[f"{h}mask_fcn_uncertain{k}.weight"] = (out, 256, 3, 3)
        t[f"{h}mask_fcn_uncertain{k}.bias"] = (out,)
    for name in ("deconv", "deconv_bo"):
        t[f"{h}{name}.weight"] = (256, 256, 2, 2)
        t[f"{h}{name}.bias"] = (256,)
    t[f"{h}deconv_uncertain.weight"] = (128, 128, 2, 2)
    t[f"{h}deconv_uncertain.bias"] = (128,)
    t[f"{h}predictor.weight"] = (80, 256, 1, 1)
    t[f"{h}predictor.bias"] = (80,)
    for name, cin in (("predictor_bo", 256), ("predictor_uncertain", 128),
                      ("predictor_semantic_s", 256)):
        t[f"{h}{name}.weight"] = (1, cin, 1, 1)
        t[f"{h}{name}.bias"] = (1,)
    e = h + "encoder."
    for layer in range(3):
        p = f"{e}layers.{layer}."
        t[p + "self_attn.in_proj_weight"] = (768, 256)
        t[p + "self_attn.in_proj_bias"] = (768,)
        t[p + "self_attn.out_proj.weight"] = (256, 256)
        t[p + "self_attn.out_proj.bias"] = (256,)
        t[p + "linear1.weight"] = (2048, 256)
        t[p + "linear1.bias"] = (2048,)
        t[p + "linear2.weight"] = (256, 2048)
        t[p + "linear2.bias"] = (256,)
        for norm in ("norm1", "norm2"):
            t[f"{p}{norm}.weight"] = (256,)
            t[f"{p}{norm}.bias"] = (256,)
    t[e + "conv_fuse.weight"] = (256, 257, 1, 1)
    t[e + "conv_fuse.bias"] = (256,)
    t[e + "conv_r1.0.weight"] = (256, 256, 1, 1)
    t[e + "conv_r1.0.bias"] = (256,)
    t[e + "conv_r1.2.weight"] = (1, 256, 1, 1)
    t[e + "conv_r1.2.bias"] = (1,)
    return t


def _roi_heads(opts=()):
    cfg = load_config(CONFIG, list(opts))
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 7)}
    return build_roi_heads(cfg, shapes)


def test_roi_head_keys_and_shapes_match_the_reference():
    ours = {k: tuple(v.shape) for k, v in _roi_heads().state_dict().items()}
    stock = _roi_heads(["MODEL.ROI_HEADS.NAME", "StandardROIHeads",
                        "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"])
    reference = {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    reference.update(_reference_table())  # the reference keeps the stock names and adds these
    assert sorted(set(ours) - set(reference)) == []  # nothing unexpected
    assert sorted(set(reference) - set(ours)) == []  # nothing missing
    assert {k: s for k, s in ours.items() if reference[k] != s} == {}


def test_a_state_dict_with_the_reference_names_loads_strictly():
    heads = _roi_heads()
    reference = {k: torch.full(v.shape, 0.5) for k, v in heads.state_dict().items()}
    result = heads.load_state_dict(reference, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.all(heads.mask_head.encoder.conv_fuse.weight == 0.5)
