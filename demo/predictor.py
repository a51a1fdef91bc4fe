"""Run a Mask2Former model on images or video frames and draw what it predicts."""

from collections.abc import Iterator

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine.defaults import DefaultPredictor

from mask2former.utils.visualization import TASKS, draw_prediction, draw_predictions, make_grid


class VisualizationDemo:
    """A ``DefaultPredictor`` plus drawing with the metadata of ``cfg.DATASETS.TEST[0]``."""

    def __init__(self, cfg: CfgNode, confidence_threshold: float = 0.5):
        """
        Args:
            cfg: a Mask2Former config with ``MODEL.WEIGHTS`` (empty: random weights).
            confidence_threshold: instances scoring below it are not drawn.
        """
        self.metadata = MetadataCatalog.get(
            cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        )
        self.predictor = DefaultPredictor(cfg)
        self.input_format = cfg.INPUT.FORMAT
        self.confidence_threshold = confidence_threshold

    def _to_rgb(self, image: np.ndarray) -> np.ndarray:
        return image[..., ::-1] if self.input_format == "BGR" else image

    def run_on_image(self, image: np.ndarray) -> tuple[dict, np.ndarray]:
        """Predict one (H, W, 3) uint8 image in ``cfg.INPUT.FORMAT``.

        Returns:
            The model's output dict, and an RGB picture: one titled panel per predicted task
            (panoptic, instance, semantic), side by side.
        """
        predictions = self.predictor(image)
        panels = draw_predictions(
            self._to_rgb(image), predictions, self.metadata, self.confidence_threshold
        )
        return predictions, make_grid([panels], height=image.shape[0])

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        """Yield each BGR frame of ``video`` with the first predicted task drawn on it (BGR)."""
        while video.isOpened():
            ok, frame = video.read()
            if not ok:
                break
            image = frame if self.input_format == "BGR" else frame[..., ::-1]
            predictions = self.predictor(image)
            task = next(t for t in TASKS if t in predictions)
            drawn = draw_prediction(
                frame[..., ::-1], predictions, self.metadata, task, self.confidence_threshold
            )
            yield np.ascontiguousarray(drawn[..., ::-1])
