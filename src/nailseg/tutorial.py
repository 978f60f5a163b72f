"""Helpers the tutorial notebooks share: run a CLI line and fail the cell when it fails, show the
source nailseg runs, and draw pictures inline.

The notebooks live in ``docs/tutorials/`` as jupytext percent-format sources; ``make notebooks``
executes them into ``docs/tutorials/NN-topic.ipynb``. Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path


def _quiet_library_noise() -> None:
    """Messages that teach nothing in a notebook: tqdm's hint about Jupyter widgets, Lightning's
    advert for its cloud logger, and Lightning's deprecation of a torch helper it calls itself.
    Every other warning still shows."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

    class _NoAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


_quiet_library_noise()

REAL_DATA_ENV = "NAILSEG_REAL_DATA"
BUDGET_ENV = "NAILSEG_TUTORIAL_BUDGET"
# torch, mmdet or tensorflow: run each `nailseg` line in a fork of a warm interpreter with that
# framework loaded (``nailseg.forked_cli``) instead of a fresh one. The test suite sets it: a
# notebook starts the CLI four to six times, and each fresh start imports the framework again.
FORK_ENV = "NAILSEG_TUTORIAL_FORK"
BUDGETS = ("full", "test")


def budget(full: int, test: int) -> int:
    """How many epochs a notebook's training cell runs: ``full`` (the default: the figures the
    published notebooks show) or, with ``NAILSEG_TUTORIAL_BUDGET=test`` (what the test suite sets so
    that every notebook still runs end to end in a fraction of the time), ``test``. The cell prints
    which one it used, so a reader never mistakes a test run's figures for the published ones."""
    chosen = os.environ.get(BUDGET_ENV, "full").strip().lower() or "full"
    if chosen not in BUDGETS:
        raise ValueError(f"{BUDGET_ENV}={chosen!r}: use one of {', '.join(BUDGETS)}")
    epochs = full if chosen == "full" else test
    note = "" if chosen == "full" else f" ({BUDGET_ENV}=test; the published notebook trains {full})"
    print(f"training budget: {epochs} epoch{'s' if epochs != 1 else ''}{note}")
    return epochs


def real_data() -> Path | None:
    """The folder of real nail photos: ``$NAILSEG_REAL_DATA``, else ``../shared/data/nails_segmentation``
    beside the current folder or beside the repository nailseg was installed from; ``None`` when
    there is none (the notebooks then use synthetic pictures)."""
    here = Path(__file__).resolve().parents[2]
    candidates = [os.environ.get(REAL_DATA_ENV), Path.cwd().parent / "shared/data/nails_segmentation",
                  here.parent / "shared/data/nails_segmentation"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "images").is_dir():
            return Path(candidate).resolve()
    return None


def sh(command: str, *, expect: int | tuple[int, ...] = 0, quiet: bool = False, tail: int = 25,
       cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> str:
    """Run one ``nailseg ...`` (or ``python script.py ...``) line as a reader would type it, in
    ``cwd`` with ``env`` added to the environment, print its output (the last ``tail`` lines), and
    raise when its exit code is not ``expect`` (or one of them: a refusal, exit 2, that the notebook
    explains), so a broken command fails the notebook.
    Returns the last line of standard output (``train`` prints its run folder there)."""
    argv = shlex.split(command)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
           **(env or {})}
    print(f"$ {command}")
    forkable = argv[0] == "nailseg" or (argv[0] == "python" and len(argv) > 1 and not argv[1].startswith("-"))
    if forkable and os.environ.get(FORK_ENV):
        script = argv[1] if argv[0] == "python" else None
        args = argv[2:] if script else argv[1:]
        returncode, both, out = _run_forked(args, env, os.environ[FORK_ENV], cwd, script)
    else:
        if argv[0] == "nailseg":  # the nailseg of this Python, whatever PATH says
            argv = [sys.executable, "-m", "nailseg.cli", *argv[1:]]
        elif argv[0] == "python":  # and its python
            argv = [sys.executable, *argv[1:]]
        returncode, both, out = _run(argv, env, cwd)
    lines = [_ANSI.sub("", line) for line in both if line.strip()]  # a "\r" reaches _run as a line break
    if not quiet:
        shown = lines[-tail:]
        if len(lines) > len(shown):
            print(f"[... {len(lines) - len(shown)} earlier lines]")
        print("\n".join(shown))
    if returncode not in ((expect,) if isinstance(expect, int) else expect):
        raise RuntimeError(f"{command!r} exited with {returncode} (expected {expect})")
    out = [line for line in out if line.strip()]
    return out[-1].strip() if out else ""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # mmengine colours its log lines; progress bars hide the cursor


def _run(argv: list[str], env: dict[str, str], cwd=None) -> tuple[int, list[str], list[str]]:
    """Run a command; its exit code, its stdout and stderr lines in the order it wrote them (as a
    terminal shows them: the summary after the epochs), and its stdout lines alone."""
    both: list[str] = []
    out: list[str] = []
    lock = threading.Lock()

    def pump(stream, keep: list[str] | None) -> None:
        for line in stream:
            with lock:
                both.append(line.rstrip("\n"))
                if keep is not None:
                    keep.append(line.rstrip("\n"))

    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                          errors="replace", env=env, cwd=cwd) as proc:
        readers = [threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, None), daemon=True)]
        try:
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join()
            return proc.wait(), both, out
        except BaseException:  # an interrupted cell stops the command too, as subprocess.run would
            proc.kill()
            proc.wait()
            raise


def _run_forked(args: list[str], env: dict[str, str], kind: str, cwd=None,
                script: str | None = None) -> tuple[int, list[str], list[str]]:
    """:func:`_run` for ``nailseg ARGS`` or ``python SCRIPT ARGS``, in a fork of the warm
    interpreter of ``kind``."""
    from nailseg.forked_cli import run_forked

    done = run_forked(args, env=env, kind=kind, cwd=cwd, script=script)
    return done.returncode, [line for _, line in done.lines], [line for name, line in done.lines if name == "out"]


RESULT_FILE = "notebook-result.json"


def record(**figures: float) -> None:
    """Print the figures a notebook ends with (a held-out IoU, a mAP) and keep them in
    ``notebook-result.json`` in the current folder: the test suite holds every notebook to a floor
    that a model that learned nothing cannot reach. Calls add to the file."""
    import json

    path = Path(RESULT_FILE)
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept.update({k: float(v) for k, v in figures.items()})
    path.write_text(json.dumps(kept, indent=1))
    print("notebook result:", ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))


def synth(folder: str | os.PathLike[str], n: int, size: str) -> Path:
    """Draw the synthetic set once; a second run of the notebook reuses it."""
    folder = Path(folder)
    if not (folder / "labels").is_dir():
        sh(f"nailseg data synth {folder} --n {n} --size {size}")
    return folder


def source(*objects, lines: int | None = None) -> str:
    """The source of nailseg's own functions and classes, as Markdown code blocks headed by their
    file, so the notebook shows the code that runs (never a copy that could drift)."""
    blocks = []
    for obj in objects:
        text = textwrap.dedent(inspect.getsource(obj))
        if lines is not None and text.count("\n") > lines:
            text = "\n".join(text.splitlines()[:lines]) + "\n    ..."
        file = Path(inspect.getsourcefile(obj) or "?")
        shown = file.as_posix().split("/src/", 1)[-1]
        blocks.append(f"`{shown}` — `{obj.__qualname__}`\n\n```python\n{text.rstrip()}\n```")
    return "\n\n".join(blocks)


def source_unimported(module: str, name: str) -> str:
    """The source of ``module.name`` (a function, a class or a module-level table) read from its
    file without importing the module: for code whose framework must not load in this process
    (TensorFlow beside torch), and for tables, which ``inspect`` cannot show."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    text = Path(spec.origin).read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(text)):
        assigned = (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                         for t in node.targets)) or \
            (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name)
        if assigned or (isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.name == name):
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            body = "\n".join(text.splitlines()[first - 1:node.end_lineno])
            shown = Path(spec.origin).as_posix().split("/src/", 1)[-1]
            return f"`{shown}` — `{name}`\n\n```python\n{textwrap.dedent(body).rstrip()}\n```"
    raise AttributeError(f"{module} has no {name}")


def show(*objects, lines: int | None = None) -> None:
    """Display :func:`source` in a notebook (plain text outside one); a ``(module, name)`` tuple is
    read with :func:`source_unimported`."""
    text = "\n\n".join(source_unimported(*o) if isinstance(o, tuple) else source(o, lines=lines) for o in objects)
    try:
        from IPython.display import Markdown, display

        display(Markdown(text))
    except ImportError:
        print(text)


def grid(images: Sequence, titles: Sequence[str] | None = None, *, cols: int = 4, width: float = 3.2,
         suptitle: str = ""):
    """Pictures (arrays or PNG/JPEG paths) in a grid, inline."""
    import matplotlib.pyplot as plt
    import numpy as np

    from nailseg.core.data.decode import read_image

    images = [read_image(p) if isinstance(p, (str, os.PathLike)) else np.asarray(p) for p in images]
    rows = max(1, -(-len(images) // cols))
    cols = min(cols, max(1, len(images)))
    heights = [im.shape[0] / im.shape[1] for im in images] or [1]
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, width * rows * max(heights)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, im) in enumerate(zip(axes.flat, images)):
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
        if titles:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    plt.show()


def show_png(path: str | os.PathLike[str], width: float = 9.0) -> None:
    """One PNG nailseg wrote (``curves.png``, a benchmark chart), inline at its aspect ratio."""
    grid([path], cols=1, width=width)


def overlays(folder: str | os.PathLike[str], n: int = 4) -> None:
    """The first ``n`` overlays ``nailseg eval --overlays`` wrote (by file name), shown in a grid."""
    files = sorted(Path(folder).glob("*.png"))[:n]
    grid(files, [f.stem[:24] for f in files], cols=min(n, 2), width=5.0)
