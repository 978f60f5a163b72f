"""Every command in the tutorials runs, in order, in a fresh folder."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

TUTORIALS = sorted((REPO / "docs" / "tutorials").glob("*.md"))
# Commands documented as failing, with the exit code the tutorial promises.
EXPECTED_FAILURES = {"trainer.max_epoch=2": 2}


def commands(markdown: Path) -> list[list[str]]:
    blocks = re.findall(r"```console\n(.*?)```", markdown.read_text(), flags=re.S)
    return [shlex.split(line[2:]) for block in blocks for line in block.splitlines() if line.startswith("$ ")]


@pytest.mark.slow
@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_commands_run(tutorial, tmp_path):
    cmds = commands(tutorial)
    assert cmds, f"{tutorial.name} has no console commands"
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    for argv in cmds:
        assert argv[0] == "nailseg", argv
        proc = run_cli(*argv[1:], cwd=tmp_path)
        expected = next((code for key, code in EXPECTED_FAILURES.items() if key in argv), 0)
        assert proc.returncode == expected, f"{' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
