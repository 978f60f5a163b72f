"""Run the real ``nailseg`` command in a process forked from a warm fork server
(``nailseg.forked_cli``), shaped like ``subprocess.run``'s result.

A fresh ``python -m nailseg.cli`` spends ~10 s of a 2-core machine on imports; the suite starts the
CLI several hundred times. The TensorFlow tests' process has a server that loads TensorFlow
instead (the two never share a process). What a fork cannot give, a fresh interpreter does
(``run_cli(fresh=True)`` in ``tests/conftest.py``)."""

from __future__ import annotations

import subprocess

from nailseg.forked_cli import Timeout
from nailseg.forked_cli import run_forked as _run_forked


def run_forked(args: list[str], cwd, env: dict[str, str], timeout: float, kind: str = "torch"
               ) -> subprocess.CompletedProcess:
    """``nailseg ARGS`` in a child of the warm fork server (``kind``: torch or tensorflow)."""
    try:
        done = _run_forked(list(args), cwd=cwd, env=env, kind=kind, timeout=timeout)
    except Timeout:
        raise subprocess.TimeoutExpired(["nailseg", *args], timeout) from None
    return subprocess.CompletedProcess(["nailseg", *args], done.returncode, done.stdout, done.stderr)
