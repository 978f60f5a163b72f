"""Timing and reporting shared by the benchmarks (framework-free)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from nailseg import __version__
from nailseg.core.io import atomic_path, write_json


def time_repeats(step: Callable[[], int], *, warmup: int, batches: int, repeats: int,
                 sync: Callable[[], None] = lambda: None) -> list[float]:
    """Images per second of ``repeats`` timed runs of ``batches`` calls of ``step``.

    ``step`` does one batch and returns how many images it held; ``sync`` waits for the
    device (CUDA kernels run asynchronously), so each timed run ends when the work is done.
    The warm-up calls (compilation, worker start, cuDNN autotuning) are not timed.
    """
    for _ in range(warmup):
        step()
    sync()
    rates = []
    for _ in range(repeats):
        images = 0
        started = time.perf_counter()
        for _ in range(batches):
            images += step()
        sync()
        rates.append(images / (time.perf_counter() - started))
    return rates


def summarize(name: str, rates: list[float], **extra) -> dict:
    return {"pipeline": name, "images_per_s": statistics.median(rates), "images_per_s_min": min(rates),
            "images_per_s_max": max(rates), "repeats": rates, **extra}


def environment(device: str = "cpu") -> dict:
    """Where a benchmark ran. ``device``: the caller's (a torch benchmark names its GPU); the
    framework versions come from the package metadata, so this module imports no framework."""
    from importlib.metadata import PackageNotFoundError, version

    from nailseg.core.runtime import cpu_report

    info = {"nailseg": __version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "device": device, "cpu": cpu_report()}
    for dist in ("torch", "tensorflow", "onnxruntime"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return info


def write_report(out: str | os.PathLike[str], results: list[dict], *, title: str, value: str = "images_per_s",
                 label: str = "images / s") -> tuple[Path, Path]:
    """``bench.json`` (the list of results) and ``bench.png`` (a bar chart with min-max spread of the
    results that have ``value``: a row that failed is kept in the JSON with its error)."""
    from nailseg.core.optional import pyplot

    plt = pyplot("the benchmark chart (bench.png)")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", results)
    results = [r for r in results if value in r]
    names = [r["label"] if "label" in r else r["pipeline"] for r in results]
    values = [r[value] for r in results]
    low = [r[value] - r.get(f"{value}_min", r[value]) for r in results]
    high = [r.get(f"{value}_max", r[value]) - r[value] for r in results]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(results) + 2), 3.8), dpi=110)
    bars = ax.bar(range(len(results)), values, yerr=[low, high], capsize=4, color="#3b7dd8")
    ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 10 else f"{v:.2f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(results)), names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out / "bench.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out / "bench.json", out / "bench.png"
