"""Sliding-window (tiled) inference for photos far larger than the training size.

Without tiling, a predictor resizes the whole photo down to the training size, and a nail of
40 px in a 6000x4000 shot becomes one or two pixels. With ``--tile SIZE --overlap F`` the
photo is cut into overlapping windows; each window goes through the model exactly as a
whole training photo would (resized to the model's input), and the overlapping
predictions are blended with weights that fall off towards each window's edge, where the
model saw the least context (MMSegmentation's slide inference, with a soft blend).

Memory: the model sees one window at a time, and the blending buffers hold one strip of
windows (window height x photo width); rows are finished and written out as soon as no
later window covers them. The only photo-sized arrays are the decoded photo and the answer:
a float32 probability map for a binary model, a ``uint8`` class map for a many-class one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nailseg.errors import ConfigError

Predictor = Callable[[np.ndarray], np.ndarray]
MIN_TILE = 32
MAX_OVERLAP = 0.9
EDGE_WEIGHT = 0.05  # a window's border pixels still count a little, so a photo edge is never divided by 0


MODEL_INPUT = "model"  # ``--tile`` alone: windows of the model's input size, photo pixels 1:1


def parse_tile(text: str) -> tuple[int, int] | int | str:
    """``--tile``: ``SIZE`` (the window's longer side, in the model's aspect ratio), ``HxW``
    (photo pixels) or ``model`` (what ``--tile`` alone means: argparse passes its const through
    this parser too). One line naming the flag otherwise."""
    raw = str(text).strip().lower()
    if raw == MODEL_INPUT:
        return MODEL_INPUT
    parts = raw.split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise ConfigError(f"--tile {text!r}: give a window size in pixels, SIZE (e.g. 512) or HxW (e.g. 360x480)")
    values = [int(p) for p in parts]
    if min(values) < MIN_TILE:
        raise ConfigError(f"--tile {text!r}: windows of at least {MIN_TILE} pixels a side")
    return values[0] if len(values) == 1 else (values[0], values[1])


def check_overlap(overlap: float) -> float:
    if not 0.0 <= overlap <= MAX_OVERLAP:
        raise ConfigError(f"--overlap {overlap}: a share of the window from 0 to {MAX_OVERLAP} (e.g. 0.25)")
    return float(overlap)


def window_shape(tile: tuple[int, int] | int | str, model_hw: tuple[int, int]) -> tuple[int, int]:
    """The window (h, w) in photo pixels: ``HxW`` as given; a single ``SIZE`` is the longer side,
    with the model input's aspect ratio, so a window is never stretched on its way in;
    ``MODEL_INPUT``: the model's input size itself (each window reaches the model unresized)."""
    if tile == MODEL_INPUT:
        return tuple(model_hw)
    if isinstance(tile, tuple):
        return tile
    mh, mw = model_hw
    if mh >= mw:
        return tile, max(MIN_TILE, round(tile * mw / mh))
    return max(MIN_TILE, round(tile * mh / mw)), tile


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels every ``stride`` along ``length``; the last
    window ends flush with the photo's edge, so every pixel is covered and no window overhangs."""
    if window >= length:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def blend_weights(h: int, w: int, ramp_h: int, ramp_w: int) -> np.ndarray:
    """(h, w) weights: 1 in the window's middle, falling linearly to ``EDGE_WEIGHT`` over the
    ``ramp`` pixels next to each edge (the part another window also covers)."""
    def ramp(n: int, r: int) -> np.ndarray:
        if r <= 0:
            return np.ones(n, np.float32)
        d = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n))
        return np.clip(d / r, EDGE_WEIGHT, 1.0).astype(np.float32)

    return np.outer(ramp(h, ramp_h), ramp(w, ramp_w))


def tile_predictor(predict: Predictor, window_hw: tuple[int, int], overlap: float = 0.25) -> Predictor:
    """``predict`` applied window by window and blended. Returns the probability map (H, W)
    where ``predict`` gives one (a binary model), or the ``uint8`` class map (H, W) where it
    gives class probabilities (H, W, C): their blended argmax, so a photo-sized (H, W, C)
    float array is never built."""
    check_overlap(overlap)
    th, tw = window_hw

    def predict_tiled(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        wh, ww = min(th, height), min(tw, width)
        sh, sw = max(1, round(wh * (1 - overlap))), max(1, round(ww * (1 - overlap)))
        ys, xs = window_starts(height, wh, sh), window_starts(width, ww, sw)
        weight = blend_weights(wh, ww, wh - sh if len(ys) > 1 else 0, ww - sw if len(xs) > 1 else 0)
        out = acc = wsum = None
        top = 0  # the photo row that acc[0] holds
        for y in ys:
            if acc is not None and y > top:  # rows above y are covered by no later window: finish them
                _finish(acc, wsum, y - top, out[top:y])
                acc = np.concatenate([acc[y - top:], np.zeros_like(acc[: y - top])])
                wsum = np.concatenate([wsum[y - top:], np.zeros_like(wsum[: y - top])])
                top = y
            for x in xs:
                prob = np.asarray(predict(np.ascontiguousarray(image[y:y + wh, x:x + ww])), np.float32)
                if acc is None:  # a (H, W, C) answer means class probabilities: the answer is a class map
                    out = np.empty((height, width), np.uint8 if prob.ndim == 3 else np.float32)
                    acc = np.zeros((wh, width, prob.shape[2] if prob.ndim == 3 else 1), np.float32)
                    wsum = np.zeros((wh, width), np.float32)
                acc[:, x:x + ww] += (prob if prob.ndim == 3 else prob[..., None]) * weight[..., None]
                wsum[:, x:x + ww] += weight
        _finish(acc, wsum, height - top, out[top:])
        return out

    return predict_tiled


def _finish(acc: np.ndarray, wsum: np.ndarray, rows: int, out: np.ndarray) -> None:
    """Write the first ``rows`` blended rows: probabilities, or the class map (``uint8`` out)."""
    blended = acc[:rows] / wsum[:rows, :, None]
    out[...] = blended.argmax(-1) if out.dtype == np.uint8 else blended[..., 0]
