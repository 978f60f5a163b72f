"""Several trainings at once on one machine, without the threads fighting.

Two trainings that each take every core run 6-12x slower per epoch on 2 cores: each one's
OpenMP/oneDNN pool spins on cores the other one holds. Split the cores instead: each of ``jobs``
children gets ``cores // jobs`` threads (torch, MKL, TensorFlow's intra-op pool) and one data
worker, so two jobs on two cores are two single-threaded trainings side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from nailseg.errors import NailsegError

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_jobs(jobs: int) -> int:
    if jobs < 1:
        raise NailsegError(f"--jobs {jobs}: run at least 1 training at a time")
    if jobs > cores():
        raise NailsegError(f"--jobs {jobs}: more trainings than the {cores()} cores here; each needs a core "
                           f"(use --jobs {cores()} or fewer)")
    return jobs


def job_env(jobs: int) -> dict[str, str]:
    """The environment of one of ``jobs`` concurrent children (empty for one job: it takes every core)."""
    if jobs <= 1:
        return {}
    threads = str(max(1, cores() // jobs))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": "1"}


def job_overrides(jobs: int) -> list[str]:
    """Config overrides of a concurrent child: one data worker, so loaders do not take the cores back."""
    return [] if jobs <= 1 else ["data.num_workers=1"]


def run_jobs(fn: Callable[[T], R], items: Iterable[T], jobs: int, *,
             on_abort: Callable[[], None] = lambda: None) -> list[R]:
    """``fn`` over ``items``, ``jobs`` at a time (each call waits on its own child process), results
    in the items' order. Ctrl-C or SIGTERM calls ``on_abort`` (stop the children) before the pool
    waits for its threads, so no training runs on alone."""
    items = list(items)
    if jobs <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        return list(pool.map(fn, items))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        on_abort()
        raise
    finally:
        pool.shutdown(wait=True)
