"""The README's worked example: "your own data" made by re-labelling the generated dataset.

Writes one custom dataset in each of the three formats that ``DATASETS.CUSTOM`` declares, with
other classes than the generated data (two shape classes merged, other names), and a config
file declaring each::

    <out>/instance/{train,val}.json           COCO instances: disc, polygon (triangle + square),
                                              star; category ids 1, 2, 4 (not contiguous)
    <out>/panoptic/{train,val}.json           COCO panoptic json, stuff categories listed first:
                                              air, grass, gravel, wall, disc, polygon, star
    <out>/panoptic/semantic_{train,val}/      their semantic PNGs (contiguous ids, 255 = void)
    <out>/semantic/{train,val}/*.png          label PNGs: 0 shape, 1 sky, 2 ground (grass +
                                              gravel), 3 brick; 255 = void
    <out>/semantic/categories.json            their class names and colours
    <out>/{instance,panoptic,semantic}.yaml   configs declaring the datasets (DATASETS.CUSTOM)

The images and panoptic PNGs stay where the generator wrote them. Command line::

    python -m mask2former.data.relabel_example --synthetic-root datasets/generated \\
        --out datasets/my_shapes
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np
from PIL import Image

from .synthetic import SYNTHETIC_CATEGORIES, default_synthetic_root, split_paths

__all__ = ["write_example"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
# Generated dataset id -> (new id, new name) of the instance and panoptic things.
_THINGS = {1: (1, "disc"), 2: (2, "polygon"), 3: (2, "polygon"), 4: (4, "star")}
_THING_COLORS = {1: [220, 20, 60], 2: [0, 0, 230], 4: [190, 60, 255]}
# Panoptic categories, stuff first (so the things' contiguous ids are not 0..#things-1).
_PANOPTIC_CATEGORIES = [
    {"id": 11, "name": "air", "isthing": 0, "color": [70, 130, 180]},
    {"id": 12, "name": "grass", "isthing": 0, "color": [107, 142, 35]},
    {"id": 13, "name": "gravel", "isthing": 0, "color": [150, 140, 120]},
    {"id": 14, "name": "wall", "isthing": 0, "color": [150, 60, 40]},
    {"id": 1, "name": "disc", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "polygon", "isthing": 1, "color": [0, 0, 230]},
    {"id": 4, "name": "star", "isthing": 1, "color": [190, 60, 255]},
]
# Semantic classes (label value = index) and the generated class names each one merges.
_SEMANTIC = [
    ("shape", [255, 200, 0], ("circle", "triangle", "square", "star")),
    ("sky", [70, 130, 180], ("sky",)),
    ("ground", [120, 140, 80], ("grass", "gravel")),
    ("brick", [150, 60, 40], ("brick",)),
]
# Base model config of each format, under the repository's configs/synthetic.
_BASE_CONFIGS = {
    "instance": "instance-segmentation/maskformer2_R18_synthetic.yaml",
    "panoptic": "panoptic-segmentation/maskformer2_R18_synthetic.yaml",
    "semantic": "semantic-segmentation/maskformer2_R18_synthetic.yaml",
}


def _lookup(new_ids: dict[str, int]) -> np.ndarray:
    """A 256-entry table: generated contiguous label -> new label (255 stays void)."""
    table = np.full(256, 255, np.uint8)
    for contiguous, category in enumerate(SYNTHETIC_CATEGORIES):
        table[contiguous] = new_ids[category["name"]]
    return table


def _write_json(data, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def _relabel_pngs(src: str, dst: str, table: np.ndarray) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        labels = np.asarray(Image.open(os.path.join(src, name)))  # (H, W) uint8
        Image.fromarray(table[labels]).save(os.path.join(dst, name))


def _instance(paths: dict, out: str, split: str) -> None:
    with open(paths["instances_json"]) as f:
        data = json.load(f)
    for ann in data["annotations"]:
        ann["category_id"] = _THINGS[ann["category_id"]][0]
    data["categories"] = [
        {"id": i, "name": n, "color": _THING_COLORS[i]} for i, n in dict(_THINGS.values()).items()
    ]
    _write_json(data, os.path.join(out, "instance", f"{split}.json"))


def _panoptic(paths: dict, out: str, split: str) -> None:
    with open(paths["panoptic_json"]) as f:
        data = json.load(f)
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            if seg["category_id"] in _THINGS:
                seg["category_id"] = _THINGS[seg["category_id"]][0]
    data["categories"] = _PANOPTIC_CATEGORIES
    _write_json(data, os.path.join(out, "panoptic", f"{split}.json"))
    new_id = {c["id"]: i for i, c in enumerate(_PANOPTIC_CATEGORIES)}
    table = _lookup({c["name"]: new_id[_THINGS.get(c["id"], (c["id"],))[0]]
                     for c in SYNTHETIC_CATEGORIES})
    _relabel_pngs(paths["semantic"], os.path.join(out, "panoptic", f"semantic_{split}"), table)


def _semantic(paths: dict, out: str, split: str) -> None:
    table = _lookup({old: i for i, (_, _, olds) in enumerate(_SEMANTIC) for old in olds})
    _relabel_pngs(paths["semantic"], os.path.join(out, "semantic", split), table)


def _config(kind: str, out: str, synthetic_root: str, configs_root: str) -> str:
    """The YAML text declaring the ``kind`` datasets (paths as given, relative or absolute)."""
    images = {s: split_paths(synthetic_root, s)["images"] for s in SPLITS}
    lines = []
    for split in SPLITS:
        name = f"my_shapes_{split}_{kind}"
        lines.append(f"    {name}:")
        if kind == "instance":
            fields = {"FORMAT": "coco_instance", "IMAGE_ROOT": images[split],
                      "JSON_FILE": os.path.join(out, "instance", f"{split}.json")}
        elif kind == "panoptic":
            fields = {
                "FORMAT": "coco_panoptic", "IMAGE_ROOT": images[split],
                "PANOPTIC_ROOT": split_paths(synthetic_root, split)["panoptic"],
                "PANOPTIC_JSON": os.path.join(out, "panoptic", f"{split}.json"),
                "SEM_SEG_ROOT": os.path.join(out, "panoptic", f"semantic_{split}"),
                "JSON_FILE": os.path.join(out, "instance", f"{split}.json"),
            }
        else:
            fields = {"FORMAT": "sem_seg", "IMAGE_ROOT": images[split],
                      "SEM_SEG_ROOT": os.path.join(out, "semantic", split),
                      "CATEGORIES_JSON": os.path.join(out, "semantic", "categories.json")}
        lines += [f"      {key}: {value}" for key, value in fields.items()]
    num_classes = {"instance": len(_THING_COLORS), "panoptic": len(_PANOPTIC_CATEGORIES),
                   "semantic": len(_SEMANTIC)}[kind]
    return "\n".join([
        f"_BASE_: {os.path.join(configs_root, _BASE_CONFIGS[kind])}",
        "MODEL:",
        "  SEM_SEG_HEAD:",
        f"    NUM_CLASSES: {num_classes}",
        "DATASETS:",
        "  CUSTOM:",
        *lines,
        f'  TRAIN: ("my_shapes_train_{kind}",)',
        f'  TEST: ("my_shapes_val_{kind}",)',
        f"OUTPUT_DIR: output/my_shapes/{kind}",
        "",
    ])


def write_example(
    synthetic_root: str, out: str, configs_root: str = "configs/synthetic"
) -> dict[str, str]:
    """Write the three datasets and configs under ``out`` (see the module docstring) from the
    generated dataset under ``synthetic_root``; returns ``{kind: config path}``."""
    for split in SPLITS:
        paths = split_paths(synthetic_root, split)
        if not os.path.isfile(paths["done"]):
            raise FileNotFoundError(
                f"No generated {split} split in '{synthetic_root}': run "
                f"`python -m mask2former.data.synthetic --root {synthetic_root}` first"
            )
        _instance(paths, out, split)
        _panoptic(paths, out, split)
        _semantic(paths, out, split)
    _write_json(
        {"categories": [{"id": i, "name": n, "color": c} for i, (n, c, _) in enumerate(_SEMANTIC)]},
        os.path.join(out, "semantic", "categories.json"),
    )
    configs = {}
    for kind in _BASE_CONFIGS:
        configs[kind] = os.path.join(out, f"{kind}.yaml")
        # _BASE_ is read relative to the config's folder.
        base_root = os.path.relpath(configs_root, out) if not os.path.isabs(configs_root) \
            else configs_root
        with open(configs[kind], "w") as f:
            f.write(_config(kind, out, synthetic_root, base_root))
    logger.info("wrote the example datasets and configs %s", sorted(configs.values()))
    return configs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-root", default=default_synthetic_root(),
                        help="the generated dataset (default: %(default)s)")
    parser.add_argument("--out", default="datasets/my_shapes", help="output folder")
    parser.add_argument("--configs", default="configs/synthetic",
                        help="the repository's configs/synthetic folder (for _BASE_)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_example(args.synthetic_root, args.out, args.configs)


if __name__ == "__main__":
    main()
