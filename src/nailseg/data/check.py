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

from nailseg.data.decode import read_image, read_mask
from nailseg.data.discover import Pair, find_pairs
from nailseg.errors import DataError


@dataclass
class PairStats:
    key: str
    width: int
    height: int
    fg_share: float


@dataclass
class CheckReport:
    root: str
    n_pairs: int
    problems: list[str]
    stats: list[PairStats] = field(default_factory=list)

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
            "problems": self.problems,
        }

    def to_json(self) -> dict:
        return {**self.summary(), "per_pair": [asdict(s) for s in self.stats]}

    def raise_if_problems(self) -> None:
        if self.problems:
            raise DataError(self.problems)


def _check_pair(pair: Pair) -> PairStats | str:
    try:
        image = read_image(pair.image)
    except DataError as err:
        image_err = err.lines[0]
    else:
        image_err = None
    try:
        mask = read_mask(pair.mask)
    except DataError as err:
        mask_err = err.lines[0]
    else:
        mask_err = None
    errors = [e for e in (image_err, mask_err) if e]
    if errors:
        return "\n".join(errors)
    if image.shape[:2] != mask.shape:
        return (
            f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{pair.image.name} is {image.shape[1]}x{image.shape[0]} (must be the same size)"
        )
    return PairStats(pair.key, image.shape[1], image.shape[0], float(mask.mean()))


def check_dataset(
    root: str | os.PathLike[str], *, workers: int | None = None, progress: bool = True
) -> CheckReport:
    """Find and fully decode every pair under ``root``; never raises for data problems."""
    try:
        pairs, problems = find_pairs(root, strict=False)
    except DataError as err:
        return CheckReport(str(root), 0, err.lines)
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    stats: list[PairStats] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_check_pair, pairs)
        if progress and len(pairs) > 50:
            from tqdm import tqdm

            results = tqdm(results, total=len(pairs), desc="checking pairs", unit="pair")
        for result in results:
            if isinstance(result, str):
                problems.extend(result.splitlines())
            else:
                stats.append(result)
    return CheckReport(str(Path(root)), len(pairs), problems, stats)
