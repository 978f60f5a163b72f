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

# The module path a fresh interpreter starts with (its first entry, the script's folder or the
# working folder, aside): a child's path is rebuilt from it, not inherited from whoever started the server.
_FRESH_PATH: list[str] | None = None
# The warning filters before the warm imports: a plain script gets these back (a `nailseg` command
# keeps the ones nailseg's modules installed when the server imported them, as a fresh one would).
_FRESH_WARNING_FILTERS: list | None = None

if os.environ.get(SERVER_ENV) in WARM_MODULES:
    # Only the fork server pays for these imports; a process that imports this module does not.
    import importlib
    import json
    import subprocess

    _FRESH_PATH = json.loads(subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                                            capture_output=True, text=True, check=True).stdout)
    import warnings

    _FRESH_WARNING_FILTERS = list(warnings.filters)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # read when albumentations is imported
    # What the imports print (segmentation_models names its framework) is the server's, not a
    # command's: it goes nowhere, rather than into the caller's output or every child's buffer.
    _saved = [os.dup(1), os.dup(2)]
    _devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(_devnull, 1)
    os.dup2(_devnull, 2)
    try:
        for _name in WARM_MODULES[os.environ[SERVER_ENV]]:
            try:
                importlib.import_module(_name)
            except ImportError:
                pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for _fd, _copy in zip((1, 2), _saved):
            os.dup2(_copy, _fd)
            os.close(_copy)
        os.close(_devnull)

_context: tuple[str, multiprocessing.context.BaseContext] | None = None
_context_lock = threading.Lock()


def _fork_context(kind: str) -> multiprocessing.context.BaseContext:
    """This process's fork server (started on first use, one per process, so one kind)."""
    global _context
    if kind not in WARM_MODULES:
        raise ValueError(f"fork server kind {kind!r}: use one of {', '.join(WARM_MODULES)}")
    with _context_lock:
        if _context is None:
            from multiprocessing import forkserver

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            os.environ[SERVER_ENV] = kind  # inherited by the server, which then warms up on import
            try:
                forkserver.ensure_running()
            finally:
                os.environ.pop(SERVER_ENV, None)  # this process's other children are not servers
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
    if script is not None and _FRESH_WARNING_FILTERS is not None:
        import warnings

        warnings.filters[:] = _FRESH_WARNING_FILTERS
        warnings._filters_mutated()
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
    path = os.path.abspath(script) if script is not None else None  # __file__, absolute as Python makes it
    # the path a fresh interpreter has: the script's folder (or, for -m, the working folder) first
    sys.path[:] = [os.path.dirname(path) if path else os.getcwd(), *(_FRESH_PATH or sys.path[1:])]
    try:
        if path is not None:  # as `python SCRIPT`, run as __main__
            sys.argv = [script, *args]
            _run_script(path)
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


def _run_script(path: str) -> None:
    """Run the file at ``path`` as ``__main__`` the way the interpreter does: ``__file__`` absolute,
    ``sys.argv[0]`` as typed (``runpy.run_path`` would overwrite it with the path)."""
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __builtins__=builtins, __cached__=None, __spec__=None, __loader__=None)
    sys.modules["__main__"] = main  # so pickling and `if __name__ == "__main__"` see this module
    with open(path, "rb") as source:
        code = compile(source.read(), path, "exec")
    exec(code, main.__dict__)


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
    """A forked command's exit code and output: each stream whole, and every line of both as it
    arrived (``("out" | "err", line)``): the order written, except that lines of the two streams
    written within the same instant may come either way (two sockets, two readers), as with pipes."""

    returncode: int
    stdout: str = ""
    stderr: str = ""
    lines: list[tuple[str, str]] = field(default_factory=list)


READ_GRACE_S = 5.0  # how long output may trail the command's exit


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
    except BaseException:
        proc.kill()
        proc.join()
        raise
    finally:
        # What the command wrote is read by now, or within moments; a process it started that
        # outlives it (submitit's local controller does) may hold the sockets open: stop reading.
        started = [reader for reader in readers if reader.ident is not None]
        for reader in started:
            reader.join(READ_GRACE_S)
        for sock in (out_r, err_r):
            if any(reader.is_alive() for reader in started):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for reader in started:
            reader.join()
        for sock in (out_r, err_r):
            sock.close()  # a reader that never started leaves its socket to us
    return Finished(proc.exitcode if proc.exitcode is not None else 1, "".join(chunks["out"]),
                    "".join(chunks["err"]), lines)
