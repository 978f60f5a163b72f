"""Evaluation and prediction at each image's original resolution, for every stack.

A stack supplies a *predictor*: a function from an RGB ``uint8`` image (H, W, 3) to a
foreground probability map (H, W) at that same size. Everything else (reading files,
metrics, overlays, ``eval.json``) is here, so a Keras run and a Lightning run on the same
split are scored by the same code, number for number.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nailseg.core.data.decode import IMAGE_SUFFIXES, read_image, read_mask
from nailseg.core.data.discover import Pair
from nailseg.errors import DataError, quote_name
from nailseg.core.metrics import aggregate, confusion, counts_scores
from nailseg.core.visualize import overlay, save_png

Predictor = Callable[[np.ndarray], np.ndarray]
THRESHOLD = 0.5


def model_input(image: np.ndarray, size_hw: tuple[int, int], norm=None, *, float_resize: bool = False) -> np.ndarray:
    """What every stack's model sees at inference: the RGB image resized to the training size
    and normalised with the encoder's mean/std (``Experiment.normalization``; ImageNet's when
    ``norm`` is None), float32 (H, W, 3).

    ``float_resize``: resize the float image, as an ONNX graph's bilinear ``Resize`` does, instead of
    the uint8 one (OpenCV's fixed-point weights, rounded to whole levels, as TFLite's uint8 input
    is). The two differ by up to one level a pixel, which moved a barely trained model's
    probabilities by up to 0.06 at its edges (0.01-0.023 on an AVX2 machine); a stack's predictor resizes the way its exported
    graph does, so export checks compare like with like."""
    import cv2

    from nailseg.core.weights import IMAGENET

    norm = norm or IMAGENET
    h, w = size_hw
    mean = np.asarray(norm.mean, np.float32) * 255
    std = np.asarray(norm.std, np.float32) * 255
    source = image.astype(np.float32) if float_resize else image
    return (cv2.resize(source, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) - mean) / std


def at_image_size(prob: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A probability map (H, W), or class probabilities (H, W, C), resized back to its image's
    original size (metrics are scored there)."""
    import cv2

    size = (image.shape[1], image.shape[0])
    prob = prob.astype(np.float32)
    if prob.ndim == 3 and prob.shape[2] > 4:  # OpenCV resizes up to 4 channels at once reliably
        return np.stack([cv2.resize(np.ascontiguousarray(prob[..., c]), size, interpolation=cv2.INTER_LINEAR)
                         for c in range(prob.shape[2])], axis=-1)
    out = cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR)
    return out if out.ndim == prob.ndim else out[..., None]


def overlay_name(key: str) -> str:
    """The file ``eval --overlays`` writes for a pair (sub-folders flattened with ``__``)."""
    return Path(key).with_suffix("").as_posix().replace("/", "__") + ".png"


def evaluate_pairs(predict: Predictor, pairs: list[Pair], *, progress: bool = True,
                   overlays: Path | None = None, options=None) -> dict:
    """Score ``predict`` on ``pairs``; returns the ``eval.json`` content. ``options``
    (:class:`~nailseg.core.postprocess.InferenceOptions`): TTA, threshold, speck removal."""
    from nailseg.core.postprocess import InferenceOptions

    options = options or InferenceOptions()
    predict = options.wrap(predict)
    if not pairs:
        raise DataError("nothing to evaluate: the chosen split is empty")
    iterator: Iterable[Pair] = pairs
    if progress:
        from nailseg.core.progress import progress as bar

        iterator = bar(pairs, "evaluating")
    per_image, counts = [], []
    for pair in iterator:
        image, truth = read_image(pair.image), read_mask(pair.mask)
        if image.shape[:2] != truth.shape:
            raise DataError(f"{quote_name(pair.mask)}: mask is {truth.shape[1]}x{truth.shape[0]} but its image "
                            f"{quote_name(pair.image.name)} is {image.shape[1]}x{image.shape[0]} (must be the same size)")
        pred = options.mask(predict(image))
        c = confusion(pred, truth)
        counts.append(c)
        per_image.append({"key": pair.key, **counts_scores(c), **c.as_dict()})
        if overlays is not None:
            from nailseg.core.visualize import error_overlay

            save_png(Path(overlays) / overlay_name(pair.key), error_overlay(image, pred, truth, per_image[-1]["iou"]))
    agg = aggregate(counts)
    return {**agg["micro"], "mean_per_image": agg["mean_per_image"], "n_images": len(pairs),
            "threshold": options.threshold, "inference": options.as_dict(), "per_image": per_image}


def choose_threshold(predict: Predictor, pairs: list[Pair], options, *, progress: bool = True,
                     candidates=tuple(np.round(np.arange(0.2, 0.81, 0.05), 2))) -> tuple[float, dict[str, float]]:
    """The threshold with the best pooled IoU on ``pairs`` (predicted once), and each one's IoU."""
    from dataclasses import replace

    predict = options.wrap(predict)
    iterator: Iterable[Pair] = pairs
    if progress:
        from nailseg.core.progress import progress as bar

        iterator = bar(pairs, "choosing the threshold")
    probs = [(predict(read_image(p.image)), read_mask(p.mask)) for p in iterator]
    ious = {}
    for t in candidates:
        o = replace(options, threshold=float(t))
        ious[f"{t:.2f}"] = aggregate([confusion(o.mask(prob), truth) for prob, truth in probs])["micro"]["iou"]
    best = max(ious, key=lambda k: (ious[k], -abs(float(k) - 0.5)))
    return float(best), ious


@dataclass
class Inputs:
    """Images to predict, each with the name its outputs get under ``--out`` (no two alike)."""

    files: list[Path]
    names: list[str]


@dataclass
class PredictResult:
    written: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def collect_inputs(inputs: list[str]) -> Inputs:
    """Expand files and folders (recursively) into images and unique output names.

    A folder's images keep their path below it (``a/x.jpg`` -> ``a/x``); a clash (``dir1/x.jpg``
    and ``dir2/x.jpg``, or ``x.jpg`` and ``x.png``) is resolved by prefixing the input folder's
    name, then the suffix, then a counter, so no two outputs are ever written to one path.
    """
    found: list[tuple[Path, Path, Path]] = []  # (file, relative name, the input it came from)
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [(p, p.relative_to(path), path) for p in sorted(path.rglob("*"))
                      if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif path.is_file():
            found.append((path, Path(path.name), path.parent))
        else:
            raise DataError(f"{quote_name(path)}: no such file or folder")
    if not found:
        raise DataError(f"no images found in {', '.join(quote_name(i) for i in inputs)}")
    seen_files: set[Path] = set()
    files, names, used = [], [], set()
    for file, rel, origin in found:
        if file.resolve() in seen_files:
            continue
        seen_files.add(file.resolve())
        base = rel.with_suffix("")
        for candidate in (base, Path(origin.resolve().name) / base,
                          Path(origin.resolve().name) / rel.with_name(rel.name.replace(".", "_"))):
            if candidate.as_posix() not in used:
                name = candidate.as_posix()
                break
        else:
            n = 2
            while f"{base.as_posix()}-{n}" in used:
                n += 1
            name = f"{base.as_posix()}-{n}"
        used.add(name)
        files.append(file)
        names.append(name)
    return Inputs(files, names)


def _readable_images(inputs: Inputs, progress: bool, failed: list[str], desc: str = "predicting"):
    """Yield (path, output name, image) for every readable input; unreadable ones go to ``failed``."""
    iterator: Iterable = zip(inputs.files, inputs.names)
    if progress:
        from nailseg.core.progress import progress as bar

        iterator = bar(list(iterator), desc)
    for path, name in iterator:
        try:
            image = read_image(path)
        except DataError as err:
            failed.extend(err.lines)
            continue
        yield path, name, image


def semantic_summary(predict: Predictor, val_pairs: list[Pair], run, exp) -> dict:
    """What every stack's ``summary.json`` shares: val metrics at original resolution (and the
    overlays), plus figures read back from ``metrics.jsonl``."""
    from nailseg.core.io import read_jsonl

    labels = exp.data.label_spec
    if labels is not None:  # many classes: mIoU and per-class scores (core/class_eval.py)
        from nailseg.core.class_eval import evaluate_classes, write_class_overlays

        val = evaluate_classes(predict, val_pairs, labels, progress=False)
        write_class_overlays(predict, val_pairs[: exp.logging.predictions], labels, run.predictions)
    else:
        val = evaluate_pairs(predict, val_pairs, progress=False)
        write_overlays(predict, val_pairs[: exp.logging.predictions], run.predictions)
    records = read_jsonl(run.metrics)
    from nailseg.core.visualize import plot_run_curves

    model = exp.model.describe()
    plot_run_curves(records, run.curves, f"{run.path.name}: {model['arch']} {model['encoder']}")
    speeds = [r["images_per_s"] for r in records if r.get("images_per_s")]
    ious = [r["val_iou"] for r in records if r.get("val_iou") is not None]
    return {
        "run": str(run.path), "val_iou": val["iou"], "val_dice": val["dice"], "val_precision": val["precision"],
        "val_recall": val["recall"], "val_metrics_at": "original resolution, best checkpoint",
        "best_val_iou_model_resolution": max(ious, default=None),
        **({"val_miou": val["miou"], "val_per_class_iou": val["per_class_iou"],
            "val_pixel_accuracy": val["pixel_accuracy"]} if labels is not None else {}),
        "train_images_per_s": float(np.median(speeds)) if speeds else None,
        "epochs_recorded": len(records), "last_step": records[-1]["step"] if records else 0,
    }


def predict_files(predict: Predictor, inputs: Inputs, out: str | os.PathLike[str], *,
                  progress: bool = True, options=None) -> PredictResult:
    """Write ``<name>_mask.png`` (0/255) and ``<name>_overlay.png`` for each readable input."""
    from nailseg.core.postprocess import InferenceOptions

    options = options or InferenceOptions()
    predict = options.wrap(predict)
    out = Path(out)
    result = PredictResult()
    for path, name, image in _readable_images(inputs, progress, result.failed):
        mask = options.mask(predict(image))
        save_png(out / f"{name}_mask.png", mask.astype(np.uint8) * 255)
        save_png(out / f"{name}_overlay.png", overlay(image, mask))
        result.written.append({"file": str(path), "fg_share": float(mask.mean()), "mask": str(out / f"{name}_mask.png")})
    return result


def write_overlays(predict: Predictor, pairs: list[Pair], out: str | os.PathLike[str]) -> None:
    """Validation overlays: true positives, false positives and false negatives in the one palette,
    with a legend and the image's IoU (one PNG per pair)."""
    from nailseg.core.visualize import error_overlay

    out = Path(out)
    for pair in pairs:
        image, truth = read_image(pair.image), read_mask(pair.mask)
        pred = predict(image) > THRESHOLD
        name = Path(pair.key).with_suffix("").as_posix().replace("/", "__")
        save_png(out / f"{name}.png", error_overlay(image, pred, truth, counts_scores(confusion(pred, truth))["iou"]))


# RGB image -> (masks bool (K, H, W), scores (K,), class indices (K,); 1 = nail for binary masks)
InstancePredictor = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


def predict_instance_files(predict: InstancePredictor, inputs: Inputs, out: str | os.PathLike[str], *,
                           score_threshold: float, progress: bool = True) -> PredictResult:
    """Per image: the union mask, an overlay with one colour per instance, and the instance count
    (all counts also in ``OUT/instances.json``), of the instances scoring at least ``score_threshold``
    (the run's ``model.score_threshold``, the one eval's union mask uses)."""
    from nailseg.core.io import write_json
    from nailseg.core.visualize import instance_overlay

    out = Path(out)
    result = PredictResult()
    for path, name, image in _readable_images(inputs, progress, result.failed):
        masks, scores, classes = predict(image)
        keep = masks[scores >= score_threshold]
        union = keep.any(axis=0) if len(keep) else np.zeros(image.shape[:2], bool)
        save_png(out / f"{name}_mask.png", union.astype(np.uint8) * 255)
        save_png(out / f"{name}_overlay.png", instance_overlay(image, keep))
        result.written.append({"file": str(path), "instances": int(len(keep)),
                               "scores": [float(x) for x in scores[scores >= score_threshold]],
                               "classes": [int(x) for x in classes[scores >= score_threshold]]})
    if result.written:
        write_json(out / "instances.json", result.written)
    return result
