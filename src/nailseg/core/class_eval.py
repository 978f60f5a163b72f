"""Evaluation and prediction of many-class models (``data.classes``), for every stack.

A many-class predictor maps an RGB ``uint8`` image (H, W, 3) to class probabilities (H, W, C)
at that size; the predicted class is their argmax. Scores are MMSegmentation's (``core/labels.py``):
per-class IoU and Dice from the confusion matrix summed over the set, mIoU over the classes
present, pixel accuracy over labelled pixels, and the matrix itself as a picture.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nailseg.core.data.decode import read_image
from nailseg.core.data.discover import Pair
from nailseg.core.labels import LabelSpec, class_scores, confusion_matrix, read_labels
from nailseg.core.visualize import class_overlay, save_png
from nailseg.errors import DataError, quote_name


def predicted_classes(prob: np.ndarray) -> np.ndarray:
    """(H, W) ``uint8`` class indices from (H, W, C) probabilities (a tiled predictor already
    answers with the class map, which passes through)."""
    if prob.ndim == 2:
        return prob.astype(np.uint8, copy=False)
    return prob.argmax(-1).astype(np.uint8)


def evaluate_classes(predict, pairs: list[Pair], labels: LabelSpec, *, progress: bool = True,
                     overlays: Path | None = None, options=None, confusion_png: Path | None = None) -> dict:
    """Score ``predict`` on ``pairs``; returns the ``eval.json`` content of a many-class model:
    ``iou`` is the mIoU (so tables of binary and many-class runs read alike)."""
    if not pairs:
        raise DataError("nothing to evaluate: the chosen split is empty")
    if options is not None:
        predict = options.wrap(predict)
    iterator: Iterable[Pair] = pairs
    if progress:
        from nailseg.core.progress import progress as bar

        iterator = bar(pairs, "evaluating")
    total = np.zeros((labels.n, labels.n), np.int64)
    per_image = []
    for pair in iterator:
        image, truth = read_image(pair.image), read_labels(pair.mask, labels)
        if image.shape[:2] != truth.shape:
            raise DataError(f"{quote_name(pair.mask)}: mask is {truth.shape[1]}x{truth.shape[0]} but its image "
                            f"{quote_name(pair.image.name)} is {image.shape[1]}x{image.shape[0]} (must be the same size)")
        pred = predicted_classes(predict(image))
        matrix = confusion_matrix(pred, truth, labels.n, labels.ignore_index)
        total += matrix
        scored = class_scores(matrix, labels.names)
        per_image.append({"key": pair.key, "iou": scored["miou"], "miou": scored["miou"],  # "iou" as binary runs'
                          "pixel_accuracy": scored["pixel_accuracy"]})
        if overlays is not None:
            from nailseg.core.evaluate import overlay_name

            save_png(Path(overlays) / overlay_name(pair.key),
                     class_overlay(image, pred, labels.names, labels.ignore_index, truth=truth,
                                   note=f"mIoU {scored['miou']:.3f}"))
    result = class_scores(total, labels.names)
    if confusion_png is not None:
        plot_confusion(total, labels.names, confusion_png)
    return {"iou": result["miou"], "dice": result["mdice"], "precision": result["mprecision"],
            "recall": result["mrecall"], **result, "n_images": len(pairs),
            "classes": list(labels.names), "ignore_index": labels.ignore_index,
            "confusion_matrix": total.tolist(),
            "mean_per_image": {"miou": float(np.nanmean([p["miou"] for p in per_image]))},
            "per_image": per_image}


def plot_confusion(matrix: np.ndarray, names, path: str | os.PathLike[str]) -> None:
    """The confusion matrix as a PNG, each truth row normalised to 1 (what share of a class went where)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(2 + 0.55 * n, 1.6 + 0.5 * n))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for i in range(n):
        for j in range(n):
            if share[i, j] >= 0.01:
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title("confusion (rows: share of each true class)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_class_overlays(predict, pairs: list[Pair], labels: LabelSpec, out: str | os.PathLike[str]) -> None:
    """Validation pictures of a many-class run: prediction beside truth, one PNG per pair."""
    from nailseg.core.evaluate import overlay_name

    for pair in pairs:
        image, truth = read_image(pair.image), read_labels(pair.mask, labels)
        pred = predicted_classes(predict(image))
        scored = class_scores(confusion_matrix(pred, truth, labels.n, labels.ignore_index), labels.names)
        save_png(Path(out) / overlay_name(pair.key), class_overlay(image, pred, labels.names, labels.ignore_index,
                                                                   truth=truth, note=f"mIoU {scored['miou']:.3f}"))


def predict_class_files(predict, inputs, out: str | os.PathLike[str], labels: LabelSpec, *, progress: bool = True,
                        options=None):
    """Write ``<name>_mask.png`` (class indices, a palette PNG coloured as the overlays) and
    ``<name>_overlay.png`` with the legend of class names, for each readable input."""
    from PIL import Image

    from nailseg.core.evaluate import PredictResult, _readable_images
    from nailseg.core.io import atomic_path, disk_errors_as_one_line
    from nailseg.core.labels import palette

    if options is not None:
        predict = options.wrap(predict)
    out = Path(out)
    result = PredictResult()
    flat_palette = palette(labels.n).ravel().tolist()
    for path, name, image in _readable_images(inputs, progress, result.failed):
        pred = predicted_classes(predict(image))
        mask_path = out / f"{name}_mask.png"
        indexed = Image.frombytes("P", (pred.shape[1], pred.shape[0]), pred.tobytes())
        indexed.putpalette(flat_palette + [0] * (768 - len(flat_palette)))
        with disk_errors_as_one_line(mask_path), atomic_path(mask_path) as tmp:
            indexed.save(tmp, format="PNG")
        save_png(out / f"{name}_overlay.png", class_overlay(image, pred, labels.names, labels.ignore_index))
        counts = np.bincount(pred.ravel(), minlength=labels.n)[: labels.n] / pred.size
        result.written.append({"file": str(path), "mask": str(mask_path),
                               "class_share": {n: float(c) for n, c in zip(labels.names, counts) if c > 0}})
    return result
