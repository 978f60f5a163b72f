"""Run the real ``nailseg`` command in a process forked from a warm zygote.

A fresh ``python -m nailseg.cli`` spends ~10 s of a 2-core machine importing torch, Lightning,
smp and albumentations before it does anything; the suite starts the CLI about a hundred times.
multiprocessing's fork server imports those once (this module is its preload) and forks a child
per command: the child still gets its own process, working folder, environment, exit code and
captured stdout/stderr, and runs ``nailseg.cli.main`` exactly as ``python -m nailseg.cli`` does,
atexit handlers included. The TensorFlow tests' process has a server of its own that loads TensorFlow
instead (the two never share a process). What a fork cannot give, a fresh interpreter does
(``run_cli(fresh=True)``): the other framework, and variables that libraries read at import time.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback

# What each kind of server imports before it forks: torch and TensorFlow never share a process.
WARM_MODULES = {
    "torch": ("torch", "lightning", "segmentation_models_pytorch", "albumentations", "cv2", "kornia", "onnx",
              "onnxruntime", "nailseg.cli", "nailseg.engine", "nailseg.stacks.lightning.stack",
              "nailseg.stacks.lightning.module", "nailseg.stacks.lightning.callbacks",
              "nailseg.stacks.lightning.loaders.dataloader"),
    # the Keras stack first: it sets TF_USE_LEGACY_KERAS and SM_FRAMEWORK before TensorFlow loads
    "tensorflow": ("nailseg.cli", "nailseg.engine", "nailseg.stacks.keras.stack", "tensorflow", "tf_keras",
                   "segmentation_models", "albumentations", "cv2"),
}

if os.environ.get("NAILSEG_FORK_SERVER") in WARM_MODULES:
    # Only the fork server pays for these imports; the pytest process that imports this module does not.
    import importlib

    for _name in WARM_MODULES[os.environ["NAILSEG_FORK_SERVER"]]:
        try:
            importlib.import_module(_name)
        except ImportError:
            pass

_context: tuple[str, multiprocessing.context.BaseContext] | None = None


def _fork_context(kind: str):
    """The fork server of this pytest process (one per process, so one kind)."""
    global _context
    if _context is None:
        os.environ["NAILSEG_FORK_SERVER"] = kind  # inherited by the server, which then warms up on import
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        _context = (kind, ctx)
    if _context[0] != kind:
        raise RuntimeError(f"this process's fork server has {_context[0]} loaded, not {kind}")
    return _context[1]


def _child(args: list[str], cwd: str | None, env: dict[str, str], out_path: str, err_path: str) -> None:
    multiprocessing.set_start_method(None, force=True)  # the platform's default, as in a fresh interpreter
    os.environ.clear()
    os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [os.path.join(os.path.dirname(sys.modules["nailseg.cli"].__file__), "__main__.py"), *args]
    code: int | str | None
    try:
        from nailseg.cli import main

        code = main(list(args))
    except SystemExit as stop:  # argparse's usage errors, --help
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


def run_forked(args: list[str], cwd, env: dict[str, str], timeout: float, kind: str = "torch"
               ) -> subprocess.CompletedProcess:
    """``nailseg ARGS`` in a child of the warm fork server (``kind``: torch or tensorflow), shaped like
    ``subprocess.run``'s result."""
    with tempfile.TemporaryDirectory(prefix="nailseg-cli-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for path in (out, err):  # present even when the child dies before it opens them
            open(path, "w").close()
        proc = _fork_context(kind).Process(target=_child, args=(list(args), str(cwd) if cwd else None, env, out, err))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["nailseg", *args], timeout)
        with open(out, encoding="utf-8", errors="replace") as fh_out, \
                open(err, encoding="utf-8", errors="replace") as fh_err:
            return subprocess.CompletedProcess(["nailseg", *args], proc.exitcode, fh_out.read(), fh_err.read())
