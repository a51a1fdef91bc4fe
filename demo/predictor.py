"""Run a Mask2Former model on images or video frames and draw what it predicts."""

import logging
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from mask2former.config import inference_switches
from mask2former.predictor import Predictor
from mask2former.utils.visualization import TASKS, draw_prediction, make_grid

# --task name -> (output key, config flag under the family's inference switches)
TASK_NAMES = {
    "panoptic": ("panoptic_seg", "PANOPTIC_ON"),
    "instance": ("instances", "INSTANCE_ON"),
    "semantic": ("sem_seg", "SEMANTIC_ON"),
}
_TITLES = {key: name for name, (key, _) in TASK_NAMES.items()}

logger = logging.getLogger("mask2former.demo")


def select_tasks(cfg: CfgNode, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """Switch the config's TEST flags to ``tasks`` ("panoptic", "instance", "semantic"; None:
    leave the config as it is). Returns the output keys predicted, in drawing order."""
    flags = inference_switches(cfg)
    if tasks:
        unknown = sorted(set(tasks) - set(TASK_NAMES))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; expected some of {list(TASK_NAMES)}")
        for name, (_, flag) in TASK_NAMES.items():
            flags[flag] = name in tasks
    switched_on = {key for key, flag in TASK_NAMES.values() if flags[flag]}
    keys = tuple(key for key in TASKS if key in switched_on)
    if not keys:
        raise ValueError("the config switches no task on (MODEL.MASK_FORMER.TEST.*_ON, or the "
                         "family's own, e.g. MODEL.FASTINST.TEST.*_ON)")
    return keys


class VisualizationDemo:
    """A :class:`~mask2former.predictor.Predictor` plus drawing with the metadata of
    ``cfg.DATASETS.TEST[0]``.

    Args:
        cfg: a Mask2Former config with ``MODEL.WEIGHTS`` (empty: random weights).
        confidence_threshold: instances scoring below it are not drawn.
        tasks: "panoptic", "instance", "semantic" to predict and draw (None: the config's).
        batch_size: images (video frames) per forward pass.
        backend: the Predictor's backend ("auto", "eager", "compile", "onnxruntime",
            "openvino"; None: ``$M2F_PREDICTOR_BACKEND``, else "auto").
    """

    def __init__(
        self,
        cfg: CfgNode,
        *,
        confidence_threshold: float = 0.5,
        tasks: Sequence[str] | None = None,
        batch_size: int = 1,
        backend: str | None = None,
    ):
        cfg = cfg.clone()
        cfg.defrost()
        self.tasks = select_tasks(cfg, tasks)
        # Registers the datasets declared in DATASETS.CUSTOM, whose metadata is drawn.
        self.predictor = Predictor.from_config(cfg, batch_size=batch_size, backend=backend)
        metadata = self.predictor.metadata
        self.metadata = metadata if metadata is not None else MetadataCatalog.get("__unused")
        classes = self.metadata.get("stuff_classes") or self.metadata.get("thing_classes")
        logger.info("Drawing with the classes of dataset '%s': %s", self.metadata.name, classes)
        self.input_format = cfg.INPUT.FORMAT
        self.confidence_threshold = confidence_threshold

    def _to_rgb(self, image: np.ndarray) -> np.ndarray:
        return image[..., ::-1] if self.input_format == "BGR" else image

    def draw(self, image_rgb: np.ndarray, predictions: dict) -> list[tuple[str, np.ndarray]]:
        """(title, RGB picture) for each selected task, in the order of ``TASKS``."""
        return [
            (
                _TITLES[task],
                draw_prediction(
                    image_rgb, predictions, self.metadata, task, self.confidence_threshold
                ),
            )
            for task in self.tasks
            if task in predictions
        ]

    def run_on_image(self, image: np.ndarray) -> tuple[dict, np.ndarray]:
        """Predict one (H, W, 3) uint8 image in ``cfg.INPUT.FORMAT``.

        Returns:
            The model's output dict, and an RGB picture: one titled panel per selected task,
            side by side.
        """
        predictions = self.predictor(image, format=self.input_format)
        panels = self.draw(self._to_rgb(image), predictions)
        return predictions, make_grid([panels], height=image.shape[0])

    def _draw_frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        predictions = self.predictor(frames, format="BGR")
        drawn = []
        for frame, prediction in zip(frames, predictions):
            task = next(t for t in self.tasks if t in prediction)
            picture = draw_prediction(
                frame[..., ::-1], prediction, self.metadata, task, self.confidence_threshold
            )
            drawn.append(np.ascontiguousarray(picture[..., ::-1]))
        return drawn

    def run_on_video(
        self, video: cv2.VideoCapture, batch_frames: int = 1
    ) -> Iterator[np.ndarray]:
        """Yield each BGR frame of ``video`` with the first selected task drawn on it (BGR).

        Frames are read ``batch_frames`` at a time and predicted as one batch, so at most that
        many frames are held in memory.
        """
        frames: list[np.ndarray] = []
        while video.isOpened():
            ok, frame = video.read()
            if not ok:
                break
            frames.append(frame)
            if len(frames) == batch_frames:
                yield from self._draw_frames(frames)
                frames = []
        if frames:
            yield from self._draw_frames(frames)
