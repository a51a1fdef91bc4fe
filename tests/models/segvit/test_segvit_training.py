"""A short real training run of SegViT-tiny on the generated data: the loss falls and the mIoU
on the training images rises (CPU: 60 iterations, about 12 CPU seconds in all with one thread)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from PIL import Image

from mask2former.config import load_config
from mask2former.data.datasets.register_synthetic import register_all_synthetic
from mask2former.data.synthetic import generate_synthetic_dataset

TINY = str(Path(__file__).resolve().parents[3] / "configs" / "synthetic" / "semantic-segmentation"
           / "segvit_tiny_synthetic.yaml")
NUM_CLASSES = 8
ITERS = 60  # mIoU about 0.02 -> 0.3


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic_dataset(root, num_train=2, num_val=1, min_size=64, max_size=64,
                               progress=False)
    register_all_synthetic(root)
    try:
        records = DatasetCatalog.get("synthetic_train_sem_seg")
    finally:
        register_all_synthetic()  # point the names back at the default root
    inputs = []
    for r in records:
        image = np.asarray(Image.open(r["file_name"]).convert("RGB"))
        label = np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64)
        inputs.append({"image": torch.as_tensor(image.transpose(2, 0, 1).copy()).float(),
                       "sem_seg": torch.as_tensor(label)})
    return inputs


def mean_iou(model, inputs) -> float:
    model.eval()
    with torch.no_grad():
        preds = [r["sem_seg"].argmax(0) for r in model(inputs)]
    model.train()
    ious = []
    for c in range(NUM_CLASSES):
        inter = union = 0
        for pred, x in zip(preds, inputs):
            valid = x["sem_seg"] != 255
            p, t = (pred == c) & valid, (x["sem_seg"] == c) & valid
            inter += (p & t).sum().item()
            union += (p | t).sum().item()
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_raises_miou(batch):
    torch.manual_seed(0)
    cfg = load_config(TINY, ["MODEL.VIT.IMG_SIZE", "64", "MODEL.VIT.PATCH_SIZE", "8",
                             "MODEL.VIT.EMBED_DIM", "64", "MODEL.VIT.NUM_HEADS", "4",
                             "MODEL.VIT.DEPTH", "3", "MODEL.VIT.OUT_INDICES", "[0, 1, 2]",
                             "MODEL.SEGVIT.LAYERS_PER_STAGE", "1", "MODEL.SEGVIT.HIDDEN_DIM", "32",
                             "MODEL.SEGVIT.DIM_FEEDFORWARD", "64"])
    model = build_model(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = mean_iou(model, batch)
    losses = []
    for _ in range(ITERS):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = mean_iou(model, batch)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert after > before + 0.15, (before, after, losses[:3], losses[-3:])
