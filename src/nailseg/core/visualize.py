"""The pictures nailseg draws: one palette and one legend for every overlay (a run's
``predictions/``, ``eval --overlays``, ``predict``, the ``serve`` response and page, the
tutorials), and a run's ``curves.png``.

The palette is Okabe-Ito's colour-blind-safe set: blue, vermillion and yellow stay apart under the
common colour-vision deficiencies, and differ in lightness too."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

# RGB. A prediction with no truth to compare is drawn as a true positive would be.
PALETTE = {
    "tp": (0, 114, 178),     # blue: predicted and true
    "fp": (213, 94, 0),      # vermillion: predicted, not true
    "fn": (240, 228, 66),    # yellow: true, missed
}
LABELS = {"tp": "true positive", "fp": "false positive", "fn": "false negative", "pred": "predicted nail"}
PRED_COLOUR = PALETTE["tp"]


# Overlays are blended a band of rows at a time, in place on the uint8 picture: a whole-photo float
# copy of a 6000x4000 shot is 288 MB (float64 intermediates twice that), and was most of `predict`'s
# peak memory on large photos. The arithmetic per pixel is what a whole-photo float32 blend gives.
BAND_ROWS = 256


def _bands(height: int) -> Iterable[slice]:
    return (slice(top, top + BAND_ROWS) for top in range(0, height, BAND_ROWS))


def _blend(out: np.ndarray, region: np.ndarray, colour: Sequence[int], alpha: float) -> None:
    """``colour`` laid over ``out`` (uint8, in place) where ``region`` is set, at ``alpha``."""
    tint = np.asarray(colour, np.float32) * alpha
    for rows in _bands(out.shape[0]):
        band, where = out[rows], region[rows]
        band[where] = (band[where].astype(np.float32) * (1 - alpha) + tint).astype(np.uint8)


def _outline(out: np.ndarray, mask: np.ndarray, colour: Sequence[int], width: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), width, cv2.LINE_AA)


def _line_width(shape: tuple[int, ...]) -> int:
    """Outlines that stay visible on a 4000-px photo and do not swamp a 64-px one."""
    return max(1, round(min(shape[:2]) / 250))


def legend(width: int, entries: Iterable[tuple[str, Sequence[int]]], note: str = "") -> np.ndarray:
    """A white strip, ``width`` pixels wide, with a coloured square and a label per entry (and
    ``note`` last), stacked under an overlay; entries wrap onto more rows on a narrow picture."""
    scale = float(np.clip(width / 900, 0.35, 1.0))
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale
    box, gap, row_h = max(6, int(16 * scale)), max(6, int(14 * scale)), max(12, int(28 * scale))
    items = [(label, colour) for label, colour in entries] + ([(note, None)] if note else [])
    placed, x, row = [], 6, 0
    for label, colour in items:
        text_w = cv2.getTextSize(label, font, size, 1)[0][0]
        item_w = (box + 4 if colour is not None else 0) + text_w
        if x > 6 and x + item_w > width - 4:  # wrap
            x, row = 6, row + 1
        placed.append((x, row, label, colour))
        x += item_w + gap
    strip = np.full(((row + 1) * row_h + 6, width, 3), 255, np.uint8)
    for x, r, label, colour in placed:
        y0 = 3 + r * row_h + (row_h - box) // 2
        if colour is not None:
            cv2.rectangle(strip, (x, y0), (x + box, y0 + box), tuple(int(c) for c in colour), -1)
            cv2.rectangle(strip, (x, y0), (x + box, y0 + box), (60, 60, 60), 1)
            x += box + 4
        cv2.putText(strip, label, (x, y0 + box - 1), font, size, (20, 20, 20), 1, cv2.LINE_AA)
    return strip


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, *, with_legend: bool = True) -> np.ndarray:
    """A prediction on its photograph: the mask filled and outlined in the palette's blue, with a
    legend strip underneath (``with_legend=False`` keeps the image's own size)."""
    out = np.array(image, np.uint8, order="C")
    m = mask.astype(bool)
    _blend(out, m, PRED_COLOUR, alpha)
    _outline(out, m, PRED_COLOUR, _line_width(out.shape))
    if not with_legend:
        return out
    share = f"{m.mean():.1%} of the image" if m.size else ""
    return np.vstack([out, legend(out.shape[1], [(LABELS["pred"], PRED_COLOUR)], share)])


def error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, iou: float | None = None,
                  alpha: float = 0.55, *, with_legend: bool = True) -> np.ndarray:
    """Truth against prediction: true positives, false positives and false negatives each in their
    palette colour, with a legend (and the image's IoU). Shows at a glance what a model mistakes
    for a nail, and what it misses."""
    out = np.array(image, np.uint8, order="C")
    pred, truth = pred.astype(bool), truth.astype(bool)
    for key, region in (("tp", pred & truth), ("fp", pred & ~truth), ("fn", ~pred & truth)):
        _blend(out, region, PALETTE[key], alpha)
    _outline(out, truth, (255, 255, 255), _line_width(out.shape))
    if not with_legend:
        return out
    note = f"IoU {iou:.3f}" if iou is not None else ""
    return np.vstack([out, legend(out.shape[1], [(LABELS[k], PALETTE[k]) for k in ("tp", "fp", "fn")], note)])


def class_overlay(image: np.ndarray, labels: np.ndarray, names, ignore_index: int = 255, alpha: float = 0.5,
                  *, truth: np.ndarray | None = None, note: str = "") -> np.ndarray:
    """A class map on its photograph in the class palette (``core/labels.py``), with a legend of the
    classes it shows. With ``truth``: the prediction beside the truth, so errors are found by eye."""
    from nailseg.core.labels import color_labels, palette

    n = len(names)

    present = np.zeros(256, np.int64)  # the classes shown, for the legend: counted band by band too

    def blended(lab: np.ndarray) -> np.ndarray:
        out = np.empty(image.shape, np.uint8)
        for rows in _bands(out.shape[0]):
            present[:] += np.bincount(lab[rows].ravel(), minlength=256)[:256]
            colours = color_labels(lab[rows], n, ignore_index).astype(np.float32)
            keep = (lab[rows] != ignore_index)[..., None]
            out[rows] = np.where(keep, image[rows] * (1 - alpha) + colours * alpha, image[rows]).astype(np.uint8)
        return out

    out = blended(labels) if truth is None else np.hstack([blended(labels), blended(truth)])
    shown = np.flatnonzero(present)
    colours = palette(n)
    entries = [(names[i], colours[i]) for i in shown if i < n]
    if truth is not None:
        note = ("left: prediction, right: truth" + (f"; {note}" if note else ""))
    return np.vstack([out, legend(out.shape[1], entries, note)])


def instance_overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """One colour per instance (golden-angle hues, so neighbours differ), outlined, with its number."""
    out = np.array(image, np.uint8, order="C")
    for i, m in enumerate(masks):
        hue = int((i * 137.508 / 2) % 180)  # the golden angle on OpenCV's 0-180 hue scale
        _blend(out, m, cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2RGB)[0, 0], alpha)
    for i, m in enumerate(masks):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
        ys, xs = np.nonzero(m)
        if len(xs):
            cv2.putText(out, str(i + 1), (int(xs.mean()), int(ys.mean())), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_png(path, rgb_or_gray: np.ndarray) -> None:
    """Write a PNG atomically (RGB arrays are converted to OpenCV's BGR)."""
    from nailseg.core.io import atomic_path, disk_errors_as_one_line

    arr = rgb_or_gray
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    with disk_errors_as_one_line(path), atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def plot_run_curves(records: list[dict], path: str | Path, title: str = "") -> Path | None:
    """``curves.png`` of one run: training and validation loss, and the validation score (IoU, or
    segm mAP for an instance stack) per epoch, with markers, so a single run can be read without
    TensorBoard. ``None`` (and nothing written) when no epoch was recorded."""
    if not records:
        return None
    from nailseg.core.optional import pyplot

    plt = pyplot("the training curves (curves.png)")

    from nailseg.core.io import atomic_path, disk_errors_as_one_line

    epochs = [r.get("epoch", i) + 1 for i, r in enumerate(records)]
    score_key = next((k for k in ("val_iou", "val_segm_map") if any(r.get(k) is not None for r in records)), None)
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for key, style in (("train_loss", "o-"), ("val_loss", "s--")):
        points = [(e, r[key]) for e, r in zip(epochs, records) if r.get(key) is not None]
        if points:
            loss_ax.plot(*zip(*points), style, ms=3.5, label=key.replace("_", " "))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    if loss_ax.get_legend_handles_labels()[0]:
        loss_ax.legend(fontsize=8)
    if score_key:
        points = [(e, r[score_key]) for e, r in zip(epochs, records) if r.get(score_key) is not None]
        score_ax.plot(*zip(*points), "o-", ms=3.5, color="#0072B2")
        best = max(points, key=lambda p: p[1])
        score_ax.annotate(f"best {best[1]:.3f}", best, textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        score_ax.set_ylabel({"val_iou": "validation IoU (model resolution)", "val_segm_map": "validation segm mAP"}[score_key])
        score_ax.set_ylim(0, 1)
    score_ax.set_xlabel("epoch")
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with disk_errors_as_one_line(path), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
