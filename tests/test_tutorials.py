"""Every command in the tutorials runs, in order, in a fresh folder.

A command ending in ``&`` (``nailseg serve``) starts in the background and is awaited on its
``--port``; ``curl`` lines run as written against it; the background process stops at the end.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

TUTORIALS = sorted((REPO / "docs" / "tutorials").glob("*.md"))
# Commands documented as failing, with the exit code the tutorial promises.
EXPECTED_FAILURES = {"trainer.max_epoch=2": 2}


def commands(markdown: Path) -> list[list[str]]:
    blocks = re.findall(r"```console\n(.*?)```", markdown.read_text(), flags=re.S)
    return [shlex.split(line[2:]) for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def uses_tensorflow(markdown: Path) -> bool:
    return any("keras" in arg for argv in commands(markdown) for arg in argv)


# A TensorFlow tutorial runs in the TensorFlow tests' pytest process (marker tf), forked from its server.
@pytest.mark.slow
@pytest.mark.parametrize("tutorial", [pytest.param(t, id=t.stem, marks=[pytest.mark.tf] if uses_tensorflow(t) else [])
                                      for t in TUTORIALS])
def test_tutorial_commands_run(tutorial, tmp_path, monkeypatch):
    cmds = commands(tutorial)
    assert cmds, f"{tutorial.name} has no console commands"
    if uses_tensorflow(tutorial):
        import tests.conftest as shared

        monkeypatch.setattr(shared, "FORK_KIND", "tensorflow")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    if any(argv[0] == "curl" for argv in cmds) and not shutil.which("curl"):
        pytest.skip("curl is not installed")
    background = []
    try:
        for argv in cmds:
            assert argv[0] in ("nailseg", "curl"), argv
            if argv[-1] == "&":
                background.append(_start_in_background(argv[1:-1], tmp_path))
                continue
            if argv[0] == "curl":
                proc = subprocess.run([*argv[:1], "--fail-with-body", *argv[1:]], cwd=tmp_path, capture_output=True,
                                      text=True, timeout=120)
                assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
                continue
            proc = run_cli(*argv[1:], cwd=tmp_path)
            expected = next((code for key, code in EXPECTED_FAILURES.items() if key in argv), 0)
            assert proc.returncode == expected, f"{' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(timeout=20)


def _start_in_background(args: list[str], cwd: Path) -> subprocess.Popen:
    """``nailseg ARGS`` as a server, returned once its ``--port`` accepts connections."""
    import socket

    port = int(args[args.index("--port") + 1])
    proc = subprocess.Popen([sys.executable, "-m", "nailseg.cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, f"nailseg {' '.join(args)} exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"nailseg {' '.join(args)} did not listen on port {port} within 90 s")
