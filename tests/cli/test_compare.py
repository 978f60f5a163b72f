"""nailseg compare end to end: a Lightning config and a Keras config on the same folds, then --runs."""

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

TINY = ["data.image_size=64", "trainer.batch_size=4", "trainer.max_epochs=1", "logging.predictions=1",
        "logging.tensorboard=false", "data.num_workers=0"]


@pytest.mark.slow
def test_compare_two_stacks_with_folds_then_runs(synth_data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("segmentation_models") is None:  # never import TensorFlow into this process
        pytest.skip("the Keras stack (nailseg[tf]) is not installed")
    lightning = REPO / "configs" / "demo-cpu.yaml"
    keras = REPO / "configs" / "keras-cpu.yaml"
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {family: smp, arch: NoSuchArch}\n")
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(lightning), str(keras), str(broken), f"data.root={synth_data}",
                   "model.encoder=resnet18", *TINY, "--folds", "2", "--out", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/6]" in proc.stdout and "fold 2/2" in proc.stdout
    lines = proc.stdout.splitlines()
    # the ETA comes from each config's own folds: none while a config still to run has no finished fold
    assert not any("ETA" in x for x in lines if x.startswith(("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]")))
    assert any(x.startswith("[6/6] broken fold 2/2, ETA 0:") for x in lines)
    assert any(x.startswith("  epoch 1/1  train_loss") for x in lines)  # the children's epochs, streamed
    rows = json.loads((out / "compare.json").read_text())
    assert [r["config"] for r in rows] == ["demo-cpu", "keras-cpu", "broken"]
    assert "NoSuchArch" in rows[2]["error"]
    for row in rows[:2]:
        for key in ("config", "stack", "family", "arch", "encoder", "params", "iou", "dice", "precision", "recall",
                    "images_per_s", "wall_time_s", "peak_memory_mb", "epochs", "device", "pipeline",
                    "iou_mean", "iou_sd", "folds", "fold_ious"):
            assert key in row, (row["config"], key)
        assert row["folds"] == 2 and len(row["fold_ious"]) == 2
        assert abs(row["iou_mean"] - sum(row["fold_ious"]) / 2) < 1e-6  # the mean of its folds
    assert [r["stack"] for r in rows] == ["lightning", "keras", "lightning"]
    # the same folds for every config: each fold's held-out keys match across stacks
    runs = out / "runs"
    for k in (0, 1):
        splits = [json.loads((runs / f"{name}-fold{k}" / "split.json").read_text())["test"]
                  for name in ("demo-cpu", "keras-cpu")]
        assert splits[0] == splits[1]
    assert (runs / "demo-cpu-fold0" / "split.json").read_text() != (runs / "demo-cpu-fold1" / "split.json").read_text()
    for name in ("compare.png", "curves.png", "report.md"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| demo-cpu | lightning |" in report and "Worst five" in report and "overlays/" in report

    again = run_cli("compare", "--runs", str(runs / "demo-cpu-fold0"), str(runs / "keras-cpu-fold0"),
                    "--out", str(tmp_path / "cmp-runs"), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = json.loads((tmp_path / "cmp-runs" / "compare.json").read_text())
    assert [r["stack"] for r in rows] == ["lightning", "keras"] and all("iou" in r for r in rows)
    refused = run_cli("compare", "--runs", str(runs / "demo-cpu-fold0"), str(runs / "demo-cpu-fold1"),
                      "--out", str(tmp_path / "cmp-bad"))
    assert refused.returncode == 2 and "demo-cpu-fold1" in refused.stderr and "differs" in refused.stderr


def test_a_config_that_does_not_load_stops_the_comparison_before_anything_trains(synth_data, tmp_path):
    """One bad config among good ones: one line naming it and its key, exit 2, before the good one
    trains for nothing, and no report written (a training that fails is a row: the test above)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {max_epochs: 1}\nmodel: {family: smp, encoder: resnet18}\ndata: {image_size: 100}\n")
    missing = tmp_path / "missing.yaml"
    proc = run_cli("compare", str(REPO / "configs" / "demo-cpu.yaml"), str(bad), str(missing),
                   f"data.root={synth_data}", "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 2 and "bad.yaml" in errors[0] and "data.image_size" in errors[0], proc.stderr
    assert "missing.yaml" in errors[1] and "not found" in errors[1], proc.stderr
    assert "epoch" not in proc.stdout and not (tmp_path / "cmp").exists()


def test_compare_refuses_run_dir_and_names_the_key(synth_data, tmp_path):
    proc = run_cli("compare", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={synth_data}",
                   f"run.dir={tmp_path / 'elsewhere'}", "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 2 and "run.dir: compare places every run itself, under --out" in proc.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_eta_comes_from_each_configs_own_jobs():
    from nailseg.workflows.compare import eta_text

    assert eta_text({"a": [100.0, 140.0], "b": []}, ["a", "b"]) == ""  # b's pace is unknown
    assert eta_text({"a": [100.0, 140.0], "b": [30.0]}, ["a", "b", "b"]) == ", ETA 0:03:00"
    assert eta_text({"a": [10.0]}, []) == ""


def test_sigterm_stops_compare_and_its_training_child(synth_data, tmp_path):
    """`kill COMPARE_PID` (or a scheduler's timeout) must not leave the fold's training running alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "cmp"
    compare = subprocess.Popen(
        [sys.executable, "-m", "nailseg.cli", "compare", str(REPO / "configs" / "demo-cpu.yaml"),
         f"data.root={synth_data}", "model.encoder=resnet18", *TINY, "data.image_size=160", "trainer.max_epochs=200",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == compare.pid:
                found.append(int(stat.parent.name))
        return found

    metrics = out / "runs" / "demo-cpu" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
        assert compare.poll() is None, compare.communicate()[1][-2000:]
        time.sleep(0.5)
    trainers = children()
    assert trainers, "compare started no training child"
    compare.send_signal(signal.SIGTERM)
    compare.communicate(timeout=60)
    assert compare.returncode == 128 + signal.SIGTERM
    # compare waits for its child before it exits: gone now, not at the child's next write to a closed pipe
    assert not any(Path(f"/proc/{pid}").exists() for pid in trainers), "the training child outlived compare"


def test_a_finished_fold_is_reused_only_for_the_same_experiment(synth_data, tmp_path):
    """Re-running a killed compare continues: a fold whose run holds this exact experiment is scored
    again, not retrained; any other difference (here one epoch) trains it again."""
    from nailseg.config import load_experiment
    from nailseg.core.io import write_json, write_yaml
    from nailseg.workflows.reuse import finished_run

    config = str(REPO / "configs" / "demo-cpu.yaml")
    overrides = [f"data.root={synth_data}", "data.split.folds=2", "data.split.fold=1"]
    run = tmp_path / "runs" / "demo-cpu-fold1"
    run.mkdir(parents=True)
    saved = load_experiment(config, [*overrides, f"run.dir={tmp_path / 'runs'}", "run.name=demo-cpu-fold1"]).to_dict()
    saved["data"]["root"] = str(Path(synth_data).resolve())  # what the engine writes: the resolved path
    write_yaml(run / "config.yaml", saved)
    assert not finished_run(run, config, overrides)  # no summary.json: it never finished
    write_json(run / "summary.json", {"val_iou": 0.5})
    assert finished_run(run, config, overrides)
    assert not finished_run(run, config, [*overrides, "trainer.max_epochs=99"])
    assert not finished_run(run, config, [*overrides[:1], "data.split.folds=2", "data.split.fold=0"])


def test_jobs_split_the_cores_between_the_trainings(monkeypatch):
    from nailseg.errors import NailsegError
    from nailseg.workflows import parallel

    monkeypatch.setattr(parallel, "cores", lambda: 8)
    assert parallel.job_env(1) == {} and parallel.job_overrides(1) == []
    env = parallel.job_env(4)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "2"
    assert parallel.job_overrides(4) == ["data.num_workers=1"]
    with pytest.raises(NailsegError, match=r"--jobs 9: more trainings than the 8 cores"):
        parallel.check_jobs(9)
    with pytest.raises(NailsegError, match=r"--jobs 0"):
        parallel.check_jobs(0)
    assert parallel.run_jobs(lambda x: x * x, range(5), 3) == [0, 1, 4, 9, 16]  # in the items' order


@pytest.mark.slow
def test_many_class_folds_report_the_miou_and_each_class(class_data, tmp_path):
    """Many classes through compare, the two folds trained side by side (``--jobs 2``, each on its
    share of the cores with one data worker): each fold is scored by the class evaluation
    (iou = mIoU), and the row and report.md carry each class's IoU, the mean over the folds."""
    from tests.conftest import CLASS_NAMES

    out = tmp_path / "cmp"
    proc = run_cli("compare", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={class_data}",
                   "data.classes=classes.txt", "data.cache=none", "model.encoder=resnet18", *TINY,
                   "trainer.max_epochs=2", "--folds", "2", "--jobs", "2", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.loads((out / "compare.json").read_text())
    assert row["folds"] == 2 and not row["fold_errors"]
    for k in (0, 1):
        run = out / "runs" / f"demo-cpu-fold{k}"
        assert "num_workers: 1" in (run / "config.yaml").read_text()  # the job's share wins over TINY's 0
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
        assert "epoch 2/2" in (out / "runs" / f"demo-cpu-fold{k}.log").read_text()
    folds = [json.loads((Path(run) / "compare-eval.json").read_text()) for run in row["runs"]]
    assert row["iou"] == pytest.approx(sum(f["miou"] for f in folds) / 2, abs=1e-9)
    assert set(row["per_class_iou"]) == set(CLASS_NAMES)
    for name in CLASS_NAMES:
        present = [f["per_class_iou"][name] for f in folds if f["per_class_iou"][name] is not None]
        assert row["per_class_iou"][name] == pytest.approx(sum(present) / len(present), abs=1e-9)
    report = (out / "report.md").read_text()
    assert "| config | skin | nail | ring |" in report
    worst = min((p for f in folds for p in f["per_image"]), key=lambda p: p["iou"])
    assert f"`{worst['key']}` IoU {worst['iou']:.3f}" in report  # the worst images ranked by their mIoU
