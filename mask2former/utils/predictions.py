"""Model outputs as files in the standard formats: COCO instance results (RLE masks), COCO
panoptic (PNG + JSON) and semantic label PNGs.

Category ids are written in the dataset's own ids: the contiguous ids the model predicts are
mapped back with the metadata's ``thing_dataset_id_to_contiguous_id`` (instances, panoptic
things) and ``stuff_dataset_id_to_contiguous_id`` (panoptic stuff, semantic labels) when the
metadata has them; otherwise the contiguous ids are written.

Library functions are used where they exist: Detectron2's ``instances_to_coco_json`` (instance
results) and panopticapi's ``id2rgb`` (panoptic PNG encoding). Ours: the category-id mapping
that ``instances_to_coco_json`` leaves to ``COCOEvaluator``, and the panoptic and semantic
writers (Detectron2 converts panoptic outputs only inside ``COCOPanopticEvaluator.process`` and
writes semantic results as JSON, not PNG).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from panopticapi.utils import id2rgb
from PIL import Image

from ..data.utils import mask_to_xywh

__all__ = [
    "PredictionWriter",
    "instances_to_dataset_results",
    "panoptic_to_coco",
    "sem_seg_to_label_map",
]

logger = logging.getLogger(__name__)


def _inverse(metadata: Metadata | None, key: str) -> dict[int, int] | None:
    mapping = getattr(metadata, key, None) if metadata is not None else None
    return {int(v): int(k) for k, v in mapping.items()} if mapping else None


def instances_to_dataset_results(
    instances: Instances, image_id: int, metadata: Metadata | None = None
) -> list[dict]:
    """COCO results of ``instances`` in the dataset's category ids.

    The results are Detectron2's ``instances_to_coco_json`` (RLE masks, boxes from
    ``pred_boxes``, scores), which writes the model's contiguous class ids: Detectron2 maps
    them back to dataset ids later, inside ``COCOEvaluator``. A results file read by
    ``COCO.loadRes`` needs the dataset ids, so this maps them with the metadata's
    ``thing_dataset_id_to_contiguous_id`` (when it has one).
    """
    results = instances_to_coco_json(instances.to("cpu"), image_id)
    to_dataset = _inverse(metadata, "thing_dataset_id_to_contiguous_id")
    if to_dataset:
        for result in results:
            result["category_id"] = to_dataset[result["category_id"]]
    return results


def panoptic_to_coco(
    panoptic_seg: torch.Tensor,
    segments_info: list[dict],
    *,
    image_id: int,
    file_name: str,
    metadata: Metadata | None = None,
) -> tuple[np.ndarray, dict]:
    """A panoptic prediction as a COCO panoptic PNG (ids encoded as R + 256 G + 256^2 B) and
    its annotation dict (image_id, file_name, segments_info with id, category_id, isthing,
    area, bbox, iscrowd)."""
    things = _inverse(metadata, "thing_dataset_id_to_contiguous_id")
    stuff = _inverse(metadata, "stuff_dataset_id_to_contiguous_id")
    ids = panoptic_seg.to("cpu").numpy().astype(np.int64)  # (H, W)
    segments = []
    for info in segments_info:
        mask = ids == info["id"]
        if not mask.any():
            continue
        contiguous = int(info["category_id"])
        mapping = things if info["isthing"] and things else stuff
        segments.append(
            {
                "id": int(info["id"]),
                "category_id": mapping[contiguous] if mapping else contiguous,
                "isthing": bool(info["isthing"]),
                "area": int(mask.sum()),
                "bbox": mask_to_xywh(mask),
                "iscrowd": 0,
            }
        )
    annotation = {"image_id": image_id, "file_name": file_name, "segments_info": segments}
    return id2rgb(ids), annotation  # (H, W, 3) uint8


def sem_seg_to_label_map(sem_seg: torch.Tensor, metadata: Metadata | None = None) -> np.ndarray:
    """(K, H, W) scores -> (H, W) label map of dataset ids (uint8, or uint16 above 255)."""
    labels = sem_seg.argmax(dim=0).to("cpu").numpy()  # (H, W) contiguous ids
    to_dataset = _inverse(metadata, "stuff_dataset_id_to_contiguous_id")
    if to_dataset:
        lookup = np.arange(max(max(to_dataset), labels.max(initial=0)) + 1)
        for contiguous, dataset_id in to_dataset.items():
            lookup[contiguous] = dataset_id
        labels = lookup[labels]
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    return labels.astype(dtype)


def _output_size(outputs: dict) -> tuple[int, int]:
    if "instances" in outputs:
        return tuple(outputs["instances"].image_size)
    if "panoptic_seg" in outputs:
        return tuple(outputs["panoptic_seg"][0].shape[-2:])
    return tuple(outputs["sem_seg"].shape[-2:])


class PredictionWriter:
    """Collects predictions image by image and writes them under ``output_dir``:

    - ``images.json``: COCO "images" entries (id, file_name, height, width);
    - ``instances.json``: COCO instance results (``COCO.loadRes`` reads it);
    - ``panoptic.json`` + ``panoptic/<stem>.png``: COCO panoptic predictions;
    - ``semantic/<stem>.png``: label maps of dataset ids.

    PNGs are written as images come; the JSON files by :meth:`close`. ``tasks``: which of
    "instances", "panoptic_seg", "sem_seg" to write (when present in the outputs).
    """

    def __init__(
        self,
        *,
        output_dir: str,
        metadata: Metadata | None = None,
        tasks: tuple[str, ...] = ("panoptic_seg", "instances", "sem_seg"),
    ):
        self.output_dir = output_dir
        self.metadata = metadata
        self.tasks = tasks
        self.images: list[dict] = []
        self.instances: list[dict] = []
        self.panoptic: list[dict] = []
        self._stems: set[str] = set()
        self._has_instances = False
        os.makedirs(output_dir, exist_ok=True)

    def _write_png(self, folder: str, name: str, array: np.ndarray) -> None:
        path = os.path.join(self.output_dir, folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(array).save(path)

    def add(self, file_name: str, outputs: dict) -> int:
        """Record one image's outputs (``file_name``: the input path). Returns its image id
        (1, 2, ... in the order of the calls)."""
        image_id = len(self.images) + 1
        stem = os.path.splitext(os.path.basename(file_name))[0]
        if stem in self._stems:
            stem = f"{stem}_{image_id}"  # the same name in two input folders
        self._stems.add(stem)
        size = _output_size(outputs)
        self.images.append(
            {
                "id": image_id,
                "file_name": os.path.basename(file_name),
                "height": int(size[0]),
                "width": int(size[1]),
            }
        )
        if "instances" in outputs and "instances" in self.tasks:
            self._has_instances = True
            self.instances += instances_to_dataset_results(
                outputs["instances"], image_id, self.metadata
            )
        if "panoptic_seg" in outputs and "panoptic_seg" in self.tasks:
            png, annotation = panoptic_to_coco(
                *outputs["panoptic_seg"],
                image_id=image_id,
                file_name=stem + ".png",
                metadata=self.metadata,
            )
            self._write_png("panoptic", stem + ".png", png)
            self.panoptic.append(annotation)
        if "sem_seg" in outputs and "sem_seg" in self.tasks:
            self._write_png(
                "semantic", stem + ".png", sem_seg_to_label_map(outputs["sem_seg"], self.metadata)
            )
        return image_id

    def _write_json(self, name: str, data) -> str:
        path = os.path.join(self.output_dir, name)
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    def close(self) -> list[str]:
        """Write the JSON files; returns their paths."""
        paths = [self._write_json("images.json", self.images)]
        if self._has_instances:
            paths.append(self._write_json("instances.json", self.instances))
        if self.panoptic:
            paths.append(
                self._write_json(
                    "panoptic.json", {"images": self.images, "annotations": self.panoptic}
                )
            )
        logger.info("saved predictions of %d images to %s", len(self.images), self.output_dir)
        return paths
