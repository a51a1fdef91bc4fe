"""Settings shared by the tests that run a tiny, randomly initialised model on the CPU.

Imported by the test modules of this folder (pytest puts it on ``sys.path``).
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The built-in synthetic panoptic config: R-18, 64-wide decoders, all three tasks switched on.
PANOPTIC_CONFIG = os.path.join(
    ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_synthetic.yaml"
)
# Random weights and a shallower model: 1 encoder layer, 3 decoder layers (+ the query loss).
TINY = [
    "MODEL.WEIGHTS", "",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.DEC_LAYERS", "4",
]  # fmt: skip
# Thresholds 0: every query may become a panoptic segment, even with random weights.
NO_THRESHOLDS = [
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0",
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0",
]  # fmt: skip
