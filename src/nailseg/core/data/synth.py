"""A procedural, nails-like data set so every command runs offline on a fresh machine.

Each picture is a hand (a palm with fingers) or a close-up of a few fingers, drawn over a
cluttered background. Nails sit at the finger tips, aligned with each finger, in varied
shapes (oval, square, almond, long), natural or polished. The background holds
distractors in skin and nail-polish colours, and fingers can hide each other's nails, so
colour alone does not solve the task: a model has to learn where nails are on a hand.
Layout is Kaggle's: ``OUT/images/NNNN.jpg`` (lossy, random quality) + ``OUT/labels/NNNN.png``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nailseg.errors import DataError

SKIN_TONES = np.array(  # RGB, light to dark (Fitzpatrick-like range)
    [[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 98], [161, 102, 70],
     [120, 76, 50], [88, 56, 38]], dtype=np.float32)
POLISH = np.array(
    [[200, 20, 40], [150, 0, 60], [240, 90, 140], [250, 170, 190], [30, 30, 40], [60, 20, 120],
     [20, 90, 160], [240, 240, 235], [180, 140, 60], [230, 120, 60], [110, 170, 120]],
    dtype=np.float32)
NAIL_SHAPES = ("oval", "square", "almond", "long")


# Plain field declarations: their likeness to coco.ConversionReport and metrics.Counts is shape alone.
@dataclass
class SynthConfig:
    """How many pictures, their size and seed: the same config draws the same pictures."""

    n: int = 200
    seed: int = 0
    width: int = 384
    height: int = 288
    empty_share: float = 0.04  # pictures with no hand at all (true negatives)


MIN_SIDE, MAX_SIDE = 36, 2048  # below 36 the finger shapes do not fit (32x32 crashed); above 2048 is a typo


def check_size(text: str) -> tuple[int, int]:
    """``WxH`` -> ``(width, height)``, each side from 36 to 2048; ``ValueError`` otherwise."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 384x288") from None
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise ValueError(f"{text!r}: width and height must each be {MIN_SIDE} to {MAX_SIDE} pixels")
    return w, h


def parse_size(text: str, flag: str = "--size") -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``384x288``) into ``(width, height)``, naming ``flag`` when it is refused."""
    try:
        return check_size(text)
    except ValueError as err:
        raise DataError(f"{flag} {err}") from None


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.random((cells, max(2, int(cells * w / h)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c1, c2 = rng.uniform(20, 235, (2, 3)).astype(np.float32)
    t = _smooth_noise(rng, h, w, int(rng.integers(2, 6)))[..., None]
    img = c1 * (1 - t) + c2 * t
    # Clutter: shapes and stripes, some in skin and nail-polish colours (distractors).
    for _ in range(int(rng.integers(2, 9))):
        kind = rng.random()
        palette = SKIN_TONES if kind < 0.3 else POLISH if kind < 0.6 else None
        colour = (palette[rng.integers(len(palette))] + rng.normal(0, 12, 3)) if palette is not None \
            else rng.uniform(0, 255, 3)
        colour = tuple(float(c) for c in np.clip(colour, 0, 255))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(4, w // 5)), int(rng.integers(3, h // 6)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        elif rng.random() < 0.5:
            p2 = (centre[0] + int(rng.integers(-w // 3, w // 3)), centre[1] + int(rng.integers(-h // 3, h // 3)))
            cv2.line(img, centre, p2, colour, int(rng.integers(2, 14)), cv2.LINE_AA)
        else:
            p2 = (centre[0] + int(rng.integers(8, w // 4)), centre[1] + int(rng.integers(8, h // 4)))
            cv2.rectangle(img, centre, p2, colour, -1, cv2.LINE_AA)
    texture = rng.normal(0, rng.uniform(2, 10), (h, w, 1)).astype(np.float32)
    return img + cv2.GaussianBlur(texture, (0, 0), 1.2)[..., None]


def _superellipse(a: float, b: float, power: float, taper: float, k: int = 48) -> np.ndarray:
    """Nail outline in nail coordinates: x across the finger, y along it (tip at -b)."""
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = a * np.sign(c) * np.abs(c) ** (2 / power)
    y = b * np.sign(s) * np.abs(s) ** (2 / power)
    x = x * (1 - taper * np.clip(-y / b, 0, 1))  # narrow towards the free edge
    return np.stack([x, y], axis=1)


def _to_image(points: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Rotate nail-frame points (x across, y along towards the base) into the picture."""
    across = np.array([-direction[1], direction[0]])
    pts = origin + points[:, :1] * across - points[:, 1:] * direction
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits for cv2's shift=4


def _draw_finger(canvas, skin_mask, nail_mask, rng, base, direction, length, width, skin,
                 nail_style) -> None:
    tip = base + direction * length
    b16 = tuple(int(v) for v in np.round(base * 16))
    t16 = tuple(int(v) for v in np.round(tip * 16))
    finger = np.zeros(skin_mask.shape, np.uint8)
    cv2.line(finger, b16, t16, 1, int(width), cv2.LINE_8, shift=4)
    cv2.circle(finger, t16, int(width * 8), 1, -1, cv2.LINE_8, shift=4)
    region = finger.astype(bool)
    # This finger hides whatever it covers, nails of earlier fingers included.
    nail_mask[region] = 0
    skin_mask[region] = 1
    canvas[region] = skin
    # Knuckle creases: darker thin lines across the finger.
    across = np.array([-direction[1], direction[0]])
    for frac in (0.35, 0.62):
        centre = base + direction * length * frac
        p1, p2 = centre - across * width * 0.35, centre + across * width * 0.35
        crease = tuple(float(c) for c in skin * 0.72)
        cv2.line(canvas, tuple(int(v) for v in np.round(p1 * 16)), tuple(int(v) for v in np.round(p2 * 16)),
                 crease, max(1, int(width / 14)), cv2.LINE_AA, shift=4)
    if nail_style is None:
        return
    shape, colour, polished = nail_style
    a = width * rng.uniform(0.28, 0.4)
    b = a * rng.uniform(1.1, 1.6)
    power, taper, extend = {"oval": (2.0, 0.0, 0.0), "square": (4.5, 0.0, 0.15),
                            "almond": (2.0, 0.45, 0.35), "long": (3.0, 0.25, 0.9)}[shape]
    b = b * (1 + extend * 0.5)
    outline = _superellipse(a, b, power, taper)
    centre = tip - direction * (b * (1 - extend * 0.6) - width * 0.05)
    poly = _to_image(outline, centre, direction)
    cv2.fillPoly(canvas, [poly], tuple(float(c) for c in colour), cv2.LINE_AA, shift=4)
    cv2.fillPoly(nail_mask, [poly], 1, cv2.LINE_8, shift=4)
    if not polished:  # lunula at the base and a pale free edge
        lunula = _to_image(_superellipse(a * 0.55, b * 0.25, 2.0, 0.0), centre + direction * b * 0.75, direction)
        cv2.fillPoly(canvas, [lunula], tuple(float(c) for c in np.minimum(colour * 1.12 + 12, 255)), cv2.LINE_AA, shift=4)
        edge = _to_image(_superellipse(a * 0.85, b * 0.18, 3.0, taper), centre - direction * b * 0.85, direction)
        cv2.fillPoly(canvas, [edge], (240.0, 235.0, 225.0), cv2.LINE_AA, shift=4)
    # Specular highlight along the nail.
    glint = _to_image(_superellipse(a * 0.18, b * 0.5, 2.0, 0.0), centre + across_offset(direction, a * 0.35), direction)
    cv2.fillPoly(canvas, [glint], (255.0, 255.0, 255.0), cv2.LINE_AA, shift=4)


def across_offset(direction: np.ndarray, distance: float) -> np.ndarray:
    return np.array([-direction[1], direction[0]]) * distance


def _nail_style(rng: np.random.Generator, skin: np.ndarray, polished_hand: bool, polish: np.ndarray):
    shape = NAIL_SHAPES[int(rng.choice(4, p=[0.45, 0.25, 0.2, 0.1]))]
    if polished_hand:
        return shape, np.clip(polish + rng.normal(0, 6, 3), 0, 255), True
    natural = np.clip(skin * np.array([1.02, 0.86, 0.86]) + np.array([22, 18, 24]) + rng.normal(0, 6, 3), 0, 255)
    return shape, natural, False


def _hand(canvas, rng, h, w):
    skin_mask = np.zeros((h, w), np.uint8)
    nail_mask = np.zeros((h, w), np.uint8)
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.08) + rng.normal(0, 6, 3)
    skin = np.clip(skin, 0, 255).astype(np.float32)
    polished = rng.random() < 0.55
    polish = POLISH[rng.integers(len(POLISH))]
    scale = min(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    across = np.array([-direction[1], direction[0]])
    closeup = rng.random() < 0.35
    if closeup:
        n_fingers = int(rng.integers(1, 4))
        width = scale * rng.uniform(0.14, 0.24)
        length = scale * rng.uniform(0.55, 0.9)
        tips_centre = np.array([w, h]) / 2 + rng.normal(0, scale * 0.12, 2)
        base_centre = tips_centre - direction * length
        spacing = width * rng.uniform(1.0, 1.25)
    else:
        n_fingers = int(rng.integers(3, 6))
        width = scale * rng.uniform(0.055, 0.1)
        length = width * rng.uniform(3.2, 4.5)
        palm_centre = np.array([w, h]) / 2 - direction * length * rng.uniform(0.3, 0.9) + rng.normal(0, scale * 0.08, 2)
        palm_axes = (int(width * n_fingers * 0.62), int(width * rng.uniform(2.0, 2.8)))
        cv2.ellipse(canvas, tuple(int(v) for v in palm_centre), palm_axes, math.degrees(angle + np.pi / 2),
                    0, 360, tuple(float(c) for c in skin), -1, cv2.LINE_AA)
        cv2.ellipse(skin_mask, tuple(int(v) for v in palm_centre), palm_axes, math.degrees(angle + np.pi / 2),
                    0, 360, 1, -1)
        base_centre = palm_centre + direction * palm_axes[1] * 0.55
        spacing = width * rng.uniform(1.05, 1.3)
    for i in range(n_fingers):
        offset = (i - (n_fingers - 1) / 2) * spacing
        spread = (i - (n_fingers - 1) / 2) * rng.uniform(0.0, 0.18)
        d = np.array([math.cos(angle + spread), math.sin(angle + spread)])
        f_len = length * rng.uniform(0.8, 1.1) * (0.8 if (not closeup and i in (0, n_fingers - 1)) else 1.0)
        base = base_centre + across * offset
        style = _nail_style(rng, skin, polished, polish) if rng.random() > 0.06 else None
        _draw_finger(canvas, skin_mask, nail_mask, rng, base, d, f_len, width * rng.uniform(0.9, 1.1), skin, style)
    if not closeup and rng.random() < 0.8:  # a thumb, from the side of the palm
        side = 1 if rng.random() < 0.5 else -1
        t_angle = angle + side * rng.uniform(0.7, 1.2)
        d = np.array([math.cos(t_angle), math.sin(t_angle)])
        base = base_centre - direction * length * 0.45 + across * side * spacing * n_fingers * 0.45
        style = _nail_style(rng, skin, polished, polish)
        _draw_finger(canvas, skin_mask, nail_mask, rng, base, d, length * 0.75, width * 1.15, skin, style)
    return skin_mask, nail_mask


def _shade(canvas: np.ndarray, skin_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Roundness on the hand (darker towards its edges), then global lighting."""
    h, w = skin_mask.shape
    if skin_mask.any():
        dist = cv2.distanceTransform(skin_mask, cv2.DIST_L2, 5)
        depth = np.clip(dist / (0.04 * min(h, w) + 1e-6), 0, 1)
        factor = (0.72 + 0.28 * np.sqrt(depth))[..., None]
        canvas = np.where(skin_mask[..., None] > 0, canvas * factor, canvas)
    gx, gy = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
    theta = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.05, 0.35) * (np.cos(theta) * gx + np.sin(theta) * gy)
    tint = rng.uniform(0.88, 1.12, 3)  # colour temperature
    canvas = canvas * light[..., None] * tint * rng.uniform(0.7, 1.2)
    canvas = canvas + rng.normal(0, rng.uniform(1, 6), canvas.shape)
    if rng.random() < 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 1.4))
    return np.clip(canvas, 0, 255).astype(np.uint8)


def draw_sample(rng: np.random.Generator, width: int, height: int, empty: bool = False):
    """Return ``(rgb uint8 (H, W, 3), mask bool (H, W))`` for one synthetic picture."""
    canvas = _background(rng, height, width)
    if empty:
        skin_mask = np.zeros((height, width), np.uint8)
        nail_mask = skin_mask.copy()
    else:
        skin_mask, nail_mask = _hand(canvas, rng, height, width)
    return _shade(canvas, skin_mask, rng), nail_mask.astype(bool)


def synthesize(out: str | os.PathLike[str], cfg: SynthConfig, *, progress: bool = True) -> Path:
    """Write ``cfg.n`` pairs into ``out`` in the Kaggle layout; returns ``out``."""
    if cfg.n < 1:
        raise DataError(f"--n {cfg.n}: need at least one image")
    out = Path(out)
    for part in ("images", "labels", "masks"):
        if (out / part).exists() and (not (out / part).is_dir() or any((out / part).iterdir())):
            raise DataError(f"{out}: already holds {part}/; choose an empty or new folder")
    # Drawn into a hidden temporary folder beside ``out`` and renamed into place at the end, so a
    # killed run never leaves a half-drawn set that ``data check`` would accept as complete.
    import shutil
    import tempfile

    from nailseg.core.io import clean_stale_temps

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        _draw_into(tmp, cfg, progress)
        if not out.exists():
            os.replace(tmp, out)
        else:
            for part in ("labels", "images"):  # images/ last: without it the folder is no data set
                if (out / part).exists():
                    (out / part).rmdir()
                os.replace(tmp / part, out / part)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _draw_into(out: Path, cfg: SynthConfig, progress: bool) -> None:
    images, labels = out / "images", out / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    indices = range(cfg.n)
    from nailseg.core.progress import progress as bar

    indices = bar(indices, "drawing synthetic nails", enabled=progress)
    width = len(str(cfg.n - 1))
    for i in indices:
        rng = np.random.default_rng([cfg.seed, i])  # each picture reproducible on its own
        rgb, mask = draw_sample(rng, cfg.width, cfg.height, empty=rng.random() < cfg.empty_share)
        name = f"{i:0{max(4, width)}d}"
        quality = int(rng.integers(60, 96))
        _write_atomic(images / f"{name}.jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                      [cv2.IMWRITE_JPEG_QUALITY, quality])
        _write_atomic(labels / f"{name}.png", mask.astype(np.uint8) * 255, [])


def _write_atomic(path: Path, array: np.ndarray, params: list[int]) -> None:
    ok, buf = cv2.imencode(path.suffix, array, params)
    if not ok:
        raise DataError(f"{path}: could not encode")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
