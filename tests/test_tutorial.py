"""The notebooks' shared helpers (``nailseg.tutorial``): the training budget switch, ``record`` and ``sh``."""

from __future__ import annotations

import pytest

from nailseg.tutorial import BUDGET_ENV, budget


def test_budget_is_the_published_one_unless_the_test_budget_is_asked_for(monkeypatch, capsys):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert budget(full=12, test=5) == 12
    assert capsys.readouterr().out == "training budget: 12 epochs\n"
    monkeypatch.setenv(BUDGET_ENV, "Test")
    assert budget(full=12, test=5) == 5
    assert "the published notebook trains 12" in capsys.readouterr().out
    monkeypatch.setenv(BUDGET_ENV, "full")
    assert budget(full=12, test=5) == 12


def test_an_unknown_budget_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "quick")
    with pytest.raises(ValueError, match=f"{BUDGET_ENV}='quick': use one of full, test"):
        budget(full=12, test=5)


def test_record_keeps_each_figure_for_the_floors(tmp_path, monkeypatch, capsys):
    import json

    from nailseg.tutorial import RESULT_FILE, record

    monkeypatch.chdir(tmp_path)
    record(val_iou=0.4123)
    record(test_iou=0.25, val_iou=0.5)  # a later call adds, and replaces a figure it names again
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == {"val_iou": 0.5, "test_iou": 0.25}
    assert "notebook result: val_iou 0.412" in capsys.readouterr().out


def test_sh_shows_both_streams_in_the_order_written_and_returns_the_last_stdout_line(tmp_path, capsys):
    """As a terminal shows a command: the epoch lines (stderr) before the summary and the run folder
    (stdout), colour codes removed; the return value is stdout's last line whatever stderr wrote after."""
    import shlex
    import sys

    from nailseg.tutorial import sh

    code = ("import sys, time\n"
            "for i in range(3):\n"
            "    print(f'epoch {i}', file=sys.stderr); time.sleep(0.05)\n"
            "print('val IoU 0.5'); time.sleep(0.05)\n"
            "print('runs/x'); time.sleep(0.05)\n"
            "print('\\x1b[4m\\x1b[97mINFO\\x1b[0m done', file=sys.stderr)\n")
    script = tmp_path / "command.py"
    script.write_text(code)
    assert sh(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}") == "runs/x"
    shown = capsys.readouterr().out.splitlines()[1:]  # after the "$ command" line
    assert shown == ["epoch 0", "epoch 1", "epoch 2", "val IoU 0.5", "runs/x", "INFO done"]
    with pytest.raises(RuntimeError, match="exited with 3"):
        sh(f"{shlex.quote(sys.executable)} -c 'raise SystemExit(3)'")


def test_sh_in_a_fork_of_a_warm_interpreter_shows_what_a_fresh_one_does(tmp_path, monkeypatch, capsys):
    """``NAILSEG_TUTORIAL_FORK`` (what the test suite sets) changes where a `nailseg` line runs, never
    what the notebook shows: the same lines, the same returned line, the same refusals."""
    from nailseg.tutorial import FORK_ENV, sh

    shown = {}
    for side, fork in (("fresh", None), ("forked", "torch")):
        if fork:
            monkeypatch.setenv(FORK_ENV, fork)
        else:
            monkeypatch.delenv(FORK_ENV, raising=False)
        (tmp_path / side).mkdir()
        monkeypatch.chdir(tmp_path / side)
        last = sh("nailseg data synth synth --n 2 --size 64x48")
        assert (tmp_path / side / "synth" / "labels").is_dir() and last
        sh("nailseg data check no-such-folder", expect=2)
        with pytest.raises(RuntimeError, match="exited with 2"):
            sh("nailseg data check no-such-folder")
        # a plain script (an ejected train.py): run as __main__ in its folder, its own folder importable
        folder = tmp_path / side / "ejected"
        folder.mkdir()
        (folder / "helper.py").write_text("ANSWER = 42\n")
        (folder / "train.py").write_text(
            "import os, sys, warnings\nfrom pathlib import Path\nimport helper\n"
            "if __name__ == '__main__':\n"
            "    warnings.warn('a noisy library')\n"
            "    print(sys.argv[1:], helper.ANSWER, os.environ['TUTORIAL_TEST'], Path.cwd().name)\n"
            "    print('done', file=sys.stderr)\n"
            "    raise SystemExit(int(sys.argv[-1]))\n")
        quiet = {"TUTORIAL_TEST": side, "PYTHONWARNINGS": "ignore"}  # read at start by a fresh interpreter
        assert sh("python train.py --out x 0", cwd=folder, env=quiet) == \
            f"['--out', 'x', '0'] 42 {side} ejected"
        sh("python ejected/train.py 3", env={"TUTORIAL_TEST": side}, expect=3)
        shown[side] = [line for line in capsys.readouterr().out.splitlines() if "it/s" not in line]
    # the same lines; lines of the two streams written within the same instant may come in either
    # order, from a fork as from a fresh process (two pipes, two readers)
    assert sorted(shown["forked"]) == sorted(x.replace("fresh", "forked") for x in shown["fresh"])
    assert len(shown["fresh"]) >= 14
    assert sum("UserWarning: a noisy library" in line for line in shown["forked"]) == 1  # the second script
    assert "error: no-such-folder: data folder does not exist" in shown["forked"]
