"""Mask AP (Detectron2's ``COCOEvaluator``) and Boundary AP (faster-coco-eval's Boundary IoU).

Boundary AP (Cheng et al., CVPR 2021) is COCO AP with the IoU of a (detection, ground truth)
pair replaced by min(mask IoU, boundary IoU), the boundary being the pixels within d of the
contour, d = ``dilation_ratio`` x image diagonal. ``faster-coco-eval`` implements it
(``iouType="boundary"``); it is imported only when Boundary AP is asked for.
"""

from __future__ import annotations

import copy
import itertools
import logging

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator

__all__ = ["BoundaryCOCOEvaluator", "build_transfiner_evaluator", "evaluate_boundary_ap"]

logger = logging.getLogger(__name__)

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _faster_coco_eval():
    try:
        import faster_coco_eval  # noqa: F401
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ImportError(
            "Boundary AP needs the 'faster-coco-eval' package (pip install faster-coco-eval); "
            "or set MODEL.TRANSFINER.BOUNDARY_AP False"
        ) from e
    return COCO, COCOeval_faster


def evaluate_boundary_ap(
    gt_dataset: dict,
    results: list[dict],
    *,
    dilation_ratio: float = 0.02,
    img_ids: list[int] | None = None,
) -> dict[str, float]:
    """Boundary AP of COCO-format ``results`` (RLE ``segmentation``) on ``gt_dataset``.

    Args:
        gt_dataset: a COCO instances dict ("images", "annotations", "categories").
        results: detections with "image_id", "category_id" (dataset ids), "segmentation",
            "score".
        dilation_ratio: boundary width as a fraction of the image diagonal.
        img_ids: evaluate these images only (default: all of ``gt_dataset``).

    Returns:
        AP, AP50, AP75, APs, APm, APl in percent (NaN where undefined, as COCO's).
    """
    coco_cls, eval_cls = _faster_coco_eval()
    gt = coco_cls(copy.deepcopy(gt_dataset))
    if not results:
        return {k: float("nan") for k in _METRICS}
    dt = gt.loadRes(copy.deepcopy(results))
    evaluator = eval_cls(
        gt, dt, iouType="boundary", boundary_dilation_ratio=dilation_ratio,
        print_function=logger.debug,
    )
    if img_ids is not None:
        evaluator.params.imgIds = sorted(img_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats
    return {k: float(stats[i] * 100 if stats[i] >= 0 else float("nan"))
            for i, k in enumerate(_METRICS)}


class BoundaryCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` (bbox, segm) plus Boundary AP under the task "boundary".

    Same arguments as ``COCOEvaluator``, plus ``boundary_dilation_ratio``.
    """

    def __init__(self, *args, boundary_dilation_ratio: float = 0.02, **kwargs):
        _faster_coco_eval()  # fail at construction, not after a whole inference run
        super().__init__(*args, **kwargs)
        self._boundary_dilation_ratio = boundary_dilation_ratio

    def _eval_predictions(self, predictions, img_ids=None):
        # the parent maps category ids to the dataset's in place: copy the contiguous ids first
        results = copy.deepcopy(list(itertools.chain(*[x["instances"] for x in predictions])))
        super()._eval_predictions(predictions, img_ids=img_ids)
        if self._tasks is not None and "segm" not in self._tasks:
            return
        results = [r for r in results if "segmentation" in r]
        if img_ids is not None:
            wanted = set(img_ids)
            results = [r for r in results if r["image_id"] in wanted]
        meta = self._metadata
        if hasattr(meta, "thing_dataset_id_to_contiguous_id"):
            reverse = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
            for r in results:
                r["category_id"] = reverse[r["category_id"]]
        res = evaluate_boundary_ap(
            self._coco_api.dataset, results, dilation_ratio=self._boundary_dilation_ratio,
            img_ids=img_ids,
        )
        logger.info("Boundary AP: %s", ", ".join(f"{k} {v:.2f}" for k, v in res.items()))
        self._results["boundary"] = res


def build_transfiner_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> COCOEvaluator:
    """The evaluator of a COCO-format dataset for a Transfiner config: ``COCOEvaluator``
    (``use_fast_impl=False``: Detectron2's ``_C`` is absent here), with Boundary AP when
    ``MODEL.TRANSFINER.BOUNDARY_AP`` is set."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type != "coco":
        raise NotImplementedError(
            f"build_transfiner_evaluator handles COCO-format datasets; {dataset_name} has "
            f"evaluator_type {evaluator_type!r}"
        )
    kwargs = dict(output_dir=output_folder, use_fast_impl=False, tasks=("bbox", "segm"))
    if cfg.MODEL.TRANSFINER.BOUNDARY_AP:
        return BoundaryCOCOEvaluator(
            dataset_name, boundary_dilation_ratio=cfg.MODEL.TRANSFINER.BOUNDARY_DILATION_RATIO,
            **kwargs,
        )
    return COCOEvaluator(dataset_name, **kwargs)
