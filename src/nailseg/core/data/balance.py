"""Balanced sampling: groups of images drawn in chosen shares, for as long as training runs.

Images are grouped by foreground share (log-spaced, uniform or quantile bins), by their first sub-folder under
``images/``, or by a column of a CSV file. Each group gets a *target share* of the drawn
samples, and every epoch draws ``epoch_size`` samples with replacement from one seeded
stream, so no group ever runs dry (the classic bug of repeating each group a fixed number of
times, after which training silently falls back to the largest group).

Weight schemes, with ``n_g`` the number of files in group ``g``:

- ``equal`` (and its classic alias ``inverse``, per-sample weight 1/n_g): every group the same share;
- ``sqrt_inverse`` (per-sample weight 1/sqrt(n_g)): shares proportional to sqrt(n_g), a milder balance;
- ``{group: weight}``: shares proportional to the given weights (every group must be named).

This module is framework-free; the torch sampler and the tf.data loader both draw from
:func:`draw_epoch`, so the two stacks draw the same way.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nailseg.errors import ConfigError, DataError


@dataclass
class Grouping:
    """Which group each training key is in, and the target share of each group."""

    keys: list[str]
    groups: list[str]  # group of each key, aligned with ``keys``
    names: list[str]  # group names in display order
    target: dict[str, float]  # group -> target share of draws (sums to 1)

    @property
    def sizes(self) -> dict[str, int]:
        counts = Counter(self.groups)
        return {g: counts[g] for g in self.names}

    def sample_weights(self) -> np.ndarray:
        """Per-sample probabilities that give each group its target share."""
        sizes = self.sizes
        w = np.array([self.target[g] / sizes[g] for g in self.groups], dtype=np.float64)
        return w / w.sum()

    def shares(self, drawn: np.ndarray) -> dict[str, float]:
        """Observed share of each group in an array of drawn indices."""
        counts = Counter(self.groups[i] for i in drawn.tolist())
        total = max(1, len(drawn))
        return {g: counts[g] / total for g in self.names}


def fg_bin_groups(keys: list[str], fg_share: dict[str, float], bins: int,
                  binning: str = "log") -> tuple[list[str], list[str]]:
    """Bins of the foreground share, named by their range (e.g. ``fg 1.2%-3.4%``).

    ``log`` (default): equal-width bins of log(share), so rare close-ups and rare tiny-nail
    photos form small groups that balancing lifts; ``uniform``: equal-width bins of the
    share; ``quantile``: equal-count bins (every group the same size, so ``equal`` weights
    change nothing: use it with custom weights). Images with no foreground at all form
    their own group, ``no foreground``.
    """
    if bins < 2:
        raise ConfigError(f"data.balance.bins: {bins}: need at least 2 bins")
    values = np.array([fg_share[k] for k in keys])
    positive = values[values > 0]
    if len(positive) < 2 or positive.min() == positive.max():
        raise DataError(f"data.balance.by=fg_bins: foreground shares are too alike to make {bins} bins")
    if binning == "quantile":
        edges = np.unique(np.quantile(positive, np.linspace(0, 1, bins + 1)))
    elif binning == "uniform":
        edges = np.linspace(positive.min(), positive.max(), bins + 1)
    else:
        edges = np.exp(np.linspace(np.log(positive.min()), np.log(positive.max()), bins + 1))
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    names = [f"fg {edges[i]:.1%}-{edges[i + 1]:.1%}" for i in range(len(edges) - 1)]
    groups = ["no foreground" if v <= 0 else names[i] for v, i in zip(values, index)]
    used = ["no foreground"] * ("no foreground" in groups) + [n for n in names if n in set(groups)]
    return groups, used


def folder_groups(keys: list[str]) -> tuple[list[str], list[str]]:
    groups = [Path(k).parts[0] if len(Path(k).parts) > 1 else "." for k in keys]
    return groups, sorted(set(groups))


MAX_CSV_BYTES = 64 * 2**20


def csv_groups(keys: list[str], csv_path: str, column: str, key_column: str) -> tuple[list[str], list[str]]:
    """Groups from a CSV keyed by file name (relative path, file name, or name without suffix)."""
    path = Path(csv_path)
    if path.exists() and not path.is_file():
        raise ConfigError(f"data.balance.csv: {path}: not a regular file")
    if path.is_file() and path.stat().st_size > MAX_CSV_BYTES:
        raise ConfigError(f"data.balance.csv: {path}: larger than {MAX_CSV_BYTES // 2**20} MiB; one row per image "
                          "is far less")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            for needed, what in ((key_column, "data.balance.key_column"), (column, "data.balance.column")):
                if needed not in fields:
                    raise ConfigError(f"{path}: no column '{needed}' ({what}); columns: "
                                      f"{', '.join(f[:40] for f in fields[:20])}")
            table = {(row.get(key_column) or "").strip(): (row.get(column) or "").strip() for row in reader}
    except FileNotFoundError:
        raise ConfigError(f"data.balance.csv: {path}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"data.balance.csv: {path}: not UTF-8 text") from None
    except csv.Error as err:  # e.g. a field above the csv module's limit (131,072 characters)
        raise ConfigError(f"data.balance.csv: {path}: not a readable CSV ({str(err)[:100]})") from None
    groups, missing = [], []
    for key in keys:
        p = Path(key)
        for candidate in (key, p.name, p.with_suffix("").as_posix(), p.stem):
            if candidate in table:
                groups.append(table[candidate])
                break
        else:
            missing.append(key)
    if missing:
        raise DataError([f"{path}: no row for '{k}' (column '{key_column}')" for k in missing])
    empty = [k for k, g in zip(keys, groups) if g == ""]
    if empty:
        raise DataError([f"{path}: empty '{column}' for '{k}'" for k in empty])
    return groups, sorted(set(groups))


def target_shares(names: list[str], sizes: dict[str, int], weights) -> dict[str, float]:
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigError(f"data.balance.weights: unknown group(s) {', '.join(unknown)}; groups: {', '.join(names)}")
        missing = [g for g in names if g not in weights]
        if missing:
            raise ConfigError(f"data.balance.weights: no weight for group(s) {', '.join(missing)}")
        negative = [g for g in names if weights[g] < 0]
        if negative:
            raise ConfigError(f"data.balance.weights: negative weight for group(s) {', '.join(negative)}")
        raw = {g: float(weights[g]) for g in names}
    elif weights in ("equal", "inverse"):
        raw = {g: 1.0 for g in names}
    elif weights == "sqrt_inverse":
        raw = {g: float(np.sqrt(sizes[g])) for g in names}
    else:
        raise ConfigError(f"data.balance.weights: {weights!r}: use equal, inverse, sqrt_inverse or {{group: weight}}")
    total = sum(raw.values())
    if total <= 0:
        raise ConfigError("data.balance.weights: all weights are zero")
    return {g: v / total for g, v in raw.items()}


def make_grouping(keys: list[str], cfg, fg_share: dict[str, float] | None = None) -> Grouping:
    """Group ``keys`` by ``cfg`` (a :class:`nailseg.config.BalanceConfig`)."""
    keys = list(keys)
    if not keys:
        raise DataError("balanced sampling: the training split is empty")
    if cfg.by == "fg_bins":
        if fg_share is None:
            raise DataError("data.balance.by=fg_bins needs the masks' foreground shares")
        groups, names = fg_bin_groups(keys, fg_share, cfg.bins, cfg.binning)
    elif cfg.by == "folder":
        groups, names = folder_groups(keys)
    else:
        if not cfg.csv or not cfg.column:
            raise ConfigError("data.balance: by=csv needs both 'csv' (a file) and 'column'")
        groups, names = csv_groups(keys, cfg.csv, cfg.column, cfg.key_column)
    sizes = Counter(groups)
    empty = [g for g in names if sizes[g] == 0]
    if empty:
        raise DataError(f"data.balance: group(s) with no files: {', '.join(empty)}")
    return Grouping(keys, groups, names, target_shares(names, dict(sizes), cfg.weights))


def draw_epoch(probabilities: np.ndarray, epoch_size: int, seed: int, epoch: int,
               rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's indices for one epoch.

    One stream of ``epoch_size`` draws (rounded up to a multiple of ``world_size``) is drawn
    with replacement from ``probabilities``, seeded by ``(seed, epoch)``; rank ``r`` takes
    positions ``r, r + world_size, ...``, so ranks draw disjoint parts of the same stream.
    """
    total = -(-epoch_size // world_size) * world_size
    rng = np.random.default_rng([seed, epoch])
    stream = rng.choice(len(probabilities), size=total, replace=True, p=probabilities)
    return stream[rank::world_size]


def simulate(grouping: Grouping, epoch_size: int, epochs: int, seed: int) -> dict[str, float]:
    """Observed group shares over ``epochs`` simulated epochs of the real draw."""
    p = grouping.sample_weights()
    drawn = np.concatenate([draw_epoch(p, epoch_size, seed, e) for e in range(epochs)])
    return grouping.shares(drawn)


def balance_table(grouping: Grouping, epoch_size: int, seed: int, epochs: int = 10) -> list[dict]:
    observed = simulate(grouping, epoch_size, epochs, seed)
    sizes = grouping.sizes
    n = len(grouping.keys)
    return [{"group": g, "files": sizes[g], "data_share": sizes[g] / n, "target_share": grouping.target[g],
             "observed_share": observed[g]} for g in grouping.names]


def plot_balance(rows: list[dict], out: str | os.PathLike[str], title: str) -> None:
    """Bar chart of data, target and observed shares per group (PNG, written atomically)."""
    from nailseg.core.optional import pyplot

    plt = pyplot("the balance chart")

    from nailseg.core.io import atomic_path

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows) + 2), 3.6), dpi=110)
    for i, (key, label) in enumerate((("data_share", "share of data"), ("target_share", "target share"),
                                      ("observed_share", "observed (10 epochs)"))):
        ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], width=0.27, label=label)
    ax.set_xticks(x, [r["group"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("share of samples")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def parse_weights(text: str | None):
    """``equal | inverse | sqrt_inverse | GROUP=W,GROUP=W`` (the CLI's ``--weights``)."""
    if text is None or text in ("equal", "inverse", "sqrt_inverse"):
        return text
    weights = {}
    for item in text.split(","):
        group, sep, value = item.rpartition("=")
        try:
            weights[group.strip()] = float(value)
        except ValueError:
            group = ""
        if not sep or not group.strip():
            raise ConfigError(f"--weights {text[:80]!r}: use equal, inverse, sqrt_inverse or GROUP=W,GROUP=W")
    return weights
