"""compare --executor: trainings as submitit jobs, through submitit's local executor (the code path
SLURM takes), and a preempted task that requeues and continues its run from last.ckpt."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_TRAIN, run_cli

pytest.importorskip("submitit")
DEMO = str(REPO / "configs" / "demo-cpu.yaml")


@pytest.mark.slow
def test_compare_folds_as_submitit_jobs(synth_data, tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli("compare", DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=2",
                   "--folds", "2", "--executor", "local", "--time-min", "20", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted 2 trainings to submitit (local)" in proc.stdout
    row = json.loads((out / "compare.json").read_text())[0]
    assert row["folds"] == 2 and "error" not in row and len(row["fold_ious"]) == 2, row
    held_out = []
    for fold in (0, 1):  # each task trained its own fold, with the overrides compare gave it
        run = out / "runs" / f"demo-cpu-fold{fold}"
        assert json.loads((run / "summary.json").read_text())["epochs"] == 2
        held_out.append(set(json.loads((run / "split.json").read_text())["test"]))
        assert "# submitit job" in (out / "runs" / f"demo-cpu-fold{fold}.log").read_text()
    every = {p.name for p in (synth_data / "images").iterdir()}
    assert not (held_out[0] & held_out[1]) and held_out[0] | held_out[1] == every  # 2 folds cover the data once
    assert list((out / "submitit").glob("*_log.out")), "the tasks' logs stay in OUT/submitit"

    again = run_cli("compare", DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=2",
                    "--folds", "2", "--executor", "local", "--out", str(out), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "submitted" not in again.stdout and again.stdout.count("scored again") == 2  # nothing retrained


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="finds the task through /proc")
def test_a_preempted_task_requeues_and_resumes_from_last_ckpt(synth_data, tmp_path):
    """SLURM warns a task it is about to preempt or time out with a signal (``--signal``); here the
    test sends that signal itself once the first epoch is written, so the path is the same on a fast
    or a slow CPU (a time limit would race the training). The task kills its training, is requeued,
    and the requeued task continues the same run from last.ckpt to its last epoch."""
    from nailseg.workflows.cluster import ClusterSettings, submit_trainings, wait_training

    run = tmp_path / "runs" / "pre"
    args = [DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=6", f"run.dir={run.parent}",
            "run.name=pre", "logging.predictions=0"]
    settings = ClusterSettings("local", tmp_path / "submitit", time_min=30)
    job = submit_trainings(settings, {"pre": (args, run, {})})["pre"]
    deadline = time.monotonic() + 180
    while _epochs(run) < 1:  # the first attempt's first epoch, kept to compare with after the resume
        assert time.monotonic() < deadline and job.state not in ("FAILED", "DONE"), job.stderr()
        time.sleep(0.1)
    first_epoch = (run / "metrics.jsonl").read_text().splitlines()[0]
    os.kill(_task_of(f"run.dir={run.parent}"), signal.SIGUSR2)  # what SLURM sends before it preempts
    proc = wait_training(job, tmp_path / "pre.log")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "this job is preempted" in output and "Requeued job" in output  # stopped mid-run and requeued ...
    assert json.loads((run / "summary.json").read_text())["epochs"] == 6  # ... and the run still ended
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == first_epoch  # the same run continued (a restart would have written epoch 0 anew)
    epochs = [json.loads(line)["epoch"] for line in lines if '"val_iou"' in line]
    assert sorted(epochs) == list(range(6)), epochs  # every epoch once


def _task_of(marker: str) -> int:
    """The submitit task whose ``nailseg train`` child has ``marker`` on its command line."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"nailseg.cli" in cmdline and marker.encode() in cmdline:
                status = (proc / "status").read_text()
                return int(status.split("PPid:")[1].split()[0])
        except (OSError, ValueError):  # a process that ended meanwhile, or not ours to read
            continue
    raise AssertionError(f"no training process with {marker}")


def _epochs(run) -> int:
    metrics = run / "metrics.jsonl"
    return metrics.read_text().count('"val_iou"') if metrics.is_file() else 0


def test_cluster_flags_are_checked_before_anything_runs(tmp_path):
    lone = run_cli("compare", DEMO, "--out", str(tmp_path / "a"), "--partition", "gpu")
    assert lone.returncode == 2 and "--partition: only with --executor" in lone.stderr
    both = run_cli("compare", DEMO, "--out", str(tmp_path / "b"), "--executor", "local", "--jobs", "2")
    assert both.returncode == 2 and "--jobs: not with --executor" in both.stderr
    bad = run_cli("compare", DEMO, "--out", str(tmp_path / "c"), "--executor", "slurm", "--time-min", "0")
    assert bad.returncode == 2 and "--time-min 0: must be at least 1" in bad.stderr
    no_slurm = run_cli("compare", DEMO, "--out", str(tmp_path / "d"), "--executor", "slurm",
                       env={"PATH": os.path.dirname(sys.executable)})  # no sbatch/srun on this PATH
    assert no_slurm.returncode == 2 and "--executor slurm: sbatch and srun not found" in no_slurm.stderr
    assert not (tmp_path / "d").exists()
    for proc in (lone, both, bad, no_slurm):
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "c" / "submitit").exists()


@pytest.mark.slow
def test_a_study_shared_by_submitit_workers(synth_data, tmp_path):
    """tune --executor local --tasks 2: two study workers (submitit tasks) share the missing trials of
    one SQLite study, each with its own sampler seed; the study ends with exactly --trials finished
    trials, each trained once, and the outputs come from the whole study."""
    import csv

    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {type: float, low: 0.0005, high: 0.01, log: true}\n")
    out = tmp_path / "tune"
    proc = run_cli("tune", DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=1", "logging.predictions=0",
                   "--space", str(space), "--trials", "3", "--no-prune", "--executor", "local", "--tasks", "2",
                   "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted 2 workers to submitit (local) with 2, 1 trials" in proc.stdout, proc.stdout
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 and len({r["optim.lr"] for r in rows}) == 3
    assert sorted(p.name for p in (out / "trials").glob("trial*") if p.is_dir()) == ["trial000", "trial001", "trial002"]
    logs = [(out / "submitit" / f"worker{k}.log").read_text() for k in (0, 1)]
    assert all("trial " in log for log in logs), "each worker trained a trial"
    assert json.loads((out / "best.json").read_text())["trials"] == 3
    again = run_cli("tune", DEMO, f"data.root={synth_data}", *TINY_TRAIN, "trainer.max_epochs=1", "logging.predictions=0",
                    "--space", str(space), "--trials", "3", "--no-prune", "--executor", "local", "--out", str(out))
    assert again.returncode == 0 and "submitted" not in again.stdout  # the study is complete: nothing to submit


def test_tune_cluster_flags_are_checked_before_anything_runs(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {type: float, low: 0.001, high: 0.01}\n")
    base = ["tune", DEMO, "--space", str(space), "--trials", "2"]
    lone = run_cli(*base, "--out", str(tmp_path / "a"), "--tasks", "2")
    assert lone.returncode == 2 and "--tasks 2: only with --executor" in lone.stderr
    both = run_cli(*base, "--out", str(tmp_path / "b"), "--executor", "local", "--jobs", "2")
    assert both.returncode == 2 and "--jobs: not with --executor" in both.stderr
    for proc in (lone, both):
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
