#!/usr/bin/env python
"""Mask R-CNN vs Mask Transfiner on the generated data, and CPU time per image.

``train``: trains, with the same seed, data order and schedule, the synthetic Transfiner config
(configs/synthetic/instance-segmentation/transfiner_R18_synthetic.yaml) and the same config with
Detectron2's stock Mask R-CNN heads (``StandardROIHeads`` + ``MaskRCNNConvUpsampleHead``), and
evaluates Mask AP (``COCOEvaluator``) and Boundary AP (faster-coco-eval) on
``synthetic_val_instance``. The Transfiner model is evaluated twice: with refinement, and with
``MAX_REFINE_ROIS_TEST = 0`` (every mask is the coarse 28x28 mask bilinearly upsampled), which
isolates what the quadtree refinement adds on the same detections.

``timing``: CPU seconds per 800x1216 image (R50-FPN, random weights, 100 detections per image
forced through the mask head with ``SCORE_THRESH_TEST 0``), median of ``--repeats`` runs. With
random weights the incoherence map is 0.5 everywhere, which would select every 56-level cell;
the incoherence bias is set to ``--incoherence-logit`` instead (default -2.2: q = 0.1, so the
784 top-level nodes, which the test threshold 1e-6 always selects, and no finer ones; a trained
detector adds the few boundary nodes of the 56 and 112 levels).

``overfit`` (spec 13.10): trains only the backbone and the mask branch, on ``--images`` training
images with their GT boxes (jittered) as the RoIs, then compares on those images and on
validation images (GT boxes again, so detection plays no part) the masks refined to 112 x 112
with the coarse 28 x 28 masks bilinearly upsampled: mean mask IoU and mean boundary IoU
(Cheng et al. 2021: IoU of the bands within d = 2% of the image diagonal inside each contour),
next to the GT itself resampled to the RoIs' 28 x 28 grid and upsampled (``gt_at_coarse_grid``:
the coarse head's own target, upsampled). ``--data comb`` trains and evaluates on generated
combs instead (:func:`comb_dataset`, spec 13.10's thin-part shapes: teeth about one coarse
cell wide, which only the finer quadtree levels can draw).

Writes every run and the per-variant mean / std to ``benchmarks/results/transfiner*.json``.

Examples::

    python benchmarks/transfiner.py train --seeds 0 1 2 --iters 300
    python benchmarks/transfiner.py timing --repeats 3
    python benchmarks/transfiner.py overfit --images 4 --iters 150
    python benchmarks/transfiner.py overfit --data comb --images 4 --iters 300
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

SYNTHETIC = os.path.join(
    _ROOT, "configs", "synthetic", "instance-segmentation", "transfiner_R18_synthetic.yaml"
)
R50 = os.path.join(
    _ROOT, "configs", "coco", "instance-segmentation", "transfiner", "mask_rcnn_R_50_FPN_1x.yaml"
)
MASK_RCNN_OPTS = [
    "MODEL.ROI_HEADS.NAME", "StandardROIHeads",
    "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead",
]
logger = logging.getLogger("benchmarks.transfiner")


def _cfg(path: str, opts: list[str]):
    from mask2former.config import load_config

    cfg = load_config(path, opts)
    cfg.MODEL.TRANSFINER.BOUNDARY_AP = True
    return cfg


def train(cfg) -> torch.nn.Module:
    """Plain Detectron2 training loop (Detectron2's DatasetMapper, SGD, multi-step schedule)."""
    from detectron2.data import DatasetMapper, build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer
    from detectron2.utils.events import EventStorage

    torch.manual_seed(cfg.SEED)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    loader = build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, is_train=True))
    start = time.perf_counter()
    with EventStorage(0) as storage:
        for it, data in zip(range(cfg.SOLVER.MAX_ITER), loader):
            storage.iter = it
            losses = model(data)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if it % 20 == 0 or it == cfg.SOLVER.MAX_ITER - 1:
                logger.info("iter %d loss %.3f %s (%.1f s)", it, float(loss),
                            {k: round(float(v), 3) for k, v in losses.items()},
                            time.perf_counter() - start)
    return model


def evaluate(cfg, model) -> dict[str, float]:
    """Mask AP and Boundary AP on cfg.DATASETS.TEST[0]."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    from mask2former.models.transfiner.evaluation import build_transfiner_evaluator

    name = cfg.DATASETS.TEST[0]
    model.eval()
    res = inference_on_dataset(
        model, build_detection_test_loader(cfg, name), build_transfiner_evaluator(cfg, name)
    )
    return {"box_AP": res["bbox"]["AP"], "mask_AP": res["segm"]["AP"],
            "boundary_AP": res["boundary"]["AP"]}


def _summary(runs: list[dict]) -> dict:
    """Per variant: (mean, standard deviation) of each metric over the seeds run so far."""
    summary = {}
    for variant in sorted({r["variant"] for r in runs}):
        rows = [r for r in runs if r["variant"] == variant]
        summary[variant] = {
            k: (statistics.mean(r[k] for r in rows),
                statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0)
            for k in ("box_AP", "mask_AP", "boundary_AP")
        }
    return summary


def run_train(args) -> None:
    runs = []
    out = args.out or "transfiner_synthetic.json"

    def record(row: dict) -> None:
        # Rewritten after every evaluation: an interrupted benchmark keeps its finished runs.
        runs.append(row)
        logger.info("%s", row)
        _write(out, {"iters": args.iters, "threads": args.threads, "opts": args.opts,
                     "runs": runs, "summary": _summary(runs)})

    for seed in args.seeds:
        for variant in args.variants:
            steps = sorted({s for s in (int(args.iters * 0.75), int(args.iters * 0.95))
                            if 0 < s < args.iters})
            opts = ["SEED", str(seed), "SOLVER.MAX_ITER", str(args.iters),
                    "SOLVER.STEPS", str(tuple(steps))]
            opts += (MASK_RCNN_OPTS if variant == "mask_rcnn" else []) + args.opts
            cfg = _cfg(SYNTHETIC, opts)
            logger.info("training %s, seed %d, %d iterations", variant, seed, args.iters)
            start = time.perf_counter()
            model = train(cfg)
            train_seconds = time.perf_counter() - start
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            torch.save({"model": model.state_dict()},
                       os.path.join(cfg.OUTPUT_DIR, f"{variant}_seed{seed}.pth"))
            record({"variant": variant, "seed": seed, "train_seconds": train_seconds,
                    **evaluate(cfg, model)})
            if variant == "transfiner":
                model.roi_heads.max_refine_rois_test = 0
                record({"variant": "transfiner_coarse", "seed": seed, **evaluate(cfg, model)})
    for variant, metrics in _summary(runs).items():
        logger.info("%-18s %s", variant,
                    "  ".join(f"{k} {m:.1f} +- {s:.1f}" for k, (m, s) in metrics.items()))


@torch.no_grad()
def run_timing(args) -> None:
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 800, 1216), dtype=torch.uint8).float()
    results = {}
    for variant in ("mask_rcnn", "transfiner"):
        opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
                "0.0", "TEST.DETECTIONS_PER_IMAGE", "100"]
        opts += MASK_RCNN_OPTS if variant == "mask_rcnn" else []
        model = build_model(_cfg(R50, opts)).eval()
        if variant == "transfiner":
            torch.nn.init.constant_(model.roi_heads.mask_head.predictor_uncertain.weight, 0.0)
            torch.nn.init.constant_(
                model.roi_heads.mask_head.predictor_uncertain.bias, args.incoherence_logit
            )
        inputs = [{"image": image, "height": 800, "width": 1216}]
        model(inputs)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - start)
        results[variant] = {"median_s": statistics.median(times), "times_s": times,
                            "threads": torch.get_num_threads()}
        logger.info("%s: %.2f s per 800x1216 image (median of %d, %d threads)", variant,
                    results[variant]["median_s"], args.repeats, torch.get_num_threads())
    _write(args.out or "transfiner_cpu_time.json", results)


def _boundary_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """(N, H, W) bool -> the pixels of each mask within ``width`` of its contour (inner band)."""
    import torch.nn.functional as F

    m = masks.float().unsqueeze(1)  # (N, 1, H, W)
    eroded = m
    for _ in range(width):
        eroded = -F.max_pool2d(-F.pad(eroded, (1, 1, 1, 1), value=0.0), 3, stride=1)
    return (m - eroded).squeeze(1) > 0  # (N, H, W)


def _ious(pred: torch.Tensor, gt: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-instance mask IoU and boundary IoU of (N, H, W) bool masks."""
    h, w = gt.shape[-2:]
    width = max(1, round(0.02 * (h * h + w * w) ** 0.5))
    bp, bg = _boundary_band(pred, width), _boundary_band(gt, width)

    def iou(a, b):
        inter = (a & b).flatten(1).sum(1).float()
        union = (a | b).flatten(1).sum(1).float().clamp(min=1)
        return (inter / union).tolist()

    return iou(pred, gt), iou(bp, bg)


def comb_masks(count: int, size: int, seed: int, *, period: int = 16) -> torch.Tensor:
    """``count`` (size, size) bool masks of one "comb" each (spec 13.10's thin-part shapes).

    A comb is a solid spine along one side of a box covering 75-90% of the image, with teeth of
    width ``period / 2`` and gaps of ``period / 2`` running across the rest of the box (random
    side and phase). The teeth are finer than the 28 x 28 coarse grid of a RoI this size (a cell
    is about ``size / 28 * 0.8`` px, half a period or more), so the coarse mask cannot
    draw them, while the RoI's 112 x 112 level (and P2, stride 4) can.

    Returns:
        (count, size, size) bool.
    """
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros((count, size, size), dtype=torch.bool)
    for i in range(count):
        side = int(size * (0.75 + 0.15 * torch.rand((), generator=g)))
        x0, y0 = (int(torch.randint(0, size - side + 1, (), generator=g)) for _ in range(2))
        spine = side // 4
        phase = int(torch.randint(0, period, (), generator=g))
        comb = torch.zeros((side, side), dtype=torch.bool)  # spine on top, teeth downwards
        comb[:spine] = True
        teeth = ((torch.arange(side) + phase) % period) < period // 2  # (side,) tooth columns
        comb[spine:, teeth] = True
        comb = torch.rot90(comb, int(torch.randint(0, 4, (), generator=g)))
        masks[i, y0:y0 + side, x0:x0 + side] = comb
    return masks


def comb_dataset(count: int, size: int, seed: int) -> list[dict]:
    """Model inputs ("image" (3, H, W) float 0-255, "height", "width") with their GT ("gt":
    Instances with gt_boxes, gt_classes, gt_masks) of :func:`comb_masks`: a comb in one random
    colour on a background of another, plus pixel noise."""
    from detectron2.structures import BitMasks, Instances

    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for mask in comb_masks(count, size, seed):
        colours = torch.rand((2, 3, 1, 1), generator=g) * 255  # background, comb
        image = torch.where(mask, colours[1], colours[0])  # (3, H, W)
        image = (image + 20 * torch.randn(image.shape, generator=g)).clamp(0, 255)
        gt = Instances((size, size))
        gt.gt_masks = BitMasks(mask[None])
        gt.gt_boxes = gt.gt_masks.get_bounding_boxes()
        gt.gt_classes = torch.zeros(1, dtype=torch.long)
        out.append({"image": image, "height": size, "width": size, "gt": gt})
    return out


def _gt_rois(batch: list[dict], jitter: bool) -> list:
    """Instances with each image's GT boxes as proposal and predicted boxes (``jitter``: each
    coordinate moved by up to 5% of the box side, torch's global generator)."""
    from detectron2.structures import Boxes, Instances

    out = []
    for d in batch:
        gt = d["gt"]
        boxes = gt.gt_boxes.tensor.clone()  # (N, 4)
        if jitter:
            wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (N, 4)
            boxes = boxes + (torch.rand_like(boxes) - 0.5) * 0.1 * wh
        inst = Instances(gt.image_size)
        inst.proposal_boxes = Boxes(boxes)
        inst.pred_boxes = Boxes(boxes)
        inst.gt_classes = inst.pred_classes = gt.gt_classes
        inst.gt_masks = gt.gt_masks
        out.append(inst)
    return out


def overfit(model, train_set: list[dict], *, iters: int, lr: float) -> list[dict[str, float]]:
    """Train only the backbone and the mask branch (mask pooler and head) of a Transfiner model
    on ``train_set`` (batches of 2 in turn), with its GT boxes jittered as the RoIs: AdamW,
    gradient norm clipped at 5. Returns each iteration's losses."""
    params = [p for n, p in model.named_parameters()
              if n.startswith(("backbone.", "roi_heads.mask_pooler.", "roi_heads.mask_head."))]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    model.train()
    history, start = [], time.perf_counter()
    for it in range(iters):
        batch = [train_set[(2 * it + k) % len(train_set)] for k in range(2)]
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        losses = model.roi_heads._forward_mask(features, _gt_rois(batch, jitter=True))
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
        if it % 10 == 0 or it == iters - 1:
            logger.info("iter %d %s (%.0f s)", it, {k: round(v, 3) for k, v in history[-1].items()},
                        time.perf_counter() - start)
    return history


def _scores(pred_masks: list[torch.Tensor], dataset: list[dict]) -> dict:
    """Mean mask IoU and boundary IoU (x 100) of per-image (N, H, W) bool predictions."""
    mask_ious, boundary_ious = [], []
    for pred, d in zip(pred_masks, dataset):
        m, b = _ious(pred, d["gt"].gt_masks.tensor)
        mask_ious += m
        boundary_ious += b
    return {"mask_IoU": 100 * statistics.mean(mask_ious),
            "boundary_IoU": 100 * statistics.mean(boundary_ious), "instances": len(mask_ious)}


@torch.no_grad()
def mask_quality(model, dataset: list[dict], *, refine_limit: int = 10**6,
                 thresholds: tuple[float, ...] | None = None, align_corners: bool = True) -> dict:
    """The model's masks on ``dataset`` with its GT boxes as the detections, pasted into the
    image: refined (the first ``refine_limit`` RoIs, ``thresholds`` = the test node thresholds,
    default the model's) or, with ``refine_limit=0``, the coarse masks bilinearly upsampled."""
    from detectron2.layers.mask_ops import paste_masks_in_image

    head = model.roi_heads.mask_head
    saved = (model.roi_heads.max_refine_rois_test, head.inc_thresh_test,
             head.upsample_align_corners)
    model.roi_heads.max_refine_rois_test = refine_limit
    head.inc_thresh_test = thresholds or saved[1]
    head.upsample_align_corners = align_corners
    model.eval()
    preds = []
    for d in dataset:
        images = model.preprocess_image([d])
        features = model.backbone(images.tensor)
        (inst,) = model.roi_heads._forward_mask(features, _gt_rois([d], jitter=False))
        preds.append(paste_masks_in_image(inst.pred_masks[:, 0], inst.pred_boxes,
                                          d["gt"].image_size))  # (N, H, W) bool
    model.roi_heads.max_refine_rois_test, head.inc_thresh_test, head.upsample_align_corners = saved
    return _scores(preds, dataset)


@torch.no_grad()
def coarse_grid_quality(dataset: list[dict], size: int = 28, out_size: int = 112) -> dict:
    """A coarse head that hits its target exactly: each GT mask resampled to the RoI's
    ``size`` x ``size`` grid (RoIAlign, as the coarse target), bilinearly upsampled to
    ``out_size`` and pasted like a prediction."""
    import torch.nn.functional as F
    from detectron2.layers.mask_ops import paste_masks_in_image

    preds = []
    for d in dataset:
        gt = d["gt"]
        grid = gt.gt_masks.crop_and_resize(gt.gt_boxes.tensor, size).float()  # (N, size, size)
        up = F.interpolate(grid[:, None], (out_size, out_size), mode="bilinear",
                           align_corners=False)[:, 0]  # (N, out_size, out_size)
        preds.append(paste_masks_in_image(up, gt.gt_boxes, gt.image_size))  # (N, H, W) bool
    return _scores(preds, dataset)


def run_overfit(args) -> None:
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model

    cfg = _cfg(SYNTHETIC, ["SEED", str(args.seed)] + args.opts)
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    tag = "" if args.data == "synthetic" else f"_{args.data}"
    if args.data == "comb":
        train_set = comb_dataset(args.images, args.size, seed=1000 * args.seed)
        val_set = comb_dataset(args.val_images, args.size, seed=1000 * args.seed + 500)
    else:
        # the images at their generated size (about 256 px), GT as bitmasks, no augmentation
        mapper = DatasetMapper(is_train=True, augmentations=[], image_format=cfg.INPUT.FORMAT,
                               use_instance_mask=True, instance_mask_format="bitmask")

        def load(name: str, count: int) -> list[dict]:
            out = []
            for record in DatasetCatalog.get(name)[:count]:
                d = mapper(record)
                d["gt"] = d.pop("instances")
                out.append(d)
            return out

        train_set = load(cfg.DATASETS.TRAIN[0], args.images)
        val_set = load(cfg.DATASETS.TEST[0], args.val_images)

    start = time.perf_counter()
    history = []
    if args.weights:  # evaluate the model a previous overfit run saved: no training
        model.load_state_dict(torch.load(args.weights, weights_only=True)["model"])
        logger.info("loaded %s, skipping training", args.weights)
    else:
        history = overfit(model, train_set, iters=args.iters, lr=args.lr)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        torch.save({"model": model.state_dict()},
                   os.path.join(cfg.OUTPUT_DIR, f"overfit{tag}_seed{args.seed}.pth"))
    reference = tuple(cfg.MODEL.TRANSFINER.INC_THRESH_TEST)
    incoherent_top = (cfg.MODEL.TRANSFINER.INC_THRESH_TRAIN[0], *reference[1:])
    variants = {
        # refinement with the reference's level-to-level upsampling (align_corners=True) ...
        "refined": dict(thresholds=reference),
        # ... and with the cell-centre one (MODEL.TRANSFINER.UPSAMPLE_ALIGN_CORNERS False)
        "refined_centre_upsampling": dict(thresholds=reference, align_corners=False),
        # the top level refined only at incoherent cells (q >= the training threshold), the
        # other cells keep the coarse mask
        "refined_incoherent_top": dict(thresholds=incoherent_top),
        "refined_incoherent_top_centre_upsampling": dict(thresholds=incoherent_top,
                                                         align_corners=False),
        "coarse_upsampled": dict(refine_limit=0),
    }
    results = {}
    for split, dataset in (("train", train_set), ("val", val_set)):
        for variant, kwargs in variants.items():
            results[f"{split}/{variant}"] = mask_quality(model, dataset, **kwargs)
            logger.info("%s %s: %s", split, variant, results[f"{split}/{variant}"])
        results[f"{split}/gt_at_coarse_grid"] = coarse_grid_quality(dataset)
        logger.info("%s gt_at_coarse_grid: %s", split, results[f"{split}/gt_at_coarse_grid"])
    first, last = history[:10], history[-10:]
    _write(args.out or f"transfiner_overfit{tag}_seed{args.seed}.json",
           {"data": args.data, "size": args.size, "images": args.images, "iters": args.iters,
            "lr": args.lr, "opts": args.opts, "seconds": time.perf_counter() - start,
            "loss_first10": {k: statistics.mean(h[k] for h in first) for k in first[0]}
            if first else None,
            "loss_last10": {k: statistics.mean(h[k] for h in last) for k in last[0]}
            if last else None,
            "results": results})


def _write(name: str, payload: dict) -> None:
    path = os.path.join(_ROOT, "benchmarks", "results", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    logger.info("wrote %s", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train and evaluate on the generated data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--variants", nargs="+", default=["mask_rcnn", "transfiner"],
                   choices=["mask_rcnn", "transfiner"])
    p.add_argument("--out", default=None, help="file name under benchmarks/results/")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    p = sub.add_parser("timing", help="CPU seconds per 800x1216 image, R50-FPN")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--incoherence-logit", type=float, default=-2.2,
                   help="constant incoherence logit of the random-weight Transfiner")
    p.add_argument("--out", default=None, help="file name under benchmarks/results/")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p = sub.add_parser("overfit", help="refined vs upsampled coarse masks, GT boxes as RoIs")
    p.add_argument("--data", choices=["synthetic", "comb"], default="synthetic",
                   help="the generated instance data, or one thin-toothed comb per image")
    p.add_argument("--size", type=int, default=256, help="comb image side")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--val-images", type=int, default=30)
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None,
                   help="evaluate this saved overfit model instead of training")
    p.add_argument("--out", default=None, help="file name under benchmarks/results/")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import mask2former  # noqa: F401  (registers the components and the generated datasets)

    if args.threads:
        torch.set_num_threads(args.threads)

    {"train": run_train, "timing": run_timing, "overfit": run_overfit}[args.command](args)


if __name__ == "__main__":
    main()
