"""Validating a data folder: every file decoded once, every problem reported.

``nailseg data check`` prints this report, and ``nailseg train`` runs the same check and
refuses to start with the same messages, so bad data is caught before any compute is spent.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nailseg.core.data.decode import check_pixels, image_size, read_image, read_mask_checked
from nailseg.core.data.discover import Pair, find_pairs
from nailseg.errors import DataError, quote_name


@dataclass
class PairStats:
    key: str
    width: int
    height: int
    fg_share: float
    warning: str | None = None
    class_pixels: list[int] | None = None  # many classes: pixels of each class (ignore value not counted)


@dataclass
class CheckReport:
    root: str
    n_pairs: int
    problems: list[str]
    stats: list[PairStats] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_names: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict:
        """Min/median/max of sizes and foreground share over the valid pairs."""

        def mmm(values: list[float]) -> dict[str, float] | None:
            if not values:
                return None
            arr = np.asarray(values, dtype=float)
            return {"min": float(arr.min()), "median": float(np.median(arr)), "max": float(arr.max())}

        return {
            "root": self.root,
            "pairs": self.n_pairs,
            "valid_pairs": len(self.stats),
            "width": mmm([s.width for s in self.stats]),
            "height": mmm([s.height for s in self.stats]),
            "fg_share": mmm([s.fg_share for s in self.stats]),
            **({"class_pixels": self.class_totals(), "classes_absent": self.classes_absent()}
               if self.class_names is not None else {}),
            "problems": self.problems,
            "warnings": self.warnings,
        }

    def class_totals(self, keys: set[str] | None = None) -> dict[str, int]:
        """Pixels of each class over the valid pairs (or those of ``keys``, e.g. one split)."""
        totals = np.zeros(len(self.class_names or []), np.int64)
        for s in self.stats:
            if s.class_pixels is not None and (keys is None or s.key in keys):
                totals += np.asarray(s.class_pixels, np.int64)
        return {name: int(t) for name, t in zip(self.class_names or [], totals)}

    def classes_absent(self, keys: set[str] | None = None) -> list[str]:
        return [name for name, t in self.class_totals(keys).items() if t == 0]

    def to_json(self) -> dict:
        return {**self.summary(), "per_pair": [asdict(s) for s in self.stats]}

    def raise_if_problems(self) -> None:
        if self.problems:
            raise DataError(self.problems)


def _check_pair(pair: Pair, labels=None) -> PairStats | list[str]:
    """Stats of one pair, or its problems. Sizes are compared from the headers first, so a
    mask far larger than its image is reported without decoding it."""
    errors = []
    sizes = {}
    for name, path in (("image", pair.image), ("mask", pair.mask)):
        try:
            sizes[name] = image_size(path)
            check_pixels(path, sizes[name])
        except DataError as err:
            errors.append(err.lines[0])
    if errors:
        return errors
    if sizes["image"] != sizes["mask"]:
        (iw, ih), (mw, mh) = sizes["image"], sizes["mask"]
        return [f"{quote_name(pair.mask)}: mask is {mw}x{mh} but its image {quote_name(pair.image.name)} is {iw}x{ih} "
                "(must be the same size)"]
    try:
        image = read_image(pair.image)
    except DataError as err:
        errors.append(err.lines[0])
    try:
        if labels is None:
            mask, warning = read_mask_checked(pair.mask)
        else:  # class indices: a value that is neither a class nor the ignore value is refused by name
            from nailseg.core.labels import read_labels

            mask, warning = read_labels(pair.mask, labels), None
    except DataError as err:
        errors.append(err.lines[0])
    if errors:
        return errors
    if image.shape[:2] != mask.shape:  # headers can lie (e.g. EXIF-less rotation in odd formats)
        return [f"{quote_name(pair.mask)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{quote_name(pair.image.name)} is {image.shape[1]}x{image.shape[0]} (must be the same size)"]
    if labels is not None:
        from nailseg.core.labels import class_pixels

        pixels = class_pixels(mask, labels)
        # the share of labelled pixels that are not class 0: what stratifies the split and fg_bins
        return PairStats(pair.key, image.shape[1], image.shape[0], float(sum(pixels[1:]) / max(1, mask.size)),
                         None, pixels)
    return PairStats(pair.key, image.shape[1], image.shape[0], float(mask.mean()), warning)


def check_dataset(
    root: str | os.PathLike[str], *, workers: int | None = None, progress: bool = True, labels=None
) -> CheckReport:
    """Find and fully decode every pair under ``root``; never raises for data problems.
    ``labels`` (a :class:`~nailseg.core.labels.LabelSpec`): masks hold class indices, counted per class."""
    try:
        pairs, problems = find_pairs(root, strict=False)
    except DataError as err:
        return CheckReport(str(root), 0, err.lines)
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    stats: list[PairStats] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda pair: _check_pair(pair, labels), pairs)
        if len(pairs) > 50:
            from nailseg.core.progress import progress as bar

            results = bar(results, "checking pairs", total=len(pairs), unit="pair", enabled=progress)
        for result in results:
            if isinstance(result, list):
                problems.extend(result)
            else:
                stats.append(result)
    warnings = [s.warning for s in stats if s.warning]
    if labels is not None:
        report = CheckReport(str(Path(root)), len(pairs), problems, stats, warnings, list(labels.names))
        if stats and not problems:
            warnings += [f"{quote_name(root)}: class {name!r} has no pixel in any mask" for name in report.classes_absent()]
        return report
    if stats and all(s.fg_share == 0 for s in stats):
        warnings.append(f"{quote_name(root)}: every mask is empty (no foreground pixel in {len(stats)} masks): "
                        "check the mask format against the mask rule (nailseg data check --help)")
    return CheckReport(str(Path(root)), len(pairs), problems, stats, warnings)
