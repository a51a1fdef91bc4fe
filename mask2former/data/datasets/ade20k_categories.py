"""ADE20K (SceneParsing, ADEChallengeData2016) category facts, as in the official project.

- 150 semantic classes: Detectron2's ``ADE20K_SEM_SEG_CATEGORIES`` names, in label order
  (label value v in the raw annotations is class v - 1; 0 is "other", ignored).
- 100 of them are "things": the classes of the instance annotations
  (``annotations_instance``, from the SceneParsing instance challenge). Instance class k (1..100)
  is semantic class ``ADE20K_INSTANCE_CATEGORIES[k - 1]["id"]`` (0-based).
"""

from __future__ import annotations

import numpy as np
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

__all__ = [
    "ADE20K_150_CATEGORIES",
    "ADE20K_COLORS",
    "ADE20K_INSTANCE_CATEGORIES",
    "decode_ade20k_instance_png",
]

# fmt: off
ADE20K_COLORS = [
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
    [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
    [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
    [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
    [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
    [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
    [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112], [0, 255, 133],
    [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0], [0, 143, 255], [51, 255, 0],
    [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0], [0, 255, 153],
    [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255],
    [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255],
    [163, 255, 0], [255, 235, 0], [8, 184, 170], [133, 0, 255], [0, 255, 92], [184, 0, 255],
    [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255],
    [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255],
    [255, 255, 0], [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0],
    [173, 0, 255], [0, 245, 255], [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255],
    [184, 255, 0], [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
]

# The 100 instance classes in instance-label order: (0-based semantic class id, instance name).
_INSTANCE_CLASSES = [
    (7, "bed"), (8, "windowpane"), (10, "cabinet"), (12, "person"), (14, "door"), (15, "table"),
    (18, "curtain"), (19, "chair"), (20, "car"), (22, "painting"), (23, "sofa"), (24, "shelf"),
    (27, "mirror"), (30, "armchair"), (31, "seat"), (32, "fence"), (33, "desk"),
    (35, "wardrobe"), (36, "lamp"), (37, "bathtub"), (38, "railing"), (39, "cushion"),
    (41, "box"), (42, "column"), (43, "signboard"), (44, "chest of drawers"), (45, "counter"),
    (47, "sink"), (49, "fireplace"), (50, "refrigerator"), (53, "stairs"), (55, "case"),
    (56, "pool table"), (57, "pillow"), (58, "screen door"), (62, "bookcase"),
    (64, "coffee table"), (65, "toilet"), (66, "flower"), (67, "book"), (69, "bench"),
    (70, "countertop"), (71, "stove"), (72, "palm"), (73, "kitchen island"), (74, "computer"),
    (75, "swivel chair"), (76, "boat"), (78, "arcade machine"), (80, "bus"), (81, "towel"),
    (82, "light"), (83, "truck"), (85, "chandelier"), (86, "awning"), (87, "streetlight"),
    (88, "booth"), (89, "television receiver"), (90, "airplane"), (92, "apparel"), (93, "pole"),
    (95, "bannister"), (97, "ottoman"), (98, "bottle"), (102, "van"), (103, "ship"),
    (104, "fountain"), (107, "washer"), (108, "plaything"), (110, "stool"), (111, "barrel"),
    (112, "basket"), (115, "bag"), (116, "minibike"), (118, "oven"), (119, "ball"),
    (120, "food"), (121, "step"), (123, "trade name"), (124, "microwave"), (125, "pot"),
    (126, "animal"), (127, "bicycle"), (129, "dishwasher"), (130, "screen"), (132, "sculpture"),
    (133, "hood"), (134, "sconce"), (135, "vase"), (136, "traffic light"), (137, "tray"),
    (138, "ashcan"), (139, "fan"), (142, "plate"), (143, "monitor"), (144, "bulletin board"),
    (146, "radiator"), (147, "glass"), (148, "clock"), (149, "flag"),
]
# fmt: on

ADE20K_INSTANCE_CATEGORIES = [{"id": i, "name": name} for i, name in _INSTANCE_CLASSES]

_THING_IDS = {i for i, _ in _INSTANCE_CLASSES}

# COCO-panoptic style categories of ADE20K panoptic: id = 0-based semantic class.
ADE20K_150_CATEGORIES = [
    {"id": i, "name": name, "isthing": int(i in _THING_IDS), "color": ADE20K_COLORS[i]}
    for i, name in enumerate(ADE20K_SEM_SEG_CATEGORIES)
]

assert len(ADE20K_COLORS) == 150 and len(ADE20K_INSTANCE_CATEGORIES) == 100


def decode_ade20k_instance_png(ins: np.ndarray, path: str = "") -> list[tuple[np.ndarray, int]]:
    """The objects of an ADE20K ``annotations_instance`` PNG, as (mask (H, W) bool, 0-based
    semantic class id) pairs in instance-id order.

    The PNG's red channel holds the instance class (1..100, 0 = none) and its green channel the
    instance id (0 = void); every instance must have a single class.
    """
    if ins.ndim != 3 or ins.shape[2] < 2:
        raise ValueError(f"ADE20K instance PNG '{path}' must have colour channels, got {ins.shape}")
    objects = []
    for inst_id in np.unique(ins[..., 1]):
        if inst_id == 0:
            continue
        mask = ins[..., 1] == inst_id  # (H, W)
        classes = np.unique(ins[..., 0][mask])
        if len(classes) != 1 or not 1 <= classes[0] <= len(ADE20K_INSTANCE_CATEGORIES):
            raise ValueError(
                f"ADE20K instance PNG '{path}': instance {inst_id} has class values "
                f"{classes.tolist()}; expected one value in 1..100"
            )
        objects.append((mask, ADE20K_INSTANCE_CATEGORIES[classes[0] - 1]["id"]))
    return objects
