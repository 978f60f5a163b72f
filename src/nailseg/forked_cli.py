"""Run ``nailseg`` commands in processes forked from a warm interpreter.

A fresh ``python -m nailseg.cli`` spends 5-15 s of a 2-core machine importing torch, Lightning, smp
and albumentations before it does anything. The test suite and the tutorial notebooks (when the
tests run them) start the CLI many times: multiprocessing's fork server imports those once (this
module is its preload) and forks a child per command. The child still gets its own process, working
folder, environment, exit code and output, and runs ``nailseg.cli.main`` exactly as
``python -m nailseg.cli`` does, atexit handlers included.

What a fork cannot give, a fresh interpreter does: the other framework (torch and TensorFlow never
share a process; a process has one fork server, so one kind), and variables that libraries read at
import time (a forked child sees its environment only from the moment it starts).

Nothing here imports a deep-learning framework, except the fork server itself, on start.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import socket
import sys
import threading
import traceback
from dataclasses import dataclass, field

SERVER_ENV = "NAILSEG_FORK_SERVER"

_TORCH = ("torch", "lightning", "segmentation_models_pytorch", "albumentations", "cv2", "kornia", "onnx",
          "onnxruntime", "nailseg.cli", "nailseg.engine", "nailseg.stacks.lightning.stack",
          "nailseg.stacks.lightning.module", "nailseg.stacks.lightning.callbacks",
          "nailseg.stacks.lightning.loaders.dataloader")
# What each kind of server imports before it forks.
WARM_MODULES: dict[str, tuple[str, ...]] = {
    "torch": _TORCH,
    # Mask R-CNN's commands: MMDetection and its registry on top of torch (no Lightning)
    "mmdet": ("torch", "albumentations", "cv2", "mmengine.runner", "mmdet.apis", "nailseg.cli", "nailseg.engine",
              "nailseg.stacks.mmdet.stack"),
    # the Keras stack first: it sets TF_USE_LEGACY_KERAS and SM_FRAMEWORK before TensorFlow loads
    "tensorflow": ("nailseg.cli", "nailseg.engine", "nailseg.stacks.keras.stack", "tensorflow", "tf_keras",
                   "segmentation_models", "albumentations", "cv2"),
}

if os.environ.get(SERVER_ENV) in WARM_MODULES:
    # Only the fork server pays for these imports; a process that imports this module does not.
    import importlib

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # read when albumentations is imported
    for _name in WARM_MODULES[os.environ[SERVER_ENV]]:
        try:
            importlib.import_module(_name)
        except ImportError:
            pass

_context: tuple[str, multiprocessing.context.BaseContext] | None = None


def _fork_context(kind: str) -> multiprocessing.context.BaseContext:
    """This process's fork server (started on first use, one per process, so one kind)."""
    global _context
    if kind not in WARM_MODULES:
        raise ValueError(f"fork server kind {kind!r}: use one of {', '.join(WARM_MODULES)}")
    if _context is None:
        from multiprocessing import forkserver

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        os.environ[SERVER_ENV] = kind  # inherited by the server, which then warms up on import
        try:
            forkserver.ensure_running()
        finally:
            del os.environ[SERVER_ENV]  # this process's other children are not servers
        _context = (kind, ctx)
    if _context[0] != kind:
        raise RuntimeError(f"this process's fork server has {_context[0]} loaded, not {kind}")
    return _context[1]


def _child(args: list[str], cwd: str | None, env: dict[str, str], out: socket.socket, err: socket.socket,
           script: str | None = None) -> None:
    """In the forked child: become ``python -m nailseg.cli ARGS`` (or ``python SCRIPT ARGS``) with
    stdout/stderr on the sockets."""
    multiprocessing.set_start_method(None, force=True)  # the platform's default, as in a fresh interpreter
    os.environ.clear()
    os.environ.update(env)
    _apply_warning_options(env.get("PYTHONWARNINGS", ""))
    if cwd:
        os.chdir(cwd)
    for fd, sock in ((1, out), (2, err)):
        os.dup2(sock.fileno(), fd)
        sock.close()
    for stream in (sys.stdout, sys.stderr):  # each line reaches the reader as written (PYTHONUNBUFFERED)
        stream.reconfigure(line_buffering=True, write_through=True)
    import runpy

    code: int | str | None = 0
    try:
        if script is not None:  # as `python SCRIPT`: its folder first on the path, run as __main__
            sys.argv = [script, *args]
            path = os.path.abspath(script)  # its __file__, absolute as the interpreter makes it
            sys.path.insert(0, os.path.dirname(path))
            runpy.run_path(path, run_name="__main__")
        else:  # as `python -m nailseg.cli` (its __main__ exits with main()'s code)
            sys.argv = ["-m", *args]
            runpy.run_module("nailseg.cli", run_name="__main__", alter_sys=True)
    except SystemExit as stop:  # the exit code, argparse's usage errors, --help
        code = stop.code
    except BaseException:  # an uncaught error: traceback and exit 1, as the interpreter would
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


def _apply_warning_options(options: str) -> None:
    """``PYTHONWARNINGS``, which a fresh interpreter reads at start and a fork would miss
    (``ignore``, ``ignore::DeprecationWarning``, ...: the ``-W`` syntax, comma-separated)."""
    import warnings

    for option in filter(None, (o.strip() for o in options.split(","))):
        try:
            warnings._setoption(option)  # what the interpreter itself calls for each -W option
        except warnings._OptionError:  # the interpreter warns about a bad option and goes on
            pass


@dataclass
class Finished:
    """A forked command's exit code and output: each stream whole, and every line of both in the
    order the command wrote them (``("out" | "err", line)``), as a terminal shows them."""

    returncode: int
    stdout: str = ""
    stderr: str = ""
    lines: list[tuple[str, str]] = field(default_factory=list)


class Timeout(Exception):
    """The command ran past its time and was killed."""


def run_forked(args: list[str], *, cwd=None, env: dict[str, str] | None = None, kind: str = "torch",
               timeout: float | None = None, script: str | None = None) -> Finished:
    """``nailseg ARGS`` (with ``script``: ``python SCRIPT ARGS``) in a child of this process's warm
    fork server (``kind``: torch, mmdet or tensorflow). An interrupt (or a timeout: :class:`Timeout`)
    kills the child."""
    env = dict(os.environ if env is None else env)
    env.pop(SERVER_ENV, None)
    ctx = _fork_context(kind)
    (out_r, out_w), (err_r, err_w) = socket.socketpair(), socket.socketpair()
    chunks: dict[str, list[str]] = {"out": [], "err": []}
    lines: list[tuple[str, str]] = []
    lock = threading.Lock()

    def pump(sock: socket.socket, name: str) -> None:
        with sock, sock.makefile("r", encoding="utf-8", errors="replace") as stream:  # "\r" ends a line
            for line in stream:
                with lock:
                    chunks[name].append(line)
                    lines.append((name, line.rstrip("\r\n")))

    proc = ctx.Process(target=_child, args=(list(args), str(cwd) if cwd else None, env, out_w, err_w, script))
    try:
        proc.start()
    finally:
        out_w.close()  # the child holds its own copies: EOF comes when it exits
        err_w.close()
    readers = [threading.Thread(target=pump, args=(out_r, "out"), daemon=True),
               threading.Thread(target=pump, args=(err_r, "err"), daemon=True)]
    try:
        for reader in readers:
            reader.start()
        proc.join(timeout)
        if proc.is_alive():
            raise Timeout(f"nailseg {' '.join(args)}: still running after {timeout} s")
        for reader in readers:
            reader.join()
    except BaseException:
        proc.kill()
        proc.join()
        raise
    return Finished(proc.exitcode if proc.exitcode is not None else 1, "".join(chunks["out"]),
                    "".join(chunks["err"]), lines)
