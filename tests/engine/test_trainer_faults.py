"""Training faults with clear outcomes: a non-finite loss, files that vanish mid-training.

In-process :class:`Trainer` on a tiny generated dataset (64-pixel images, a few iterations).
"""

import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase

from mask2former.config import load_config
from mask2former.data.datasets.register_synthetic import register_all_synthetic
from mask2former.data.synthetic import generate_synthetic_dataset
from mask2former.engine.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEMANTIC = os.path.join(
    REPO, "configs", "synthetic", "semantic-segmentation", "maskformer2_R18_synthetic.yaml"
)
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY", "64", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "196",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "()",
    # A smaller model than the config's: 3 decoder layers, 1 encoder layer, 10 queries.
    "MODEL.MASK_FORMER.DEC_LAYERS", "4", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10",
]  # fmt: skip


@pytest.fixture
def data_root(tmp_path_factory):
    """A fresh dataset per test: the missing-file tests delete from it."""
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic_dataset(root, num_train=4, num_val=1, min_size=64, max_size=80,
                               progress=False)  # fmt: skip
    register_all_synthetic(root)
    yield root
    register_all_synthetic()  # point the names back at the default root


def _trainer(output_dir, *opts):
    cfg = load_config(SEMANTIC, [*TINY, "OUTPUT_DIR", str(output_dir), *opts])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


# The last iteration too: there Detectron2's evaluation hook would still evaluate.
@pytest.mark.parametrize("bad_iteration", [5, 7])
def test_non_finite_loss_names_iteration_and_terms_and_keeps_the_checkpoint(
    data_root, tmp_path, bad_iteration
):
    trainer = _trainer(
        tmp_path, "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATASETS.TEST", "('synthetic_val_sem_seg',)",
    )  # fmt: skip
    criterion = trainer.model.criterion
    real_forward = criterion.forward
    calls = []

    def forward(outputs, targets):
        losses = real_forward(outputs, targets)
        calls.append(len(calls))
        if len(calls) == bad_iteration + 1:
            losses["loss_dice_2"] = losses["loss_dice_2"] * float("nan")
            losses["loss_mask"] = losses["loss_mask"] + float("inf")
        return losses

    criterion.forward = forward
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    message = str(info.value)
    assert f"Non-finite loss at iteration {bad_iteration}" in message
    assert "loss_dice_2=nan" in message and "loss_mask=inf" in message
    assert "loss_ce=" not in message  # the finite terms are not named
    kept_iteration = bad_iteration - 2  # checkpoints after iterations 1, 3, 5, 7
    kept_name = f"model_{kept_iteration:07d}.pth"
    kept = os.path.join(str(tmp_path), kept_name)
    assert f"the last checkpoint, {kept}, is kept" in message

    # Nothing was saved after the failed step; the kept checkpoint holds finite weights.
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read() == kept_name
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".pth")) == [
        f"model_{i:07d}.pth" for i in range(1, kept_iteration + 1, 2)
    ]  # no model_final.pth either
    saved = torch.load(kept, weights_only=True)
    assert saved["iteration"] == kept_iteration
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    # The weights in memory were not stepped with the NaN gradients either.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # No evaluation after the failure.
    assert not any(key.startswith("sem_seg/") for key in trainer.storage.histories())


class _DeleteAfter(HookBase):
    """Delete ``paths`` after iteration ``iteration``."""

    def __init__(self, iteration, paths):
        self.iteration, self.paths = iteration, paths

    def after_step(self):
        if self.trainer.iter == self.iteration:
            for path in self.paths:
                os.remove(path)


@pytest.mark.parametrize(
    "key, what, workers",
    [
        ("file_name", "Image file not found", 0),
        ("sem_seg_file_name", "Semantic label map not found", 0),
        ("file_name", "Image file not found", 1),  # raised in a data-loader worker
    ],
)
def test_files_that_vanish_mid_training_are_named(data_root, tmp_path, key, what, workers):
    records = DatasetCatalog.get("synthetic_train_sem_seg")
    paths = [r[key] for r in records]
    trainer = _trainer(
        tmp_path, "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", str(workers),
    )  # fmt: skip
    trainer.register_hooks([_DeleteAfter(1, paths)])
    with pytest.raises(FileNotFoundError) as info:
        trainer.train()
    message = str(info.value)
    assert what in message
    assert any(f"'{path}'" in message for path in paths), message
    assert trainer.iter < 39  # stopped when the first vanished file was needed
