"""Checking an exported model against the framework model it came from, on the run's own
validation images: the largest probability difference and the share of identical mask pixels
(``export.json``). Framework-free: both sides are plain predictors."""

from __future__ import annotations

import numpy as np

from nailseg.errors import ConfigError

# The bounds catch a wrong export (lost normalisation, swapped channels, a dropped layer: masks
# disagree and probabilities move by 0.1 or more), not rounding. onnxruntime runs the same float32
# ops as torch and agrees to ~1e-5. TFLite's converter folds batch norm into the convolutions and
# XNNPACK sums in another order, so a barely trained model with large activations moves by ~1e-3
# while every mask pixel still agrees (seen at 1.01e-3 in CI): it gets a wider probability bound.
# "onnx-pipeline": an ONNX graph that resizes inside (bilinear on float) against nailseg's predictor,
# which resizes with OpenCV's fixed-point arithmetic and rounds the photo to uint8: a pixel moves by
# up to one level. Where a model's probability is steep (an edge) that moves it by up to ~0.15 while
# the masks agree; where an untrained model's probability sits at the threshold, a 1e-3 move flips
# pixels. So the pipeline check passes on either bound: the same numbers, or the same masks.
TOLERANCES = {"onnx": {"max_abs_diff": 1e-3, "mask_agreement": 0.999},
              "onnx-pipeline": {"max_abs_diff": 1e-2, "mask_agreement": 0.998, "either": True},
              "tflite": {"max_abs_diff": 1e-2, "mask_agreement": 0.999}}


def require_agreement(check: dict, fmt: str, reference: str, source: str) -> dict:
    """Refuse an export whose ``check`` is past ``fmt``'s tolerance (one line; the caller's atomic
    write then keeps nothing); return that tolerance for ``export.json``."""
    tolerance = TOLERANCES[fmt]
    misses = [check["max_abs_diff"] > tolerance["max_abs_diff"], check["mask_agreement"] < tolerance["mask_agreement"]]
    if all(misses) if tolerance.get("either") else any(misses):
        raise ConfigError(f"--format {fmt.split('-')[0]}: the exported model strays from the {reference} model on {source} "
                          f"(max |diff| {check['max_abs_diff']:.2e}, mask agreement {check['mask_agreement']:.5f}; "
                          f"tolerance {tolerance}); nothing written")
    return tolerance


def compare_predictors(reference, candidate, images: list[np.ndarray], threshold: float = 0.5) -> dict:
    """How far ``candidate`` strays from ``reference`` on ``images``: the largest absolute
    probability difference and the share of mask pixels that agree at ``threshold`` (for class
    probabilities, the share of pixels given the same class)."""
    max_diff, same, total = 0.0, 0, 0
    for image in images:
        a, b = reference(image), candidate(image)
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        if a.ndim == 3:  # class probabilities (H, W, C): the class maps agree where the argmax does
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[0] * a.shape[1]
            continue
        same += int(((a > threshold) == (b > threshold)).sum())
        total += a.size
    return {"max_abs_diff": max_diff, "mask_agreement": same / max(total, 1), "images": len(images)}


def verification_images(run, exp) -> tuple[list[np.ndarray], str]:
    from nailseg.core.data.decode import read_image
    from nailseg.core.data.discover import find_pairs
    from nailseg.core.data.split import load_split
    from nailseg.errors import DataError

    try:
        keys = set(load_split(run.split)["val"])
        pairs = [p for p in find_pairs(exp.data.root)[0] if p.key in keys][:16]
        if pairs:
            return [read_image(p.image) for p in pairs], f"{len(pairs)} validation images of the run"
    except (DataError, ConfigError, OSError, KeyError):
        pass
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((300, 200), (256, 256), (97, 131))]
    return images, "3 random images (the run's data folder is not readable)"


def training_images(run, exp, n: int = 16) -> list[np.ndarray]:
    """Up to ``n`` of the run's training photos (int8 calibration); random pictures when the data
    folder is gone."""
    from nailseg.core.data.decode import read_image
    from nailseg.core.data.discover import find_pairs
    from nailseg.core.data.split import load_split
    from nailseg.errors import DataError

    try:
        keys = set(load_split(run.split)["train"])
        pairs = [p for p in find_pairs(exp.data.root)[0] if p.key in keys][:n]
        if pairs:
            return [read_image(p.image) for p in pairs]
    except (DataError, ConfigError, OSError, KeyError):
        pass
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(n)]
