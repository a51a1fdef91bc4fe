"""Reading images and label maps with clear errors, and small panoptic-format helpers.

``rgb2id`` / ``id2rgb`` (COCO panoptic PNG encoding, segment id = R + 256 G + 256^2 B) are
panopticapi's, re-exported here so that the package and its scripts import them from one place.
"""

from __future__ import annotations

import os

import numpy as np
from detectron2.data import detection_utils
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image, UnidentifiedImageError

__all__ = ["read_image_checked", "read_label_map", "rgb2id", "id2rgb", "mask_to_xywh"]

# Errors PIL raises for unreadable, truncated or malformed files.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def _check_exists(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: '{path}'")


def read_image_checked(path: str, format: str | None = "RGB") -> np.ndarray:
    """Read an image file as an (H, W, C) uint8 array in ``format`` ("RGB", "BGR", "L", ...).

    Grayscale, palette and RGBA files are converted to ``format`` (the alpha channel is dropped),
    so an "RGB"/"BGR" read always gives 3 channels. EXIF orientation is applied, as in
    Detectron2's ``read_image``, which this wraps.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file exists but cannot be decoded (the message names it).
    """
    _check_exists(path, "Image file")
    try:
        return detection_utils.read_image(path, format=format)
    except _DECODE_ERRORS as e:
        raise ValueError(f"Cannot read image file '{path}' (corrupt or not an image): {e}") from e


def read_label_map(path: str, what: str = "Label map") -> np.ndarray:
    """Read a single-channel label image (semantic PNG, 16-bit TIFF) as an (H, W) array.

    Palette PNGs give their indices (not colours); 16-bit files keep their values.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded or has more than one channel.
    """
    _check_exists(path, what)
    try:
        with Image.open(path) as img:
            label = np.asarray(img)
    except _DECODE_ERRORS as e:
        raise ValueError(
            f"Cannot read {what.lower()} '{path}' (corrupt or not an image): {e}"
        ) from e
    if label.ndim != 2:
        raise ValueError(
            f"{what} '{path}' has shape {label.shape}; expected a single-channel (H, W) image "
            "of class ids"
        )
    return label


def mask_to_xywh(mask: np.ndarray) -> list[int]:
    """Tight box [x, y, w, h] (COCO format, inclusive pixels) of a non-empty boolean mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
