"""Many classes: label masks read as class indices, their confusion matrix and per-class scores.

A label mask holds one class index per pixel: 0 .. n-1 for the classes named in ``data.classes``
and ``data.ignore_index`` (255 unless set) for pixels nobody labelled, which neither training nor
scoring counts. Three layouts are read:

- an 8-bit (or 16-bit) grey PNG of indices, as CamVid, Cityscapes' ``labelIds`` and ADE20K ship;
- a palette PNG (mode ``P``), whose index is the class and whose colours are only for display;
- an RGB colour mask, with ``data.colors`` giving each class's colour (unlisted colours are refused).

Scores follow MMSegmentation's ``IoUMetric``: per-class IoU and Dice from the confusion matrix
summed over the whole set, mIoU over the classes that appear in the truth or the prediction
(a class absent from both is left out, not counted as 1 or 0), and pixel accuracy over the
labelled pixels. The binary nails layout does not come here: it keeps ``core/metrics.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nailseg.errors import DataError, quote_name

# One colour per class for overlays and predicted colour maps: the first 11 are CamVid's
# customary colours (sky .. bicyclist), the rest a fixed pseudo-random draw.
_BASE_PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                 (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]


def palette(n: int) -> np.ndarray:
    """(n, 3) ``uint8`` colours, the same for a given class index everywhere nailseg draws classes."""
    rng = np.random.default_rng(12345)
    extra = rng.integers(0, 256, size=(max(0, n - len(_BASE_PALETTE)), 3))
    return np.concatenate([np.asarray(_BASE_PALETTE, np.uint8), extra.astype(np.uint8)])[:n]


@dataclass(frozen=True)
class LabelSpec:
    """The classes of a data set and the value of unlabelled pixels."""

    names: tuple[str, ...]
    ignore_index: int = 255
    colors: tuple[tuple[int, int, int], ...] | None = None  # RGB colour masks: one colour per class

    @property
    def n(self) -> int:
        return len(self.names)


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line (blank lines and ``#`` comments skipped), as ``classes.txt`` holds them."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"{quote_name(path)}: cannot read the class names ({err.strerror})") from err
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.strip().startswith("#")]
    names = [name for _, name in lines]
    if len(names) < 2:
        raise DataError(f"{quote_name(path)}: names {len(names)} class(es); a class file names at least 2, one a line")
    dup = repeated_name(names)
    if dup is not None:
        at = [str(number) for number, name in lines if name == dup]
        raise DataError(f"{quote_name(path)}: class {dup!r} is named twice (lines {' and '.join(at[:2])}); "
                        "each class index needs a name of its own")
    return names


def repeated_name(names: list[str]) -> str | None:
    """The first class name given twice (two indices would share a name, and its counts), or ``None``."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _rgb_to_index(rgb: np.ndarray, spec: LabelSpec, path) -> np.ndarray:
    if spec.colors is None:
        raise DataError(f"{quote_name(path)}: an RGB colour mask, but data.colors does not give each class's "
                        "colour (or save the masks as index or palette PNGs)")
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(spec.colors)}
    values, inverse = np.unique(packed, return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        v = unknown[0]
        raise DataError(f"{quote_name(path)}: colour ({v >> 16}, {(v >> 8) & 255}, {v & 255}) is not in data.colors "
                        f"({len(unknown)} unlisted colour(s))")
    lookup = np.array([table[int(v)] for v in values], np.uint8)
    return lookup[inverse].reshape(packed.shape)


def read_labels(path: str | os.PathLike[str], spec: LabelSpec, at_least: tuple[int, int] | None = None) -> np.ndarray:
    """The mask at ``path`` as class indices, ``uint8`` (H, W); a value that is neither a class
    nor ``spec.ignore_index`` is a :class:`DataError` naming the file and the value."""
    from nailseg.core.data.decode import open_mask

    img = open_mask(path, at_least)
    if img.mode == "P":
        arr = np.asarray(img)
        if spec.colors is not None:
            _check_palette(img, spec, path)
    elif img.mode in ("RGB", "RGBA"):
        arr = _rgb_to_index(np.asarray(img.convert("RGB")), spec, path)
    elif img.mode in ("L", "I;16", "I;16B", "I;16L", "I", "1"):
        arr = np.asarray(img)
    else:
        arr = np.asarray(img.convert("L"))
    bad = (arr >= spec.n) & (arr != spec.ignore_index)
    if bad.any():
        values = np.unique(arr[bad])
        raise DataError(f"{quote_name(path)}: value {int(values[0])} is not a class (0-{spec.n - 1}) nor the ignore "
                        f"value {spec.ignore_index}" + (f"; also {', '.join(map(str, values[1:6].tolist()))}"
                                                        if len(values) > 1 else "")
                        + f" (if {int(values[0])} marks unlabelled pixels, make it the ignore value: "
                          "data.ignore_index, or --ignore-index for data check)")
    return arr.astype(np.uint8)


def _check_palette(img, spec: LabelSpec, path) -> None:
    """A palette mask whose colours contradict ``data.colors``: the classes were numbered differently."""
    pal = np.asarray(img.getpalette() or [], np.uint8).reshape(-1, 3)
    used = np.unique(np.asarray(img))
    for index in used:
        if index < spec.n and index < len(pal) and tuple(int(c) for c in pal[index]) != tuple(spec.colors[index]):
            raise DataError(f"{quote_name(path)}: palette index {int(index)} is coloured {tuple(int(c) for c in pal[index])} "
                            f"but data.colors gives {spec.names[index]!r} {tuple(spec.colors[index])}")


def class_pixels(labels: np.ndarray, spec: LabelSpec) -> list[int]:
    """Pixels of each class (the ignore value not counted)."""
    counts = np.bincount(labels.ravel(), minlength=256)
    return [int(c) for c in counts[: spec.n]]


WEIGHT_RULES = ("median_frequency", "inverse_sqrt")


def class_weights(rule: str, pixels: list[int]) -> list[float]:
    """Cross-entropy weights from each class's pixels in the training split. ``median_frequency``
    (Eigen & Fergus; SegNet's CamVid weights): median share / share, so a class at the median
    weighs 1 and a rare thin class (pole, sign) far more. ``inverse_sqrt``: 1 / sqrt(share),
    scaled so that the median class weighs 1, a gentler lift. A class with no pixel weighs 1 (it
    is never a target, so its weight does nothing)."""
    if rule not in WEIGHT_RULES:
        raise ValueError(f"class weights: unknown rule {rule!r} (one of {', '.join(WEIGHT_RULES)})")
    counts = np.asarray(pixels, np.float64)
    present = counts > 0
    if not present.any():
        return [1.0] * len(counts)
    share = counts / counts.sum()
    median = float(np.median(share[present]))
    if rule == "median_frequency":
        raw = np.where(present, median / np.where(present, share, 1.0), 1.0)
    else:
        raw = np.where(present, np.sqrt(median / np.where(present, share, 1.0)), 1.0)
    return [round(float(w), 6) for w in raw]


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, n: int, ignore_index: int) -> np.ndarray:
    """(n, n) ``int64`` counts, rows = truth, columns = prediction, ignored pixels left out."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from mask shape {truth.shape}")
    keep = truth != ignore_index
    index = truth[keep].astype(np.int64) * n + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=n * n).reshape(n, n)


def class_scores(matrix: np.ndarray, names: tuple[str, ...] | list[str]) -> dict:
    """Per-class IoU/Dice, mIoU, mDice, mean precision/recall and pixel accuracy from a confusion
    matrix (MMSegmentation's rule: a class with no pixel in truth or prediction is ``None`` and left
    out of the means)."""
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    truth, pred = matrix.sum(1), matrix.sum(0)
    union = truth + pred - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    precision = np.where(present, np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0), np.nan)
    recall = np.where(present, np.divide(tp, truth, out=np.zeros_like(tp), where=truth > 0), np.nan)
    dice = np.where(present, 2 * tp / np.maximum(truth + pred, 1), np.nan)
    total = matrix.sum()

    def listed(values: np.ndarray) -> dict[str, float | None]:
        return {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, values)}

    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "mdice": float(np.nanmean(dice)) if present.any() else float("nan"),
        "mprecision": float(np.nanmean(precision)) if present.any() else float("nan"),
        "mrecall": float(np.nanmean(recall)) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class_iou": listed(iou),
        "per_class_dice": listed(dice),
        "classes_scored": int(present.sum()),
    }


def color_labels(labels: np.ndarray, n: int, ignore_index: int) -> np.ndarray:
    """An RGB picture of a label map in :func:`palette`'s colours (ignored pixels black)."""
    colours = np.zeros((256, 3), np.uint8)
    colours[:n] = palette(n)
    colours[ignore_index] = 0
    return colours[labels]
