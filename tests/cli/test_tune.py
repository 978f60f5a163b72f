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
