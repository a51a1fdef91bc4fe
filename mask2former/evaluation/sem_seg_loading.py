"""Reading ground-truth label maps for Detectron2's ``SemSegEvaluator`` under numpy 2."""

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["load_sem_seg_labels"]


def load_sem_seg_labels(filename: str, dtype=int) -> np.ndarray:
    """The label map in ``filename`` as an (H, W) array of ``dtype``.

    Replaces Detectron2's default loader, which passes ``copy=False`` to ``np.array`` and so
    fails under numpy 2 whenever a conversion (here: to ``dtype``) is needed.
    """
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)  # (H, W)
