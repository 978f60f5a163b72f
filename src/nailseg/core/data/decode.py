"""Decoding images and masks with Pillow, which notices truncated and corrupt files.

OpenCV's ``imread`` decodes a truncated JPEG with only a warning and returns a grey
bottom half; Pillow raises, so bad files are caught before training rather than learned.
EXIF orientation is ignored on purpose: images and masks are used as stored, so a mask
always lines up with its image pixel for pixel.
"""

from __future__ import annotations

import os
import warnings
from struct import error as struct_error
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from nailseg.errors import DataError, quote_name

ImageFile.LOAD_TRUNCATED_IMAGES = False
# The largest picture nailseg decodes: 120 megapixels (a 12000x10000 photo) is 360 MB as RGB. The
# header is checked against it before decoding, so a file whose header claims 60000x60000 (a
# decompression bomb) is refused in milliseconds with its name, never decoded. Pillow's own guard
# stays on above this as a second line.
MAX_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# The only decoders Pillow may pick, whatever a file's name or first bytes claim. Pillow would
# otherwise hand an EPS/PS file to Ghostscript (an external interpreter with a history of
# code-execution bugs) and try dozens of rarely audited plugins. (Phone JPEGs that carry several
# pictures, MPO, are opened by the JPEG decoder.)
DECODE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
_NOT_AN_IMAGE = "not an image file nailseg decodes (JPEG, PNG, BMP, TIFF, WebP, GIF or PPM)"

MASK_RULE = (
    "A mask pixel is foreground when its value is above half of the largest value the "
    "mask's type can hold (> 127 for 8-bit, > 32767 for 16-bit), taking the brightest "
    "channel of colour masks; a mask whose values are all 0 or 1 is read as a 0/1 label "
    "mask (1 = foreground). Lossy JPEG masks and 0/1 PNG masks therefore both work."
)


def _open(path: Path, at_least: tuple[int, int] | None = None) -> Image.Image:
    """Open and fully decode ``path``; raise :class:`DataError` naming it on any problem.

    ``at_least`` (width, height): a JPEG that is at least twice that size is decoded at 1/2, 1/4
    or 1/8 scale (Pillow's ``draft``, done by libjpeg's DCT scaling), never below it. A truncated
    file still raises: ``load`` reads the whole stream whatever the scale."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise DataError(f"{quote_name(path)}: cannot read file ({err.strerror})") from err
    if size == 0:
        raise DataError(f"{quote_name(path)}: empty file (0 bytes)")
    return _decode(path, quote_name(path), at_least, MAX_PIXELS)


def _decode(source, name: str, at_least: tuple[int, int] | None, max_pixels: int) -> Image.Image:
    """Decode ``source`` (a path or a file object) with the header pixel check first; every
    failure becomes one :class:`DataError` naming ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(source, formats=DECODE_FORMATS)
            w, h = img.size
            if max_pixels < MAX_PIXELS and w * h > max_pixels:  # a caller's tighter limit (nailseg serve)
                raise DataError(f"{name}: image header says {w}x{h} pixels, above the limit of "
                                f"{max_pixels:,} pixels (a decompression bomb, or far too large)")
            check_pixels(name, img.size)
            if at_least is not None and img.format == "JPEG":
                img.draft(None, at_least)
            img.load()
    except DataError:
        raise
    except UnidentifiedImageError as err:
        raise DataError(f"{name}: {_NOT_AN_IMAGE}") from err
    except Image.DecompressionBombError as err:
        raise DataError(f"{name}: image header claims more pixels than the limit of "
                        f"{MAX_PIXELS // 1_000_000} megapixels (a decompression bomb, or far too large)") from err
    except (OSError, SyntaxError, ValueError, EOFError, struct_error, IndexError, TypeError, MemoryError) as err:
        raise DataError(f"{name}: corrupt or truncated image ({str(err)[:160]})") from err
    return img


def check_pixels(path, size: tuple[int, int]) -> None:
    """Refuse, from the header alone, a picture above :data:`MAX_PIXELS` (or with a zero side)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise DataError(f"{quote_name(path)}: image header says {w}x{h} pixels")
    if w * h > MAX_PIXELS:
        raise DataError(f"{quote_name(path)}: image header says {w}x{h} pixels, above the limit of "
                        f"{MAX_PIXELS // 1_000_000} megapixels (a decompression bomb, or far too large)")


def read_image(path: str | os.PathLike[str], at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Return the image as an RGB ``uint8`` array of shape (H, W, 3).

    Grayscale is repeated to three channels, alpha is dropped, and 16-bit images are
    scaled to 8 bits. ``at_least``: allow reduced-size JPEG decoding down to that (w, h).
    """
    path = Path(path)
    return to_rgb(_open(path, at_least))


def to_rgb(img: Image.Image) -> np.ndarray:
    """The one conversion of a decoded picture to RGB ``uint8``, for files and uploads alike
    (16-bit grayscale is scaled to 8 bits, not clipped: Pillow's ``convert`` would saturate it)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float32)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def mask_rule_warning(arr: np.ndarray, max_value: float, path) -> str | None:
    """A warning when a mask has non-zero values but the rule reads it as all background
    (e.g. labels 0..3, or a 16-bit mask holding 0/255): almost surely not what the user meant."""
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    top = int(arr.max()) if arr.size else 0
    if 1 < top <= max_value / 2:
        return (f"{quote_name(path)}: mask values go up to {top} but the mask rule needs > {int(max_value // 2)} "
                "for foreground: read as all background")
    return None


def mask_to_binary(arr: np.ndarray, max_value: float) -> np.ndarray:
    """Apply :data:`MASK_RULE` to a decoded mask array; returns ``bool`` (H, W)."""
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    top = arr.max() if arr.size else 0
    if top <= 1:
        return arr >= 1
    return arr > max_value / 2


def _refuse_a_mask_drawn_in_alpha(img: Image.Image, path: Path) -> None:
    """A mask of one colour whose shape is only in its transparency (a layer exported from an image
    editor): the mask rule reads colour, so it would train on an empty (or full) mask without a word.
    Every pipeline (tf.io, DALI) decodes a mask's colour the same way, so it is refused, never guessed."""
    bands = np.asarray(img)
    brightest, alpha = bands[..., :-1].max(axis=-1), bands[..., -1]  # the channel the mask rule reads
    if brightest.min() == brightest.max() and alpha.min() != alpha.max():
        raise DataError(f"{quote_name(path)}: the mask is one colour ({int(brightest.min())}) with its shape in the alpha "
                        "channel (transparency); nailseg reads a mask's colour, not its transparency: save the alpha "
                        "channel as a grayscale mask (e.g. PIL: Image.open(f).getchannel('A').save(f))")


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the mask as a ``bool`` array (H, W) following :data:`MASK_RULE`."""
    return read_mask_checked(path)[0]


def open_mask(path: str | os.PathLike[str], at_least: tuple[int, int] | None = None) -> Image.Image:
    """A mask file opened and decoded with the same checks as an image (label masks read it too)."""
    return _open(Path(path), at_least)


def read_mask_checked(path: str | os.PathLike[str],
                      at_least: tuple[int, int] | None = None) -> tuple[np.ndarray, str | None]:
    """The mask (as :func:`read_mask`) and a warning when its values do not fit the mask rule."""
    path = Path(path)
    img = _open(path, at_least)
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
            _refuse_a_mask_drawn_in_alpha(img, path)
            img = img.convert("RGB" if img.mode == "RGBA" else "L")
        elif img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        arr = np.asarray(img)
        max_value = 255.0
    return mask_to_binary(arr, max_value), mask_rule_warning(arr, max_value, path)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the header only, without decoding; a bad header is a ``DataError``."""
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{quote_name(path)}: empty file (0 bytes)")
    except OSError as err:
        raise DataError(f"{quote_name(path)}: cannot read file ({err.strerror})") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=DECODE_FORMATS) as img:
                return img.size
    except UnidentifiedImageError as err:
        raise DataError(f"{quote_name(path)}: {_NOT_AN_IMAGE}") from err
    except Image.DecompressionBombError as err:
        raise DataError(f"{quote_name(path)}: image header claims more pixels than the limit of "
                        f"{MAX_PIXELS // 1_000_000} megapixels (a decompression bomb, or far too large)") from err
    except (OSError, SyntaxError, ValueError, EOFError, struct_error) as err:
        raise DataError(f"{quote_name(path)}: corrupt or truncated image (unreadable header: {str(err)[:160]})") from err


def decode_scaled(path: str | os.PathLike[str], kind: str, longest: int | None, labels=None) -> np.ndarray:
    """An image (RGB ``uint8``) or a mask (``uint8`` 0/1, or class indices when ``labels``, a
    :class:`~nailseg.core.labels.LabelSpec`, is given) decoded at reduced scale where the format
    allows it, never below the size whose longer side is ``longest`` (the caller resizes the rest
    of the way)."""
    at_least = None
    if longest is not None:
        w, h = image_size(path)
        if max(w, h) >= 2 * longest:
            scale = longest / max(w, h)
            at_least = (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999)))
    if kind == "image":
        return read_image(path, at_least)
    if labels is not None:
        from nailseg.core.labels import read_labels

        return read_labels(path, labels)  # full size: libjpeg's DCT scaling would blend indices
    return read_mask_checked(path, at_least)[0].astype(np.uint8)


def read_image_bytes(data: bytes, name: str = "upload", *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An uploaded image (RGB ``uint8``) from its bytes, with the checks :func:`read_image` makes:
    empty, not an image, truncated, and the pixel limit read from the header before decoding
    (``max_pixels``, at most :data:`MAX_PIXELS`). Raises :class:`DataError` naming ``name``."""
    import io

    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    return to_rgb(_decode(io.BytesIO(data), name, None, min(max_pixels, MAX_PIXELS)))
