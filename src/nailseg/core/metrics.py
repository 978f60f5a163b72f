"""IoU, Dice, precision and recall: the one reference implementation every stack uses.

Metrics come from confusion counts (tp, fp, fn, tn). Over a set they are *micro*
averaged (counts summed over all pixels of all images, then the ratio), which is what
``iou``/``dice`` mean in ``eval.json`` and ``summary.json``; the per-image mean is
reported beside it. When prediction and truth are both empty an image scores 1.0 (a
correct "no nails here"), and precision/recall with an empty denominator are 1.0 too.
Stacks accumulate counts in their own framework and call :func:`scores` on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

METRIC_NAMES = ("iou", "dice", "precision", "recall", "pixel_accuracy")


# Plain field declarations: their likeness to coco.ConversionReport and SynthConfig is shape alone.
@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def confusion(pred: np.ndarray, target: np.ndarray) -> Counts:
    """Confusion counts of two binary masks of the same shape."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from mask shape {target.shape}")
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    return Counts(tp, fp, fn, int(pred.size) - tp - fp - fn)


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else float(num) / float(den)


def scores(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """Every metric from confusion counts (plain numbers, so any framework can call it)."""
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "pixel_accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def counts_scores(c: Counts) -> dict[str, float]:
    return scores(c.tp, c.fp, c.fn, c.tn)


def aggregate(per_image: Iterable[Counts]) -> dict[str, dict[str, float]]:
    """Micro scores over the set and the mean of per-image scores."""
    per_image = list(per_image)
    total = sum(per_image, Counts())
    means = {name: float(np.mean([counts_scores(c)[name] for c in per_image])) if per_image else float("nan")
             for name in METRIC_NAMES}
    return {"micro": counts_scores(total), "mean_per_image": means}
