"""``nailseg tune``: a real Optuna study over real ``nailseg train`` children, continued by re-running."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_TRAIN, run_cli

pytest.importorskip("optuna")
DEMO = str(REPO / "configs" / "demo-cpu.yaml")
SPACE = "optim.lr: {type: float, low: 0.0005, high: 0.01, log: true}\ntrainer.batch_size: {type: categorical, choices: [4, 8]}\n"


@pytest.mark.slow
def test_a_study_runs_writes_the_best_config_and_continues(synth_data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "tune"
    args = ["tune", DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=2", "--space", str(space),
            "--out", str(out), "--no-prune"]
    proc = run_cli(*args, "--trials", "2", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = json.loads((out / "best.json").read_text())
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    values = [float(r["value"]) for r in rows]
    assert best["best_value"] == max(values) and best["best_trial"] == values.index(max(values))
    for r in rows:  # each trial's score is its own run's validation IoU, read back from its summary
        summary = json.loads((out / "trials" / f"trial{int(r['number']):03d}" / "summary.json").read_text())
        assert float(r["value"]) == pytest.approx(summary["val_iou"])
        assert 0.0005 <= float(r["optim.lr"]) <= 0.01 and r["trainer.batch_size"] in ("4", "8")
    from nailseg.config import load_experiment

    exp = load_experiment(out / "best.yaml")  # a complete config that nailseg train takes
    assert exp.optim.lr == pytest.approx(best["best_params"]["optim.lr"]) and exp.trainer.max_epochs == 2
    assert (out / "history.png").stat().st_size > 1000 and (out / "study.db").is_file()
    again = run_cli(*args, "--trials", "3", timeout=900)  # the same command continues the same study
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 3 trials done" in again.stdout
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 3
    best = json.loads((out / "best.json").read_text())
    retrained = run_cli("train", str(out / "best.yaml"), f"run.dir={tmp_path / 'again'}", "run.name=best", timeout=600)
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    import yaml

    # best.yaml is the best trial's whole experiment: retrained (same seed, same threads), it scores
    # what the trial recorded, and its config is the trial's, key for key
    rescored = json.loads((tmp_path / "again" / "best" / "summary.json").read_text())["val_iou"]
    assert rescored == pytest.approx(best["best_value"], abs=1e-4), (rescored, best)
    trained = yaml.safe_load((tmp_path / "again" / "best" / "config.yaml").read_text())
    trial = yaml.safe_load((out / "trials" / f"trial{best['best_trial']:03d}" / "config.yaml").read_text())
    for tree in (trained, trial):
        tree.pop("run")
    assert trained == trial


@pytest.mark.parametrize("space,fragment", [
    ("optim.lr: {type: float, low: 0.1, high: 0.01}", "optim.lr: needs numbers low < high"),
    ("optim.lr: {type: uniform, low: 0.1, high: 0.2}", "optim.lr: type must be one of float, int, categorical"),
    ("optim.lrr: {type: float, low: 0.001, high: 0.01}", "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("trainer.batch_size: {type: categorical, choices: [4, -1]}", "--space trainer.batch_size=-1"),
    ("optim.lr: {type: float, low: 0, high: 0.01, log: true}", "log scale needs low > 0"),
])
def test_a_bad_space_is_one_line_naming_the_key_and_nothing_runs(synth_data, tmp_path, space, fragment):
    path = tmp_path / "space.yaml"
    path.write_text(space + "\n")
    out = tmp_path / "tune"
    proc = run_cli("tune", DEMO, f"data.root={synth_data}", "--space", str(path), "--trials", "1", "--out", str(out))
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_a_trial_is_pruned_and_its_training_child_stopped(synth_data, tmp_path):
    """The pruner's answer stops the child: the report callback says prune after the first epoch."""
    from nailseg.workflows.tune import _train_and_report

    run = tmp_path / "runs" / "pruned"
    seen = []
    code = _train_and_report([DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=30",
                              f"run.dir={tmp_path / 'runs'}", "run.name=pruned"], run, tmp_path / "pruned.log",
                             lambda score, epoch: seen.append((epoch, score)) or True)
    assert code == -1 and seen[0][0] == 0
    assert not (run / "summary.json").exists()  # stopped long before its 30 epochs
    assert len(Path(run / "metrics.jsonl").read_text().splitlines()) < 30


@pytest.mark.slow
def test_a_study_with_two_jobs_killed_and_continued_ends_with_its_trials(synth_data, tmp_path):
    """``--jobs 2``: two trials train at once, each on half the cores with one data worker. SIGTERM
    stops both children with the study (nothing trains on alone); the same command continues the
    study to exactly its 2 finished trials, the killed ones kept as failed but not counted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "tune"
    flags = ["--space", str(space), "--out", str(out), "--no-prune", "--trials", "2", "--jobs", "2"]
    args = ["tune", DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=2", *flags]
    long_trials = ["tune", DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=40", *flags]
    first = subprocess.Popen([sys.executable, "-m", "nailseg.cli", *long_trials],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def trainers(parent: int | None = None) -> list[int]:
        """Processes training a trial (its data workers too), or only those started by ``parent``."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                text = (proc / "cmdline").read_bytes().decode(errors="replace")
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if f"run.dir={out / 'trials'}" in text and parent in (None, ppid):
                found.append(int(proc.name))
        return found

    deadline = time.monotonic() + 300
    while len(list(out.glob("trials/*/metrics.jsonl"))) < 2 and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()[1][-2000:]
        time.sleep(0.5)
    assert len(trainers(parent=first.pid)) == 2, "two trials should train at once"
    for config in out.glob("trials/*/config.yaml"):  # each child on one data worker
        assert "num_workers: 1" in config.read_text()
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=90)
    assert first.returncode != 0
    time.sleep(1)
    assert trainers() == [], "a trial's training outlived the killed study"

    again = run_cli(*args, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 of 2 trials done" in again.stdout and "failed, not counted" in again.stdout
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert sum(r["state"] == "COMPLETE" for r in rows) == 2 and sum(r["state"] == "FAIL" for r in rows) == 2, rows
    best = json.loads((out / "best.json").read_text())
    assert best["best_value"] == max(float(r["value"]) for r in rows if r["state"] == "COMPLETE")


@pytest.mark.parametrize("url,fragment", [
    ("postgresql://user:secret@db.invalid:5432/study", "no database driver for postgresql is installed here"),
    ("sqlite:////no/such/folder/study.db", "cannot open the study storage"),
    ("not-a-url", "cannot open the study storage"),
])
def test_a_storage_that_cannot_be_opened_is_one_line_and_nothing_is_written(synth_data, tmp_path, url, fragment):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "tune"
    proc = run_cli("tune", DEMO, f"data.root={synth_data}", "--space", str(space), "--trials", "1",
                   "--storage", url, "--out", str(out))
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "secret" not in proc.stderr  # the password stays hidden
    assert not out.exists()


def test_overrides_may_follow_the_flags(synth_data, tmp_path):
    """``nailseg tune CONFIG --space S --out O optim.lrr=1``: the override after the flags is read
    (here refused by name), not rejected as an unknown argument."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    proc = run_cli("tune", DEMO, "--space", str(space), "--trials", "1", "--out", str(tmp_path / "t"),
                   f"data.root={synth_data}", "optim.lrr=1")
    assert proc.returncode == 2 and "optim.lrr" in proc.stderr and "unrecognized" not in proc.stderr, proc.stderr
    bad = run_cli("tune", DEMO, "--space", str(space), "--trials", "1", "--out", str(tmp_path / "t"), "--bogus")
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr
