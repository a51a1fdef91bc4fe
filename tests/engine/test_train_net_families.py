"""FastInst and Mask Transfiner through ``train_net.py`` alone, as a user runs them: train a
few iterations, resume from a mid-run checkpoint, evaluate a checkpoint with ``--eval-only``.
Tiny images and schedules: this checks the wiring (mapper, trainer, evaluator), not accuracy."""

import json
import os
import subprocess
import sys

import pytest

from mask2former.data.datasets.register_synthetic import register_all_synthetic
from mask2former.data.synthetic import generate_synthetic_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "train_net.py")
INSTANCE = os.path.join(REPO, "configs", "synthetic", "instance-segmentation")
COMMON = [
    "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
    "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "TEST.EVAL_PERIOD", "0",
]
FAMILIES = {
    "fastinst": (os.path.join(INSTANCE, "fastinst_R18_synthetic.yaml"),
                 ["INPUT.IMAGE_SIZE", "64", "MODEL.FASTINST.NUM_OBJECT_QUERIES", "8"]),
    "transfiner": (os.path.join(INSTANCE, "transfiner_R18_synthetic.yaml"),
                   ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
                    "SOLVER.STEPS", "(3,)"]),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic_dataset(root, num_train=4, num_val=2, min_size=64, max_size=96,
                               progress=False)
    yield root
    register_all_synthetic()  # point the names back at the default root


def _train_net(args, data_root):
    env = dict(os.environ, M2F_SYNTHETIC_ROOT=data_root, PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, TRAIN_NET, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"train_net.py {' '.join(args)} failed:\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_resume_and_eval_only(family, data_root, tmp_path):
    config, opts = FAMILIES[family]
    out = str(tmp_path)
    args = ["--config-file", config, *COMMON, *opts, "OUTPUT_DIR", out]
    _train_net(args, data_root)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))

    # Resume from the first checkpoint, as after a kill: iterations 2 and 3 run again.
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    _train_net(["--resume", *args], data_root)
    with open(os.path.join(out, "log.txt")) as f:
        assert "Starting training from iteration 2" in f.read()

    proc = _train_net(["--eval-only", *args, "MODEL.WEIGHTS",
                       os.path.join(out, "model_final.pth")], data_root)
    assert "copypaste: Task: segm" in proc.stdout + proc.stderr  # COCO mask AP evaluated
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        assert isinstance(json.load(f), list)
