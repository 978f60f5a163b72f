"""The seeded train/val/test split, written once per run as ``split.json``.

The split depends only on the sorted pair keys, the fractions and the seed, so every
stack (Lightning, Keras, MMDetection) that reads the same ``split.json`` trains and
evaluates on exactly the same files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from nailseg.errors import DataError
from nailseg.core.io import write_json

SPLITS = ("train", "val", "test")


def make_split(keys: list[str], val: float, test: float, seed: int) -> dict[str, list[str]]:
    """Shuffle the sorted keys with ``seed`` and cut them into train/val/test.

    Val and test each get at least one file when their fraction is above zero and there
    are at least three files, so a tiny data set still has something to validate on.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise DataError(f"split fractions val={val} test={test} must be >= 0 and sum below 1")
    ordered = sorted(keys)
    n = len(ordered)
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in perm]

    def count(frac: float) -> int:
        if frac <= 0:
            return 0
        return max(1, math.floor(frac * n + 0.5)) if n >= 3 else 0

    n_val, n_test = count(val), count(test)
    if n - n_val - n_test < 1:
        raise DataError(f"only {n} pairs: too few to split into train/val/test")
    return {
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val : n_val + n_test]),
        "train": sorted(shuffled[n_val + n_test :]),
    }


def make_fold_split(keys: list[str], folds: int, fold: int, seed: int, val: float = 0.0) -> dict[str, list[str]]:
    """K-fold cross-validation: the sorted keys shuffled with ``seed`` and dealt into ``folds``
    folds; fold ``fold`` is held out as the **test** split, and the validation split is a ``val``
    share of the *other* folds (none when ``val`` is 0: validation then watches the training pairs).

    Whatever validation chooses (the best checkpoint, a threshold, early stopping) therefore never
    sees the held-out fold, which only scores. The same keys, folds, seed and ``val`` give the same
    folds for every config and every stack."""
    ordered = sorted(keys)
    if len(ordered) < folds:
        raise DataError(f"only {len(ordered)} pairs: too few for {folds} folds")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    held_out = sorted(ordered[i] for i in perm[fold::folds])
    rest = sorted(set(ordered) - set(held_out))
    inner = make_split(rest, val, 0.0, seed + 1 + fold) if val > 0 and len(rest) >= 3 else {"val": [], "train": rest}
    return {"val": inner["val"], "test": held_out, "train": inner["train"]}


def split_for(keys: list[str], cfg, seed: int) -> dict[str, list[str]]:
    """The split a ``data.split`` config asks for (fractions, or one fold of k)."""
    if cfg.folds:
        return make_fold_split(keys, cfg.folds, cfg.fold, seed, cfg.val)
    return make_split(keys, cfg.val, cfg.test, seed)


def save_split(path: str | os.PathLike[str], split: dict[str, list[str]], **meta) -> None:
    write_json(path, {**meta, **{name: split[name] for name in SPLITS}})


def load_split(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read ``split.json``; a missing, non-regular, non-UTF-8 or malformed file is one line naming it."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise DataError(f"{path}: split file is not a regular file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: split file is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the split file ({err.strerror})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: split file holds a {type(data).__name__}, not an object with train/val/test")
    missing = [name for name in SPLITS if name not in data]
    if missing:
        raise DataError(f"{path}: split file lacks {', '.join(missing)}")
    for name in SPLITS:
        if not isinstance(data[name], list) or not all(isinstance(k, str) for k in data[name]):
            raise DataError(f"{path}: '{name}' must be a list of file names")
    return {name: list(data[name]) for name in SPLITS}
