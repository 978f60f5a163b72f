"""Overlays that show a prediction on its photograph."""

from __future__ import annotations

import cv2
import numpy as np

PRED_COLOUR = (0, 255, 120)  # RGB
TRUTH_COLOUR = (255, 60, 60)


def overlay(image: np.ndarray, mask: np.ndarray, colour=PRED_COLOUR, alpha: float = 0.45,
            truth: np.ndarray | None = None) -> np.ndarray:
    """Blend ``mask`` into ``image`` and outline it; outline ``truth`` too when given."""
    out = image.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = out[m] * (1 - alpha) + np.asarray(colour, np.float32) * alpha
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, 1, cv2.LINE_AA)
    if truth is not None:
        contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, TRUTH_COLOUR, 1, cv2.LINE_AA)
    return out


ERROR_COLOURS = {"tp": (40, 200, 70), "fp": (235, 50, 50), "fn": (50, 110, 255)}  # RGB


def error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, iou: float, alpha: float = 0.55) -> np.ndarray:
    """Truth against prediction: true positives green, false positives red, false negatives blue,
    and the image's IoU in the top-left corner. Shows at a glance what a model mistakes for a nail."""
    out = image.astype(np.float32).copy()
    pred, truth = pred.astype(bool), truth.astype(bool)
    for key, region in (("tp", pred & truth), ("fp", pred & ~truth), ("fn", ~pred & truth)):
        out[region] = out[region] * (1 - alpha) + np.asarray(ERROR_COLOURS[key], np.float32) * alpha
    out = out.astype(np.uint8)
    text = f"IoU {iou:.3f}"
    scale = max(0.4, min(image.shape[:2]) / 500)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (w + 8, h + base + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def instance_overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """One colour per instance (golden-angle hues, so neighbours differ), outlined, with its number."""
    out = image.astype(np.float32).copy()
    for i, m in enumerate(masks):
        hue = int((i * 137.508) % 180)
        colour = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        out[m] = out[m] * (1 - alpha) + colour * alpha
    out = out.astype(np.uint8)
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
