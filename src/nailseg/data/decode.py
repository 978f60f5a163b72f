"""Decoding images and masks with Pillow, which notices truncated and corrupt files.

OpenCV's ``imread`` decodes a truncated JPEG with only a warning and returns a grey
bottom half; Pillow raises, so bad files are caught before training rather than learned.
EXIF orientation is ignored on purpose: images and masks are used as stored, so a mask
always lines up with its image pixel for pixel.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from nailseg.errors import DataError

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Large but legitimate photographs should not trip Pillow's decompression-bomb guard.
Image.MAX_IMAGE_PIXELS = 200_000_000

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

MASK_RULE = (
    "A mask pixel is foreground when its value is above half of the largest value the "
    "mask's type can hold (> 127 for 8-bit, > 32767 for 16-bit), taking the brightest "
    "channel of colour masks; a mask whose values are all 0 or 1 is read as a 0/1 label "
    "mask (1 = foreground). Lossy JPEG masks and 0/1 PNG masks therefore both work."
)


def _open(path: Path) -> Image.Image:
    """Open and fully decode ``path``; raise :class:`DataError` naming it on any problem."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror})") from err
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
            img.load()
    except UnidentifiedImageError as err:
        raise DataError(f"{path}: not an image file Pillow can decode") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: corrupt or truncated image ({err})") from err
    return img


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the image as an RGB ``uint8`` array of shape (H, W, 3).

    Grayscale is repeated to three channels, alpha is dropped, and 16-bit images are
    scaled to 8 bits.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float32)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def mask_to_binary(arr: np.ndarray, max_value: float) -> np.ndarray:
    """Apply :data:`MASK_RULE` to a decoded mask array; returns ``bool`` (H, W)."""
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    top = arr.max() if arr.size else 0
    if top <= 1:
        return arr >= 1
    return arr > max_value / 2


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the mask as a ``bool`` array (H, W) following :data:`MASK_RULE`."""
    path = Path(path)
    img = _open(path)
    if img.mode == "P":  # palette masks: the index is the label
        arr = np.asarray(img)
        max_value = 255.0
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        max_value = 65535.0
    elif img.mode == "1":
        arr = np.asarray(img, dtype=np.uint8)
        max_value = 1.0
    else:
        if img.mode in ("RGBA", "LA"):
            img = img.convert("RGB" if img.mode == "RGBA" else "L")
        elif img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        arr = np.asarray(img)
        max_value = 255.0
    return mask_to_binary(arr, max_value)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the header only, without decoding."""
    with Image.open(path) as img:
        return img.size
