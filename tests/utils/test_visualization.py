"""Drawing predictions and ground truth, and laying pictures out in a grid."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import Metadata
from detectron2.structures import Boxes, Instances

from mask2former.data.datasets.register_synthetic import get_synthetic_metadata
from mask2former.utils.visualization import (
    draw_ground_truth,
    draw_predictions,
    make_grid,
    save_prediction_grid,
)

H, W = 48, 64


@pytest.fixture
def metadata():
    return Metadata(name="test_vis", **get_synthetic_metadata())


def _outputs():
    sem = torch.zeros(8, H, W)  # (K, H, W)
    sem[4, :, : W // 2] = 1.0
    sem[5, :, W // 2 :] = 1.0
    pan = torch.zeros(H, W, dtype=torch.int32)
    pan[:, : W // 2] = 1
    pan[10:20, 40:50] = 2
    instances = Instances((H, W))
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 10:20, 40:50] = True
    masks[1, 30:40, 5:15] = True
    instances.pred_masks = masks
    instances.pred_boxes = Boxes(torch.zeros(2, 4))
    instances.scores = torch.tensor([0.9, 0.1])
    instances.pred_classes = torch.tensor([0, 3])
    segments = [
        {"id": 1, "category_id": 4, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True},
    ]
    return {"sem_seg": sem, "panoptic_seg": (pan, segments), "instances": instances}


def test_draw_predictions_of_every_task(metadata):
    image = np.full((H, W, 3), 100, np.uint8)
    panels = draw_predictions(image, _outputs(), metadata, confidence_threshold=0.5)
    assert [title for title, _ in panels] == ["panoptic", "instance", "semantic"]
    for _, picture in panels:
        assert picture.shape == (H, W, 3) and picture.dtype == np.uint8
        assert (picture != 100).any()  # something was drawn
    only_semantic = {"sem_seg": _outputs()["sem_seg"]}
    assert [t for t, _ in draw_predictions(image, only_semantic, metadata)] == ["semantic"]


def test_draw_ground_truth_and_grid(metadata, tmp_path):
    image = np.full((H, W, 3), 100, np.uint8)
    sem = np.full((H, W), 255, np.uint8)
    sem[:, :10] = 6
    truth = draw_ground_truth(image, {"sem_seg": sem}, metadata)
    assert truth.shape == (H, W, 3) and (truth[:, :10] != 100).any()
    grid = make_grid([[("a", image), ("b", truth)], [("c", image)]], height=96)
    # Each panel is scaled to 96 rows plus a 20-row title; rows are separated by 4 blank rows.
    assert grid.shape == (2 * (96 + 20 + 4), 2 * 128, 3)


def test_prediction_grid_gives_the_predictor_rgb_images(metadata, tmp_path):
    # A red-left / blue-right image: the predictor must see it as it is, not channel-swapped.
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2, 0] = 255
    rgb[:, W // 2 :, 2] = 255
    path = str(tmp_path / "image.png")
    cv2.imwrite(path, rgb[..., ::-1])  # OpenCV writes BGR
    seen = []

    def predictor(image):
        seen.append(image)
        return _outputs()

    record = {"file_name": path, "sem_seg": np.zeros((H, W), np.uint8)}
    out = save_prediction_grid(predictor, [record], metadata, str(tmp_path / "grid.png"))
    assert len(seen) == 1 and np.array_equal(seen[0], rgb)
    # image, ground truth and the three tasks, side by side.
    assert cv2.imread(out).shape[1] == 5 * round(W * 256 / H)
