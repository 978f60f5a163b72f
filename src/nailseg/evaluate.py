"""Evaluation and prediction at each image's original resolution, for every backend.

A backend supplies a *predictor*: a function from an RGB ``uint8`` image (H, W, 3) to a
foreground probability map (H, W) at that same size. Everything else (reading files,
metrics, overlays, ``eval.json``) is here, so a Keras run and a Lightning run on the same
split are scored by the same code, number for number.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from nailseg.data.decode import IMAGE_SUFFIXES, read_image, read_mask
from nailseg.data.discover import Pair
from nailseg.errors import DataError
from nailseg.metrics import aggregate, confusion, counts_scores
from nailseg.visualize import overlay, save_png

Predictor = Callable[[np.ndarray], np.ndarray]
THRESHOLD = 0.5


def evaluate_pairs(predict: Predictor, pairs: list[Pair], *, progress: bool = True) -> dict:
    """Score ``predict`` on ``pairs``; returns the ``eval.json`` content."""
    if not pairs:
        raise DataError("nothing to evaluate: the chosen split is empty")
    iterator: Iterable[Pair] = pairs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(pairs, desc="evaluating", unit="img")
    per_image, counts = [], []
    for pair in iterator:
        image, truth = read_image(pair.image), read_mask(pair.mask)
        pred = predict(image) > THRESHOLD
        c = confusion(pred, truth)
        counts.append(c)
        per_image.append({"key": pair.key, **counts_scores(c), **c.as_dict()})
    agg = aggregate(counts)
    return {**agg["micro"], "mean_per_image": agg["mean_per_image"], "n_images": len(pairs),
            "threshold": THRESHOLD, "per_image": per_image}


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(inputs)}")
    return files


def _checked_images(files: list[Path], out: Path, progress: bool):
    """Decode every file once first (a bad file fails before any output), then yield (path, image)."""
    for f in files:
        read_image(f)
    Path(out).mkdir(parents=True, exist_ok=True)
    iterator: Iterable[Path] = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="predicting", unit="img")
    for path in iterator:
        yield path, read_image(path)


def semantic_summary(predict: Predictor, val_pairs: list[Pair], run, exp) -> dict:
    """What every backend's ``summary.json`` shares: val metrics at original resolution (and the
    overlays), plus figures read back from ``metrics.jsonl``."""
    from nailseg.io import read_jsonl

    val = evaluate_pairs(predict, val_pairs, progress=False)
    write_overlays(predict, val_pairs[: exp.logging.predictions], run.predictions)
    records = read_jsonl(run.metrics)
    speeds = [r["images_per_s"] for r in records if r.get("images_per_s")]
    ious = [r["val_iou"] for r in records if r.get("val_iou") is not None]
    return {
        "run": str(run.path), "val_iou": val["iou"], "val_dice": val["dice"], "val_precision": val["precision"],
        "val_recall": val["recall"], "val_metrics_at": "original resolution, best checkpoint",
        "best_val_iou_model_resolution": max(ious, default=None),
        "train_images_per_s": float(np.median(speeds)) if speeds else None,
        "epochs_recorded": len(records), "last_step": records[-1]["step"] if records else 0,
    }


def predict_files(predict: Predictor, files: list[Path], out: str | os.PathLike[str], *,
                  progress: bool = True) -> list[dict]:
    """Write ``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png`` for each file."""
    out = Path(out)
    written = []
    for path, image in _checked_images(files, out, progress):
        mask = predict(image) > THRESHOLD
        stem = path.stem
        save_png(out / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
        save_png(out / f"{stem}_overlay.png", overlay(image, mask))
        written.append({"file": str(path), "fg_share": float(mask.mean()),
                        "mask": str(out / f"{stem}_mask.png")})
    return written


def write_overlays(predict: Predictor, pairs: list[Pair], out: str | os.PathLike[str]) -> None:
    """Validation overlays: the prediction filled, the truth outlined (one PNG per pair)."""
    out = Path(out)
    for pair in pairs:
        image = read_image(pair.image)
        pred = predict(image) > THRESHOLD
        name = Path(pair.key).with_suffix("").as_posix().replace("/", "__")
        save_png(out / f"{name}.png", overlay(image, pred, truth=read_mask(pair.mask)))


InstancePredictor = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def predict_instance_files(predict: InstancePredictor, files: list[Path], out: str | os.PathLike[str], *,
                           score_threshold: float = 0.5, progress: bool = True) -> list[dict]:
    """Per image: the union mask, an overlay with one colour per instance, and the instance count
    (all counts also in ``OUT/instances.json``)."""
    from nailseg.io import write_json
    from nailseg.visualize import instance_overlay

    out = Path(out)
    written = []
    for path, image in _checked_images(files, out, progress):
        masks, scores = predict(image)
        keep = masks[scores >= score_threshold]
        union = keep.any(axis=0) if len(keep) else np.zeros(image.shape[:2], bool)
        save_png(out / f"{path.stem}_mask.png", union.astype(np.uint8) * 255)
        save_png(out / f"{path.stem}_overlay.png", instance_overlay(image, keep))
        written.append({"file": str(path), "instances": int(len(keep)),
                        "scores": [float(x) for x in scores[scores >= score_threshold]]})
    write_json(out / "instances.json", written)
    return written
