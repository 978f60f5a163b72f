"""``nailseg.forked_cli``: a script or the CLI in a fork of a warm interpreter behaves as a fresh
interpreter would, and a process it leaves behind never holds the caller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from nailseg.forked_cli import READ_GRACE_S, run_forked

PROBE = """\
import json, os, sys, warnings
if __name__ == "__main__":
    print(json.dumps({"path": sys.path, "argv": sys.argv, "file": __file__, "cwd": os.getcwd(),
                      "filters": len(warnings.filters), "warnings_env": os.environ.get("PYTHONWARNINGS")}))
    print("to stderr", file=sys.stderr)
    raise SystemExit(int(sys.argv[-1]))
"""


def test_a_script_sees_what_a_fresh_interpreter_gives_it(tmp_path):
    """Its module path (its own folder first, then the interpreter's: none of the caller's entries),
    argv, absolute __file__, folder, warning filters and exit code, and both streams."""
    (tmp_path / "ejected").mkdir()
    (tmp_path / "ejected" / "probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    fresh = subprocess.run([sys.executable, "ejected/probe.py", "--out", "x", "3"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    forked = run_forked(["--out", "x", "3"], script="ejected/probe.py", cwd=tmp_path, env=env, kind="torch")
    assert fresh.returncode == forked.returncode == 3
    assert json.loads(forked.stdout) == json.loads(fresh.stdout)
    assert forked.stderr == fresh.stderr == "to stderr\n"
    assert ("err", "to stderr") in forked.lines


def test_the_cli_runs_as_python_dash_m_with_the_working_folder_first(tmp_path):
    forked = run_forked(["data", "check", "missing"], cwd=tmp_path, kind="torch")
    fresh = subprocess.run([sys.executable, "-m", "nailseg.cli", "data", "check", "missing"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert forked.returncode == fresh.returncode == 2
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == \
        "error: missing: data folder does not exist"


def test_a_process_left_behind_holding_the_output_does_not_hold_the_caller(tmp_path):
    """A command that starts a process which outlives it (submitit's local controller does), with
    the command's stdout: the caller gets the result once the command has exited, not when the
    process left behind does."""
    script = tmp_path / "leaves_one_behind.py"
    script.write_text("import subprocess, sys\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                      "print(child.pid, flush=True)\n")
    started = time.monotonic()
    done = run_forked([], script=str(script), kind="torch", timeout=60)
    took = time.monotonic() - started
    left = int(done.stdout.split()[0])
    try:
        assert done.returncode == 0
        assert took < READ_GRACE_S + 15, took  # not the 120 s the process left behind sleeps
    finally:
        os.kill(left, signal.SIGKILL)
