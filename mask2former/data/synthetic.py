"""The built-in generated dataset: coloured shapes over textured stuff regions.

Writes, per split, a dataset in the real COCO formats, so that every Detectron2 loader and
evaluator runs on it unchanged::

    <root>/<split>/images/000000.jpg      RGB photo-like images (JPEG)
    <root>/<split>/panoptic/000000.png    COCO panoptic PNG (segment id = rgb2id(pixel), 0 = void)
    <root>/<split>/semantic/000000.png    uint8 contiguous class ids, 255 = void
    <root>/<split>/panoptic.json          COCO panoptic annotations (segments_info)
    <root>/<split>/instances.json         COCO instance annotations (things only, RLE masks)
    <root>/<split>/done.json              written last: the generation parameters

"Things" are shapes (circle, triangle, square, star) of random size, rotation and colour that
overlap and occlude one another, though a new shape never hides more than ``MAX_HIDDEN`` of an
earlier one (it is placed elsewhere); "stuff" is a few large irregular regions textured with the
real photographs shipped by scikit-image (brick, grass, gravel) or a sky gradient. Instance masks
are the visible parts, so they agree pixel for pixel with the panoptic segments; shape fragments
smaller than ``MIN_THING_AREA`` pixels are left unlabelled (void). Each shape class draws its
colour from its own band of hues (``THING_HUES``: reds, yellows, blues, purples), so that a small
network trained from scratch for a few minutes on the CPU can name the shapes it outlines; with
one band for all classes, naming them from geometry alone took far longer than the main job's
budget (generator version 2: thing PQ 0 after 700 iterations).

Every image is drawn from its own random generator seeded by (seed, split, index), so the output
is byte-identical for the same parameters. A split is written into a temporary folder and
renamed into place once complete; a split whose ``done.json`` matches the requested parameters
is left alone.

Command line::

    python -m mask2former.data.synthetic --root datasets/generated --num-train 200 --num-val 30
"""

import argparse
import functools
import json
import logging
import os
import shutil

import cv2
import numpy as np
from panopticapi.utils import id2rgb
from pycocotools import mask as mask_util
from tqdm import tqdm

logger = logging.getLogger(__name__)

# Things first: their contiguous ids (index in this list) are then 0..#things-1, as Detectron2's
# COCOEvaluator and Visualizer expect. Dataset ids are deliberately not contiguous for the stuff
# classes, so that code mixing up dataset and contiguous ids fails on this data too.
SYNTHETIC_CATEGORIES = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "triangle", "isthing": 1, "color": [0, 0, 230]},
    {"id": 3, "name": "square", "isthing": 1, "color": [250, 170, 30]},
    {"id": 4, "name": "star", "isthing": 1, "color": [190, 60, 255]},
    {"id": 11, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 12, "name": "grass", "isthing": 0, "color": [107, 142, 35]},
    {"id": 13, "name": "gravel", "isthing": 0, "color": [150, 140, 120]},
    {"id": 14, "name": "brick", "isthing": 0, "color": [150, 60, 40]},
]
SPLITS = ("train", "val")
IGNORE_LABEL = 255
# Visible thing fragments smaller than this (pixels) are left void.
MIN_THING_AREA = 48
# Shapes per image (inclusive range) and their radius as a fraction of the shorter image side.
NUM_THINGS = (2, 6)
THING_RADIUS = (0.1, 0.3)
# A new shape may hide at most this fraction of the visible pixels of each earlier shape; a
# placement that hides more is redrawn (``_PLACEMENT_TRIES`` times, then the shape is left out).
MAX_HIDDEN = 0.5
_PLACEMENT_TRIES = 20
# Band of OpenCV hues (0..180, i.e. half-degrees; lo > hi wraps around red) of each shape class.
# The bands are disjoint, and none is the green of the grass or the blue of the sky (hue 103).
THING_HUES = {"circle": (170, 8), "triangle": (20, 34), "square": (114, 128), "star": (142, 160)}
# Bump when the drawing changes, so that datasets written by an older version are redone.
GENERATOR_VERSION = 3

_THINGS = [c for c in SYNTHETIC_CATEGORIES if c["isthing"]]
_STUFF = [c for c in SYNTHETIC_CATEGORIES if not c["isthing"]]
_CONTIGUOUS_ID = {c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)}
# Tint (RGB, 0..1 per channel) of each photographic stuff texture.
_TEXTURE_TINT = {"grass": (0.55, 0.95, 0.45), "gravel": (1.0, 0.95, 0.85), "brick": (1.0, 0.6, 0.5)}


def default_synthetic_root() -> str:
    """``$M2F_SYNTHETIC_ROOT``, else ``$DETECTRON2_DATASETS/generated`` (``datasets/generated``)."""
    if os.environ.get("M2F_SYNTHETIC_ROOT"):
        return os.environ["M2F_SYNTHETIC_ROOT"]
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "generated")


def split_paths(root: str, split: str) -> dict[str, str]:
    """Paths of one split's folders and files (see the module docstring)."""
    return _split_layout(os.path.join(root, split))


def _split_layout(base: str) -> dict[str, str]:
    return {
        "root": base,
        "images": os.path.join(base, "images"),
        "panoptic": os.path.join(base, "panoptic"),
        "semantic": os.path.join(base, "semantic"),
        "panoptic_json": os.path.join(base, "panoptic.json"),
        "instances_json": os.path.join(base, "instances.json"),
        "done": os.path.join(base, "done.json"),
    }


# ---------------------------------------------------------------------------------------- stuff


@functools.cache
def _texture_source(name: str) -> np.ndarray:
    """The grayscale scikit-image photograph of a stuff texture, float32 in [0, 1]."""
    import skimage.data  # imported here: only generation needs it

    return getattr(skimage.data, name)().astype(np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells`` x ``cells`` grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)  # (H, W)


def _stuff_texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """A (H, W, 3) float32 RGB texture in [0, 1] for one stuff class."""
    if name == "sky":
        top = np.array([0.35, 0.55, 0.9]) + rng.uniform(-0.08, 0.08, 3)
        bottom = np.array([0.75, 0.85, 0.98]) + rng.uniform(-0.08, 0.05, 3)
        t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]  # (H, 1, 1)
        sky = (1.0 - t) * top + t * bottom  # (H, 1, 3)
        clouds = np.clip(_smooth_noise(rng, h, w, 5), 0.0, 1.0)[..., None] * 0.35  # (H, W, 1)
        return np.clip(sky + clouds * (1.0 - sky), 0.0, 1.0).astype(np.float32)
    src = _texture_source(name)
    # A random crop at a random scale of the 512 x 512 photograph.
    scale = rng.uniform(0.6, 1.2)
    ch, cw = min(src.shape[0], int(h / scale)), min(src.shape[1], int(w / scale))
    y0 = int(rng.integers(0, src.shape[0] - ch + 1))
    x0 = int(rng.integers(0, src.shape[1] - cw + 1))
    gray = cv2.resize(src[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    tint = np.array(_TEXTURE_TINT[name], dtype=np.float32) * rng.uniform(0.85, 1.15, 3)
    return np.clip(gray[..., None] * tint, 0.0, 1.0).astype(np.float32)  # (H, W, 3)


def _stuff_layout(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    """Split the image into ``k`` large irregular regions; returns (H, W) region indices."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) each
    if rng.random() < 0.5:
        # Horizontal bands with wavy borders (region 0 on top).
        ys = ys + 0.12 * h * _smooth_noise(rng, h, w, 4)
        borders = np.sort(rng.uniform(0.15, 0.85, k - 1)) * h
        return np.searchsorted(borders, ys).astype(np.int64)
    # Voronoi cells of random centres in a warped plane.
    ys = ys + 0.15 * h * _smooth_noise(rng, h, w, 4)
    xs = xs + 0.15 * w * _smooth_noise(rng, h, w, 4)
    centres = rng.uniform(0.0, 1.0, size=(k, 2)) * (h, w)  # (k, 2)
    dist = (ys[None] - centres[:, 0, None, None]) ** 2 + (xs[None] - centres[:, 1, None, None]) ** 2
    return np.argmin(dist, axis=0)  # (H, W)


# ---------------------------------------------------------------------------------------- things


def _shape_polygon(rng: np.random.Generator, name: str, cx: float, cy: float, r: float):
    """Vertices (N, 2) of a thing of radius ``r`` centred at (cx, cy), randomly rotated."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    if name == "circle":
        t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        radii = np.full_like(t, r)
    elif name == "triangle":
        t = angle + np.arange(3) * 2.0 * np.pi / 3.0
        radii = np.full_like(t, r)
    elif name == "square":
        t = angle + np.pi / 4.0 + np.arange(4) * np.pi / 2.0
        radii = np.full_like(t, r)
    elif name == "star":
        t = angle + np.arange(10) * np.pi / 5.0
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.5))
    else:
        raise ValueError(f"unknown shape {name!r}")
    pts = np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)  # (N, 2) as (x, y)
    return np.round(pts).astype(np.int32)


def _thing_colour(rng: np.random.Generator, name: str) -> np.ndarray:
    """A saturated random RGB colour in [0, 1] from the hue band of shape class ``name``."""
    lo, hi = THING_HUES[name]
    hue = rng.uniform(lo, hi if hi > lo else hi + 180) % 180
    hsv = np.array([[[hue, rng.uniform(140, 255), rng.uniform(150, 255)]]])
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def _place_thing(rng, name: str, segments: np.ndarray, first_thing: int, num_things: int):
    """Draw a shape's position and size so that it hides at most ``MAX_HIDDEN`` of any earlier one.

    ``segments`` (H, W) holds segment indices; the shapes drawn so far are indices
    ``first_thing .. first_thing + num_things - 1``. Returns ((H, W) bool mask, cx, cy, r), or
    None when no placement fits within ``_PLACEMENT_TRIES`` tries.
    """
    h, w = segments.shape
    for _ in range(_PLACEMENT_TRIES):
        r = rng.uniform(*THING_RADIUS) * min(h, w)
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [_shape_polygon(rng, name, cx, cy, r)], 1)
        inside = mask.astype(bool)
        if not inside.any():
            continue
        if num_things == 0:
            return inside, cx, cy, r
        # Visible and would-be-hidden pixels of each earlier shape: (num_things,) each.
        ids = segments - first_thing
        visible = np.bincount(ids[ids >= 0], minlength=num_things)
        hidden = np.bincount(ids[inside & (ids >= 0)], minlength=num_things)
        if (hidden <= MAX_HIDDEN * visible).all():
            return inside, cx, cy, r
    return None


def draw_sample(rng: np.random.Generator, min_size: int = 192, max_size: int = 256):
    """Draw one image and its labels.

    Returns:
        image: (H, W, 3) uint8 RGB.
        segments: (H, W) int64 segment index, -1 = void.
        categories: list of dataset category ids, one per segment index.
    """
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    k = int(rng.integers(2, len(_STUFF) + 1))
    stuff = [_STUFF[i] for i in rng.choice(len(_STUFF), size=k, replace=False)]
    regions = _stuff_layout(rng, h, w, k)  # (H, W) in [0, k)

    image = np.zeros((h, w, 3), np.float32)
    for i, cat in enumerate(stuff):
        inside = regions == i
        image[inside] = _stuff_texture(rng, cat["name"], h, w)[inside]
    segments = regions.copy()
    categories = [c["id"] for c in stuff]

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) each
    for _ in range(int(rng.integers(NUM_THINGS[0], NUM_THINGS[1] + 1))):
        cat = _THINGS[int(rng.integers(len(_THINGS)))]
        placed = _place_thing(rng, cat["name"], segments, k, len(categories) - k)
        if placed is None:
            continue
        inside, cx, cy, r = placed
        # Flat colour lit by a linear gradient, so shapes look a little three-dimensional.
        gx, gy = rng.uniform(-1.0, 1.0, 2) / (2.0 * r)
        light = 1.0 + 0.35 * np.clip(gx * (xs - cx) + gy * (ys - cy), -1.0, 1.0)  # (H, W)
        image[inside] = np.clip(_thing_colour(rng, cat["name"]) * light[inside, None], 0.0, 1.0)
        segments[inside] = len(categories)
        categories.append(cat["id"])

    noise = rng.normal(0.0, 0.015, size=image.shape).astype(np.float32)
    image = cv2.GaussianBlur(image + noise, (3, 3), 0.6)
    image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    for idx, cat_id in enumerate(categories):
        if _CONTIGUOUS_ID[cat_id] < len(_THINGS):
            visible = segments == idx
            if visible.sum() < MIN_THING_AREA:
                segments[visible] = -1
    return image, segments, categories


# ---------------------------------------------------------------------------------------- writing


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO box [x, y, w, h] of a non-empty binary mask."""
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _write_sample(paths, image_id, image, segments, categories, pan_anns, inst_anns):
    """Write one sample's files and append its JSON annotation records."""
    h, w = segments.shape
    stem = f"{image_id:06d}"
    cv2.imwrite(
        os.path.join(paths["images"], stem + ".jpg"),
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, 95],
    )
    pan = np.zeros((h, w), np.int64)  # (H, W) segment ids, 0 = void
    sem = np.full((h, w), IGNORE_LABEL, np.uint8)  # (H, W) contiguous ids
    segments_info = []
    for idx, cat_id in enumerate(categories):
        mask = segments == idx
        area = int(mask.sum())
        if area == 0:
            continue
        isthing = _CONTIGUOUS_ID[cat_id] < len(_THINGS)
        seg_id = cat_id * 1000 + (idx + 1 if isthing else 0)
        pan[mask] = seg_id
        sem[mask] = _CONTIGUOUS_ID[cat_id]
        box = _bbox(mask)
        segments_info.append(
            {"id": seg_id, "category_id": cat_id, "area": area, "bbox": box, "iscrowd": 0}
        )
        if isthing:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            inst_anns.append(
                {
                    "id": len(inst_anns) + 1,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "segmentation": rle,
                    "area": area,
                    "bbox": box,
                    "iscrowd": 0,
                }
            )
    cv2.imwrite(os.path.join(paths["panoptic"], stem + ".png"), id2rgb(pan)[..., ::-1])
    cv2.imwrite(os.path.join(paths["semantic"], stem + ".png"), sem)
    pan_anns.append(
        {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info}
    )
    return {"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w}


def _dump_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _generate_split(root, split, num_images, seed, min_size, max_size, params, progress):
    final = split_paths(root, split)
    tmp_root = os.path.join(root, f".{split}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_root, ignore_errors=True)
    paths = _split_layout(tmp_root)
    for key in ("images", "panoptic", "semantic"):
        os.makedirs(paths[key])

    images, pan_anns, inst_anns = [], [], []
    split_code = SPLITS.index(split)
    for image_id in tqdm(range(num_images), desc=f"synthetic {split}", disable=not progress):
        rng = np.random.default_rng([seed, split_code, image_id])
        image, segments, categories = draw_sample(rng, min_size, max_size)
        images.append(
            _write_sample(paths, image_id, image, segments, categories, pan_anns, inst_anns)
        )

    info = {"description": f"mask2former synthetic shapes ({split})", "version": GENERATOR_VERSION}
    _dump_json(
        {
            "info": info,
            "images": images,
            "annotations": pan_anns,
            "categories": SYNTHETIC_CATEGORIES,
        },
        paths["panoptic_json"],
    )
    thing_cats = [{"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in _THINGS]
    _dump_json(
        {"info": info, "images": images, "annotations": inst_anns, "categories": thing_cats},
        paths["instances_json"],
    )
    _dump_json(params, paths["done"])
    shutil.rmtree(final["root"], ignore_errors=True)
    os.replace(tmp_root, final["root"])


def _split_params(split, num_images, seed, min_size, max_size) -> dict:
    return {
        "split": split,
        "num_images": num_images,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        "version": GENERATOR_VERSION,
    }


def is_split_complete(root: str, split: str, params: dict | None = None) -> bool:
    """Whether ``split`` was fully written under ``root`` (with exactly ``params``, if given)."""
    done = split_paths(root, split)["done"]
    if not os.path.isfile(done):
        return False
    if params is None:
        return True
    with open(done) as f:
        return json.load(f) == params


def generate_synthetic_dataset(
    root: str | None = None,
    num_train: int = 200,
    num_val: int = 30,
    seed: int = 0,
    min_size: int = 192,
    max_size: int = 256,
    force: bool = False,
    progress: bool = True,
) -> str:
    """Write the train and val splits under ``root`` unless already complete; returns ``root``."""
    root = root or default_synthetic_root()
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    os.makedirs(root, exist_ok=True)
    for split, num in (("train", num_train), ("val", num_val)):
        params = _split_params(split, num, seed, min_size, max_size)
        if not force and is_split_complete(root, split, params):
            logger.info("synthetic %s split already complete in %s", split, root)
            continue
        logger.info("writing %d synthetic %s images to %s", num, split, root)
        _generate_split(root, split, num, seed, min_size, max_size, params, progress)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=None,
        help="output folder (default: %(default)s -> "
        "$M2F_SYNTHETIC_ROOT or $DETECTRON2_DATASETS/generated)",
    )
    parser.add_argument("--num-train", type=int, default=200, help="training images")
    parser.add_argument("--num-val", type=int, default=30, help="validation images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--min-size", type=int, default=192, help="smallest image side (pixels)")
    parser.add_argument("--max-size", type=int, default=256, help="largest image side (pixels)")
    parser.add_argument("--force", action="store_true", help="rewrite complete splits too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = generate_synthetic_dataset(
        args.root, args.num_train, args.num_val, args.seed, args.min_size, args.max_size, args.force
    )
    logger.info("synthetic dataset ready in %s", root)


if __name__ == "__main__":
    main()
