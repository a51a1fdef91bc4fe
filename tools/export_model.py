#!/usr/bin/env python
"""Export a Mask2Former network (backbone + pixel decoder + transformer decoder) to ONNX or
``torch.export`` at one fixed input size, and check it against the eager model.

    python tools/export_model.py \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --output model.onnx --height 800 --width 1216 --opts MODEL.WEIGHTS model_final.pth

The exported graph takes "images" (B, 3, H, W), normalised with the config's PIXEL_MEAN /
PIXEL_STD and zero-padded to H x W, and returns "pred_logits" (B, Q, K+1) and "pred_masks"
(B, Q, H/4, W/4). Pre- and post-processing are ``mask2former.export.prepare_image`` and
``mask2former.export.postprocess``. An ONNX file is checked in every installed runtime
(onnxruntime, OpenVINO); the worst difference counts. ``--format torch_export`` writes a ``.pt2``
file (``torch.export.load``). H and W must be multiples of 32 (default: INPUT.MIN_SIZE_TEST,
square). The ``Predictor`` exports the same graph itself for its "onnxruntime" and "openvino"
backends (``mask2former.backends``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
from detectron2.modeling import build_model

import mask2former  # noqa: F401  (registers the model components)
from mask2former.backends import missing_packages
from mask2former.config import UnknownConfigKeyError, adjust_for_device, load_config
from mask2former.export import (
    export_onnx,
    export_torch,
    load_onnx,
    load_openvino,
    run_onnx,
    run_openvino,
)
from mask2former.modeling.inference import InferenceNetwork, round_up_to_divisor
from mask2former.predictor import load_weights

logger = logging.getLogger("mask2former.export_model")

FORMATS = ("onnx", "torch_export")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument("--output", required=True, help="file to write (.onnx or .pt2)")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--height", type=int, default=0, help="input height (multiple of 32)")
    parser.add_argument("--width", type=int, default=0, help="input width (multiple of 32)")
    parser.add_argument("--batch-size", type=int, default=1, help="fixed batch size B")
    parser.add_argument(
        "--atol", type=float, default=1e-3, help="largest difference to eager accepted"
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ..."
    )
    return parser


def build_eval_model(cfg) -> torch.nn.Module:
    """The config's model in eval mode, with ``MODEL.WEIGHTS`` loaded when set."""
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        load_weights(
            model, cfg.MODEL.WEIGHTS, allow_shape_mismatch=cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH
        )
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    return model


def export_and_check(args) -> dict:
    """Export as ``args`` say and compare with eager on a random input.

    Returns the largest absolute differences {"pred_logits": ..., "pred_masks": ...} (for ONNX,
    the worst over the installed runtimes).
    """
    cfg = load_config(args.config_file, args.opts)
    for note in adjust_for_device(cfg):
        logger.warning(note)
    model = build_eval_model(cfg)
    side = round_up_to_divisor([cfg.INPUT.MIN_SIZE_TEST], model.size_divisibility)[0]
    height, width = args.height or side, args.width or side

    generator = torch.Generator().manual_seed(1)
    images = torch.randn((args.batch_size, 3, height, width), generator=generator)  # (B,3,H,W)
    images = images.to(model.device)
    with torch.no_grad():
        expected = InferenceNetwork(model).eval()(images)
    outputs = {}  # runtime -> (pred_logits, pred_masks)
    if args.format == "onnx":
        export_onnx(model, args.output, height=height, width=width, batch_size=args.batch_size)
        runtimes = {"onnxruntime": (load_onnx, run_onnx), "openvino": (load_openvino, run_openvino)}
        for runtime, (load, run) in runtimes.items():
            if missing_packages(runtime):
                logger.info("%s is not installed: not checked there", runtime)
                continue
            outputs[runtime] = run(load(args.output), images)
        if not outputs:
            raise ValueError("checking an ONNX export needs onnxruntime or openvino (pip)")
    else:
        program = export_torch(model, height=height, width=width, batch_size=args.batch_size)
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        torch.export.save(program, args.output)
        with torch.no_grad():
            outputs["torch.export"] = torch.export.load(args.output).module()(images)
    diffs = {"pred_logits": 0.0, "pred_masks": 0.0}
    for runtime, got in outputs.items():
        for name, g, e in zip(list(diffs), got, expected):
            diff = float((torch.as_tensor(g).to(e.device) - e).abs().max())
            logger.info("%s: largest difference to eager of %s %.2e", runtime, name, diff)
            diffs[name] = max(diffs[name], diff)
    logger.info(
        "wrote %s (%s, input %dx%dx%dx%d); largest difference to eager: logits %.2e, masks %.2e",
        args.output, args.format, args.batch_size, 3, height, width,
        diffs["pred_logits"], diffs["pred_masks"],
    )  # fmt: skip
    return diffs


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"config file not found: '{args.config_file}'")
    try:
        diffs = export_and_check(args)
    except (UnknownConfigKeyError, FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    worst = max(diffs.values())
    if worst > args.atol:
        logger.error("exported outputs differ from eager by %.2e > --atol %.1e", worst, args.atol)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
