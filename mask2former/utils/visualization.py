"""Pictures of predictions (panoptic, instance, semantic) next to the ground truth.

Drawing is Detectron2's ``Visualizer``; this module only picks what to draw from a model's
output dict and lays the pictures out in a titled grid saved as PNG.
"""

import logging
import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer

logger = logging.getLogger(__name__)

# Output keys of a Mask2Former model, in the order they are drawn.
TASKS = ("panoptic_seg", "instances", "sem_seg")
_TITLES = {"panoptic_seg": "panoptic", "instances": "instance", "sem_seg": "semantic"}


def draw_prediction(
    image_rgb: np.ndarray,
    outputs: dict,
    metadata: Metadata,
    task: str,
    confidence_threshold: float = 0.5,
    instance_mode: ColorMode = ColorMode.IMAGE,
) -> np.ndarray:
    """Draw one task's prediction from a model output dict on an (H, W, 3) uint8 RGB image."""
    visualizer = Visualizer(image_rgb, metadata, instance_mode=instance_mode)
    if task == "panoptic_seg":
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        vis = visualizer.draw_panoptic_seg(panoptic_seg.to("cpu"), segments_info)
    elif task == "instances":
        instances = outputs["instances"].to("cpu")
        instances = instances[instances.scores > confidence_threshold]
        if instances.has("pred_boxes") and not instances.pred_boxes.tensor.any():
            # Mask2Former's boxes are all zero (mask AP only): draw masks and labels alone.
            instances.remove("pred_boxes")
        vis = visualizer.draw_instance_predictions(instances)
    elif task == "sem_seg":
        vis = visualizer.draw_sem_seg(outputs["sem_seg"].argmax(dim=0).to("cpu"))
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return vis.get_image()  # (H, W, 3) uint8 RGB


def draw_predictions(
    image_rgb: np.ndarray, outputs: dict, metadata: Metadata, confidence_threshold: float = 0.5
) -> list[tuple[str, np.ndarray]]:
    """(title, picture) for every task present in ``outputs``, in the order of ``TASKS``."""
    return [
        (_TITLES[task], draw_prediction(image_rgb, outputs, metadata, task, confidence_threshold))
        for task in TASKS
        if task in outputs
    ]


def draw_ground_truth(image_rgb: np.ndarray, record: dict, metadata: Metadata) -> np.ndarray:
    """Draw a Detectron2 dataset record's labels (panoptic, instances or semantic)."""
    if "pan_seg_file_name" in record:
        # Panoptic records carry semantic labels too; draw the panoptic ones only.
        record = {k: v for k, v in record.items() if k not in ("sem_seg", "sem_seg_file_name")}
    return Visualizer(image_rgb, metadata).draw_dataset_dict(record).get_image()


def _titled(picture: np.ndarray, title: str, height: int) -> np.ndarray:
    """Scale to ``height`` rows and add a title bar: (height + 20, W, 3) uint8 RGB."""
    scale = height / picture.shape[0]
    picture = cv2.resize(picture, (max(1, round(picture.shape[1] * scale)), height))
    bar = np.full((20, picture.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, picture], axis=0)


def make_grid(rows: Sequence[Sequence[tuple[str, np.ndarray]]], height: int = 256) -> np.ndarray:
    """Lay out rows of (title, RGB picture) into one RGB image; rows are padded on the right."""
    lines = [np.concatenate([_titled(p, t, height) for t, p in row], axis=1) for row in rows]
    width = max(line.shape[1] for line in lines)
    lines = [
        np.pad(line, ((0, 4), (0, width - line.shape[1]), (0, 0)), constant_values=255)
        for line in lines
    ]
    return np.concatenate(lines, axis=0)


def save_rgb(path: str, image_rgb: np.ndarray) -> None:
    """Write an RGB image (PNG or JPEG by extension), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, image_rgb[..., ::-1]):
        raise OSError(f"could not write {path}")


@torch.no_grad()
def save_prediction_grid(
    predictor: Callable[[np.ndarray], dict],
    records: Sequence[dict],
    metadata: Metadata,
    output_path: str,
    confidence_threshold: float = 0.5,
) -> str:
    """Predict each record's image and save one grid: a row per image, ground truth first.

    Args:
        predictor: (H, W, 3) uint8 **RGB** image -> model output dict, e.g. a
            :class:`mask2former.predictor.Predictor` (whose default format is RGB). Detectron2's
            ``DefaultPredictor`` takes BGR images: wrap it as ``lambda rgb: p(rgb[..., ::-1])``.
        records: Detectron2 dataset records (file_name plus labels).
        metadata: class names and colours of the dataset.
        output_path: the PNG to write.
    Returns:
        ``output_path``.
    """
    rows = []
    for record in records:
        image_rgb = read_image(record["file_name"], format="RGB")
        outputs = predictor(image_rgb)
        row = [
            ("image", image_rgb),
            ("ground truth", draw_ground_truth(image_rgb, record, metadata)),
        ]
        row += draw_predictions(image_rgb, outputs, metadata, confidence_threshold)
        rows.append(row)
    save_rgb(output_path, make_grid(rows))
    logger.info("saved predictions of %d images to %s", len(records), output_path)
    return output_path
