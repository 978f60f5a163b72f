"""Progress for long loops: a tqdm bar on a terminal, two plain lines in a log.

tqdm redraws its bar with carriage returns; in a log file or a CI console each frame becomes a
line of noise. When stderr is not a terminal, :func:`progress` prints ``desc: N items`` before the
loop and ``desc: N items in T s`` after it, and nothing in between."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def interactive() -> bool:
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, *, total: int | None = None, unit: str = "img",
             enabled: bool = True) -> Iterator[T]:
    """``iterable``, with a bar on a terminal or a start and an end line otherwise (nothing when
    ``enabled`` is false)."""
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if interactive():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit)
        return
    count = f"{total} {unit}" if total is not None else unit
    print(f"{desc}: {count} ...", file=sys.stderr, flush=True)
    started, n = time.perf_counter(), 0
    for n, item in enumerate(iterable, 1):  # noqa: B007 - n is read after the loop
        yield item
    print(f"{desc}: {n} {unit} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
