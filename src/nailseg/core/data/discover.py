"""Finding image/mask pairs in a data folder.

Accepted layouts (the first that matches wins):

- ``ROOT/images/`` + ``ROOT/labels/`` (the Kaggle layout) or ``ROOT/images/`` + ``ROOT/masks/``
- the same one level down, e.g. the Kaggle archive's nested ``ROOT/nails_segmentation/``

An image and its mask share a relative path without suffix, so ``images/a/1.jpg`` pairs
with ``labels/a/1.png``. Sub-folders under ``images/`` are kept (they can be groups for
balanced sampling). Every pairing problem is collected, not just the first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nailseg.core.data.decode import IMAGE_SUFFIXES
from nailseg.errors import DataError

MASK_DIR_NAMES = ("labels", "masks")


@dataclass(frozen=True)
class Pair:
    """One training example: ``key`` is the image's path relative to ``images/``."""

    key: str
    image: Path
    mask: Path

    @property
    def group_folder(self) -> str:
        """The first sub-folder under ``images/`` (``.`` when the image is at the top)."""
        parts = Path(self.key).parts
        return parts[0] if len(parts) > 1 else "."


def resolve_data_root(root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return ``(images_dir, masks_dir)`` for ``root`` or raise a :class:`DataError`."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for base in candidates:
        images = base / "images"
        if images.is_dir():
            for name in MASK_DIR_NAMES:
                if (base / name).is_dir():
                    return images, base / name
            raise DataError(
                f"{base}: has images/ but no labels/ or masks/ folder beside it"
            )
    if not any(root.iterdir()):
        raise DataError(f"{root}: empty folder (expected images/ and labels/ inside)")
    raise DataError(
        f"{root}: no images/ folder found (expected ROOT/images + ROOT/labels or ROOT/masks, "
        "or the same one level down)"
    )


def _index(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Map relative-path-without-suffix to file; report duplicates and non-image files."""
    index: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"{path}: not an image file (unknown suffix '{path.suffix}')")
            continue
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if stem in index:
            problems.append(f"{path}: same name as {index[stem]} (ambiguous pair)")
            continue
        index[stem] = path
    return index, problems


def find_pairs(root: str | os.PathLike[str], *, strict: bool = True) -> tuple[list[Pair], list[str]]:
    """Pair every image with its mask.

    Returns ``(pairs, problems)``. With ``strict`` (the default) any problem raises a
    :class:`DataError` listing all of them, one line each.
    """
    images_dir, masks_dir = resolve_data_root(root)
    images, problems = _index(images_dir)
    masks, mask_problems = _index(masks_dir)
    problems += mask_problems
    pairs = []
    for stem, image in images.items():
        mask = masks.get(stem)
        if mask is None:
            problems.append(f"{image}: image has no mask in {masks_dir}")
            continue
        pairs.append(Pair(key=image.relative_to(images_dir).as_posix(), image=image, mask=mask))
    for stem, mask in masks.items():
        if stem not in images:
            problems.append(f"{mask}: mask has no image in {images_dir}")
    if not images and not problems:
        problems.append(f"{images_dir}: no images found")
    if strict and problems:
        raise DataError(problems)
    return pairs, problems
