"""Execute the tutorial notebooks: each ``docs/tutorials/NN-topic.py`` (jupytext percent format)
becomes ``docs/tutorials/NN-topic.ipynb`` with its outputs. The ``.ipynb`` files are generated,
never edited (and not committed): ``make notebooks`` writes them, ``make docs`` renders them.

    python scripts/notebooks.py                 # all, run from the repository root
    python scripts/notebooks.py 03 08           # the ones whose names start with these
    python scripts/notebooks.py --cwd /tmp/w    # run them in another folder (configs/ copied there)

A failing cell stops with exit 1, naming the notebook and the cell; the partial notebook is not written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "docs" / "tutorials"


def sources(prefixes: list[str] | None = None) -> list[Path]:
    found = sorted(TUTORIALS.glob("[0-9][0-9]-*.py"))
    return [p for p in found if not prefixes or any(p.name.startswith(x) for x in prefixes)]


def execute(source: Path, out: Path, cwd: Path, *, timeout: int = 900) -> float:
    """Run ``source`` in a fresh kernel with ``cwd`` as its folder; write the executed notebook to
    ``out`` (atomically) and return the wall time in seconds."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["jupytext"] = {"source": f"docs/tutorials/{source.name}"}
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "inline",
           "PYTHONWARNINGS": "ignore::DeprecationWarning", "TQDM_DISABLE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MPLBACKEND")  # ipykernel picks its inline backend
    started = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)
    wall = time.perf_counter() - started
    nb.metadata["nailseg"] = {"wall_time_s": round(wall, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    return wall


def prepare(cwd: Path) -> None:
    """A folder to run in: the repository root itself, or another one with ``configs/`` copied in."""
    cwd.mkdir(parents=True, exist_ok=True)
    if cwd.resolve() != REPO and not (cwd / "configs").exists():
        shutil.copytree(REPO / "configs", cwd / "configs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--cwd", default=str(REPO), help="folder the notebooks run in (default: the repository root)")
    parser.add_argument("--out", default=str(TUTORIALS), help="where the executed .ipynb go (default: docs/tutorials)")
    args = parser.parse_args(argv)
    from nbclient.exceptions import CellExecutionError

    cwd, out = Path(args.cwd).resolve(), Path(args.out)
    prepare(cwd)
    timings = {}
    for source in sources(args.names):
        print(f"executing {source.relative_to(REPO)} ...", flush=True)
        try:
            timings[source.stem] = execute(source, out / f"{source.stem}.ipynb", cwd)
        except CellExecutionError as err:
            print(f"error: {source.relative_to(REPO)}: a cell failed:\n{str(err)[-3000:]}", file=sys.stderr)
            return 1
        print(f"  {source.stem}: {timings[source.stem]:.0f} s", flush=True)
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
