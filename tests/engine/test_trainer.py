"""Trainer construction: Detectron2's constructor with the safe checkpointer, CPU DDP and AMP.

Fast: the trainer is built (model, optimizer, data loader, hooks) but not trained; the data is a
tiny generated dataset. Two-process CPU training itself is in ``test_train_net.py``.
"""

import logging
import os
import types

import detectron2.engine.defaults as d2_defaults
import pytest
from detectron2.engine import SimpleTrainer, hooks
from detectron2.utils import comm

import mask2former.engine.trainer as trainer_module
from mask2former.config import load_config
from mask2former.data.datasets.register_synthetic import register_all_synthetic
from mask2former.data.synthetic import generate_synthetic_dataset
from mask2former.engine.trainer import Trainer
from mask2former.utils.checkpoint import SafeCheckpointer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEMANTIC = os.path.join(
    REPO, "configs", "synthetic", "semantic-segmentation", "maskformer2_R18_synthetic.yaml"
)
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.CROP.SIZE", "(64, 64)",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "()",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic_dataset(root, num_train=2, num_val=1, min_size=64, max_size=96,
                               progress=False)
    register_all_synthetic(root)
    yield root
    register_all_synthetic()  # point the names back at the default root


def _cfg(tmp_path, *opts):
    cfg = load_config(SEMANTIC, [*TINY, "OUTPUT_DIR", str(tmp_path), *opts])
    cfg.freeze()
    return cfg


def test_safe_checkpointer_replaces_detectron2s_in_the_hook(data_root, tmp_path):
    trainer = Trainer(_cfg(tmp_path, "MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH", "True"))
    assert isinstance(trainer.checkpointer, SafeCheckpointer)
    assert trainer.checkpointer.allow_shape_mismatch is True
    assert trainer.checkpointer.save_dir == str(tmp_path)
    # Saving and resuming include the trainer state (iteration, optimizer, scheduler, hooks).
    assert "trainer" in trainer.checkpointer.checkpointables
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert len(periodic) == 1  # one process: the main one
    assert periodic[0].checkpointer is trainer.checkpointer


def test_amp_is_turned_off_on_the_cpu(data_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mask2former.engine.trainer"):
        trainer = Trainer(_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True"))
    assert type(trainer._trainer) is SimpleTrainer  # not AMPTrainer
    assert not trainer.cfg.SOLVER.AMP.ENABLED and trainer.cfg.is_frozen()
    assert "AMP is off" in caplog.text


def test_several_cpu_processes_get_ddp_without_device_ids(data_root, tmp_path, monkeypatch):
    # The trainer module sees two processes (Detectron2 still sees one, so nothing is wrapped);
    # the DDP step of Detectron2's constructor must then go through the CPU variant.
    monkeypatch.setattr(trainer_module, "comm", types.SimpleNamespace(get_world_size=lambda: 2))
    calls = []

    def record(model, **kwargs):
        calls.append(kwargs)
        return model

    monkeypatch.setattr(trainer_module, "create_ddp_model", record)
    original = d2_defaults.create_ddp_model
    trainer = Trainer(_cfg(tmp_path))
    assert calls == [{"broadcast_buffers": False, "device_ids": None}]
    assert d2_defaults.create_ddp_model is original  # Detectron2's module is not patched
    assert isinstance(trainer.checkpointer, SafeCheckpointer)
    assert trainer.max_iter == trainer.cfg.SOLVER.MAX_ITER and comm.get_world_size() == 1


def test_one_process_uses_detectron2s_constructor_unchanged(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(
        trainer_module, "_init_with_cpu_ddp", lambda *a: pytest.fail("CPU DDP path taken")
    )
    trainer = Trainer(_cfg(tmp_path))
    assert trainer.model is trainer._trainer.model and trainer.start_iter == 0
