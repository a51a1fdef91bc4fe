"""COCO instance evaluation of a panoptic dataset whose thing classes are a subset of its classes.

A panoptic model predicts contiguous ids over all classes (things and stuff). When the thing ids
are not ``0..#things-1`` (ADE20K, Mapillary Vistas), Detectron2's :class:`COCOEvaluator` refuses
them; this evaluator maps each predicted contiguous id back to its dataset id through
``thing_dataset_id_to_contiguous_id`` only.
"""

from detectron2.evaluation import COCOEvaluator

__all__ = ["InstanceSegEvaluator"]


class _WithoutThingIdMapping:
    """Read-only view of a dataset's metadata that hides ``thing_dataset_id_to_contiguous_id``,
    so that :class:`COCOEvaluator` leaves the (already mapped) category ids alone."""

    _HIDDEN = "thing_dataset_id_to_contiguous_id"

    def __init__(self, metadata):
        self._metadata = metadata

    def __getattr__(self, name):
        if name == self._HIDDEN:
            raise AttributeError(name)
        return getattr(self._metadata, name)

    def get(self, name, default=None):
        return default if name == self._HIDDEN else self._metadata.get(name, default)


class InstanceSegEvaluator(COCOEvaluator):
    """:class:`COCOEvaluator` whose predicted classes are contiguous ids of a panoptic dataset."""

    def __init__(self, dataset_name, *args, **kwargs):
        kwargs.setdefault("use_fast_impl", False)  # detectron2._C is not available
        super().__init__(dataset_name, *args, **kwargs)
        mapping = self._metadata.thing_dataset_id_to_contiguous_id
        self._contiguous_to_dataset_id = {v: k for k, v in mapping.items()}
        self._metadata = _WithoutThingIdMapping(self._metadata)

    def _eval_predictions(self, predictions, img_ids=None):
        for prediction in predictions:
            for result in prediction.get("instances", []):
                category_id = result["category_id"]
                if category_id not in self._contiguous_to_dataset_id:
                    raise ValueError(
                        f"A prediction has class {category_id}, which is not a thing class of "
                        f"{self._metadata.name} (things: {sorted(self._contiguous_to_dataset_id)})."
                    )
                result["category_id"] = self._contiguous_to_dataset_id[category_id]
        super()._eval_predictions(predictions, img_ids=img_ids)
