"""What every stack's ``nailseg eject`` shares, framework-free: nailseg's albumentations pipeline
written back as the code that builds it (from albumentations' own serialisation, so the script's
pipeline is the one nailseg trains with, never a retyped copy), and the split as a file."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from nailseg.core.data.discover import Pair

# albumentations stores cv2 flags as numbers; the script names them
CV2_FLAGS = {"interpolation": {0: "cv2.INTER_NEAREST", 1: "cv2.INTER_LINEAR", 2: "cv2.INTER_CUBIC", 3: "cv2.INTER_AREA"},
             "border_mode": {0: "cv2.BORDER_CONSTANT", 1: "cv2.BORDER_REPLICATE", 2: "cv2.BORDER_REFLECT",
                             4: "cv2.BORDER_REFLECT_101"}}
CV2_FLAGS["mask_interpolation"] = CV2_FLAGS["interpolation"]

# How every ejected script reads a pair: nailseg's decoding and mask rule (core/data/decode.py) in
# a few lines of Pillow and numpy.
READERS = '''def read_image(path: str) -> np.ndarray:
    """RGB uint8 (H, W, 3): grayscale repeated, alpha dropped."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


def read_mask(path: str) -> np.ndarray:
    """float32 (H, W) of 0/1: a pixel is foreground above half the type's range (> 127 for 8-bit),
    from the brightest channel; a mask of only 0 and 1 is a 0/1 label mask."""
    img = Image.open(path)
    arr = np.asarray(img if img.mode in ("P", "L", "RGB", "I;16", "I") else img.convert("RGB"))
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    top = 65535 if arr.dtype == np.uint16 or arr.max(initial=0) > 255 else 255
    return (arr >= 1 if arr.max(initial=0) <= 1 else arr > top / 2).astype(np.float32)'''


def render_value(key: str, value) -> str:
    """An argument's value as code: cv2 flags by name, floats without binary noise, tuples as tuples."""
    if key in CV2_FLAGS and value in CV2_FLAGS[key]:
        return CV2_FLAGS[key][value]
    if isinstance(value, float):
        return repr(float(f"{value:.10g}"))  # 5.3999999999999995 (0.03 x 180) is written 5.4
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(render_value("", v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {render_value('', v)}" for k, v in value.items()) + "}"
    return repr(value)


def _defaults(cls) -> dict:
    """What ``cls()`` serialises to, or ``{}`` when it has required arguments."""
    import albumentations as A

    try:
        return A.to_dict(cls())["transform"]
    except (TypeError, ValueError):  # required arguments (ValueError: albumentations' own validation)
        return {}


def render_transform(d: dict, indent: str = "    ") -> str:
    """One albumentations transform (its ``to_dict`` form) as the call that builds it, with the
    arguments that differ from its defaults."""
    import albumentations as A

    name = d["__class_fullname__"]
    cls = getattr(A, name)
    if "transforms" in d:  # OneOf, SomeOf, Sequential
        inner = ",\n".join(render_transform(t, indent + "    ") for t in d["transforms"])
        return f"{indent}A.{name}([\n{inner},\n{indent}], p={d['p']!r})"
    params = inspect.signature(cls).parameters
    default = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    default.update(_defaults(cls))  # as serialised (ranges as pairs), where cls() can be built
    required = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k in d]
    rest = [k for k in d if k in params and k not in required and k != "__class_fullname__"
            and (k not in default or _plain(default[k]) != _plain(d[k]))]
    args = [f"{k}={render_value(k, d[k])}" for k in (*required, *rest)]
    line = f"{indent}A.{name}({', '.join(args)})"
    if len(line) <= 100:
        return line
    inner = indent + "    "
    return f"{indent}A.{name}(\n" + ",\n".join(inner + a for a in args) + f",\n{indent})"


def _plain(value):
    """A serialised value comparable with a signature default (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def render_compose(transform) -> str:
    import albumentations as A

    return ",\n".join(render_transform(t) for t in A.to_dict(transform)["transform"]["transforms"])


def write_split(pairs: dict[str, list[Pair]], out: Path) -> Path:
    """``split.json``: each part's [image, mask] files (absolute), as ``nailseg train`` splits them."""
    split = {part: [[str(p.image.resolve()), str(p.mask.resolve())] for p in chosen] for part, chosen in pairs.items()}
    path = out / "split.json"
    path.write_text(json.dumps(split, indent=1), encoding="utf-8")
    return path
