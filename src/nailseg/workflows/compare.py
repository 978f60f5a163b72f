"""Comparing training recipes: the same data, the same split (or folds), the same evaluation.

Framework-free: each training and evaluation runs in its own ``nailseg`` process (torch and
TensorFlow never share one), and this module reads back what they wrote (``summary.json``,
``eval.json``, ``metrics.jsonl``) into one table, plots and a report.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nailseg.core.io import read_jsonl, write_text
from nailseg.errors import ConfigError
from nailseg.workflows.compare_report import write_outputs
from nailseg.workflows.reuse import finished_run

if TYPE_CHECKING:
    from nailseg.workflows.cluster import ClusterSettings

ROW_KEYS = ("config", "stack", "family", "arch", "encoder", "params", "iou", "dice", "precision", "recall",
            "images_per_s", "wall_time_s", "peak_memory_mb", "epochs", "device", "pipeline")


@dataclass
class Job:
    config: str            # the config file (or a run folder with --runs)
    name: str              # its label in the table
    fold: int | None = None


def _nailseg(*args: str, log: Path | None = None, echo: Callable[[str], None] | None = None,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one ``nailseg`` child; with ``echo``, pass on its progress lines (one per epoch: the
    child's stderr is not a terminal, so it prints plain lines) while it runs."""
    import threading

    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("NAILSEG_RUN_DIR", None)
    child = subprocess.Popen([sys.executable, "-m", "nailseg.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    LIVE.add(child)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(child.stdout.read()), daemon=True)
    reader.start()
    err: list[str] = []
    try:
        for line in child.stderr:
            err.append(line)
            if echo is not None and line.startswith(PROGRESS_PREFIXES):
                echo("  " + line.rstrip())
        child.wait()
    except BaseException:  # Ctrl-C, or SIGTERM (see cli/compare.py): the training stops with compare
        _stop(child)
        raise
    finally:
        LIVE.discard(child)
    reader.join()
    proc = subprocess.CompletedProcess(child.args, child.returncode, "".join(out), "".join(err))
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        write_text(log, f"$ nailseg {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    return proc


PROGRESS_PREFIXES = ("epoch ", "pretraining on ")
LIVE: set[subprocess.Popen] = set()  # the training children running now (several with --jobs)


def _stop_live() -> None:
    for child in list(LIVE):
        _stop(child)


def _stop(child: subprocess.Popen, grace_s: float = 20.0) -> None:
    """End a training child: SIGTERM first (its checkpoint writes are atomic, so ``train --resume``
    continues it later), SIGKILL if it has not gone after ``grace_s``."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def eta_text(durations: dict[str, list[float]], remaining: list[str]) -> str:
    """The time left, from each config's own finished jobs; empty while a config still to run has
    none (another config's pace says nothing about it: the running job's epoch lines carry its ETA)."""
    if not remaining or any(not durations.get(name) for name in remaining):
        return ""
    left = sum(sum(durations[name]) / len(durations[name]) for name in remaining)
    return f", ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"


def _error_of(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    return (errors or lines or [f"exit code {proc.returncode}"])[-1][:300]


def unique_names(configs: list[str]) -> list[str]:
    names, seen = [], {}
    for c in configs:
        stem = Path(c).stem if Path(c).suffix in (".yaml", ".yml") else Path(c).name
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def eval_split_of(run: Path) -> str:
    split = _json_object(run / "split.json")
    return "test" if split.get("test") else "val"


def _json_object(path: Path) -> dict:
    """A run file that must hold a JSON object; one line naming it otherwise."""
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: missing or not a regular file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as err:
        raise ConfigError(f"{path}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds a {type(data).__name__}, not a JSON object")
    return data


def row_from_run(run: Path, name: str, *, checkpoint: str, overlays: bool, eval_dir: Path | None = None) -> dict:
    """Evaluate a finished run (in its own process) and read its row back. What the evaluation
    writes goes to ``eval_dir`` (default: the run folder, for runs compare trained itself); the
    runs of ``compare --runs`` are only read."""
    split = eval_split_of(run)
    eval_dir = eval_dir or run
    args = ["eval", str(run), "--split", split, "--checkpoint", checkpoint, "--quiet",
            "--out", str(eval_dir / "compare-eval.json")]
    if overlays:
        args += ["--overlays", str(eval_dir / "overlays")]
    proc = _nailseg(*args, log=eval_dir / "compare-eval.log")
    if proc.returncode != 0:
        raise ConfigError(f"{run}: evaluation failed: {_error_of(proc)}")
    ev = _json_object(eval_dir / "compare-eval.json")
    summary = _json_object(run / "summary.json")
    row = {
        "config": name, "run": str(run), "stack": summary.get("stack", summary.get("backend")),
        "family": summary.get("family"), "arch": summary.get("arch"), "encoder": summary.get("encoder"),
        "params": summary.get("parameters"), "iou": ev["iou"], "dice": ev["dice"], "precision": ev["precision"],
        "recall": ev["recall"], "images_per_s": summary.get("train_images_per_s"),
        "wall_time_s": summary.get("wall_time_s"), "peak_memory_mb": summary.get("peak_memory_mb"),
        "epochs": summary.get("epochs"), "device": summary.get("device"), "pipeline": summary.get("pipeline"),
        "eval_split": split, "checkpoint": checkpoint, "n_images": ev["n_images"],
        "per_image": [{"key": r["key"], "iou": r["iou"]} for r in ev["per_image"]],
        "curve": [r.get("val_iou") for r in read_jsonl(run / "metrics.jsonl")],
    }
    if "segm_mAP" in ev:
        row["segm_mAP"] = ev["segm_mAP"]
    if "per_class_iou" in ev:  # many classes: "iou" is the mIoU; each class's IoU too
        row["per_class_iou"] = ev["per_class_iou"]
    return row


def aggregate_folds(rows: list[dict]) -> dict:
    """One row from the rows of each fold: means, plus ``iou_mean``, ``iou_sd`` and per-fold IoUs."""
    ok = [r for r in rows if "error" not in r]
    base = dict(ok[0]) if ok else dict(rows[0])
    if not ok:
        return base
    for key in ("iou", "dice", "precision", "recall", "images_per_s", "wall_time_s", "peak_memory_mb", "segm_mAP"):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            base[key] = statistics.fmean(values)
    ious = [r["iou"] for r in ok]
    base.update(iou_mean=statistics.fmean(ious), iou_sd=statistics.stdev(ious) if len(ious) > 1 else 0.0,
                folds=len(rows), fold_ious=[r.get("iou") for r in rows],
                fold_errors=[r["error"] for r in rows if "error" in r],
                wall_time_s=sum(r.get("wall_time_s") or 0 for r in ok),
                per_image=[p for r in ok for p in r["per_image"]],
                curve=_mean_curve([r["curve"] for r in ok]), runs=[r["run"] for r in ok])
    if "per_class_iou" in base:  # each class's mean over the folds where it was present (None: in none)
        folds_of = {name: [r["per_class_iou"][name] for r in ok if r["per_class_iou"].get(name) is not None]
                    for name in base["per_class_iou"]}
        base["per_class_iou"] = {name: statistics.fmean(v) if v else None for name, v in folds_of.items()}
    base.pop("run", None)
    return base


def _mean_curve(curves: list[list]) -> list:
    length = max((len(c) for c in curves), default=0)
    out = []
    for i in range(length):
        values = [c[i] for c in curves if i < len(c) and c[i] is not None]
        out.append(statistics.fmean(values) if values else None)
    return out


def run_compare(configs: list[str], overrides: list[str], out: Path, *, folds: int | None, seed: int,
                checkpoint: str, say: Callable[[str], None] = print, jobs: int = 1,
                cluster: ClusterSettings | None = None) -> list[dict]:
    """Train every config on the same data and split (or the same ``folds``), each in its own
    process, evaluate each the same way, and write ``compare.json``, the plots and ``report.md``.
    ``jobs``: trainings at once, the cores split between them (``workflows/parallel.py``).
    ``cluster``: the trainings go to submitit instead, all at once (``workflows/cluster.py``)."""
    from nailseg.workflows.parallel import job_env, job_overrides, run_jobs

    from nailseg.config import load_experiment

    exps, refused = [], []
    for c in configs:  # validate every config first: a typo fails in seconds, not after an hour of the others
        try:
            exps.append(load_experiment(c, overrides))
        except ConfigError as err:
            refused.append(err.lines[0] if err.lines[0].startswith(str(c)) else f"{c}: {err.lines[0]}")
    if refused:  # nothing trained, nothing written: fix the config (or leave it out) and run again
        raise ConfigError(refused)
    names = unique_names(configs)
    first = exps[0]
    split = first.data.split
    shared = [f"data.seed={first.data.seed}"]
    if folds:
        shared += [f"data.split.folds={folds}"]
    else:
        shared += [f"data.split.val={split.val}", f"data.split.test={split.test}", "data.split.folds=null"]
    jobs_list = [Job(c, n, k) for c, n in zip(configs, names) for k in (range(folds) if folds else [None])]
    runs_dir = out / "runs"
    rows_by_config: dict[str, list[dict]] = {n: [] for n in names}
    durations: dict[str, list[float]] = {n: [] for n in names}

    def run_name_of(job: Job) -> str:
        return job.name + (f"-fold{job.fold}" if folds else "")

    def train_args_of(job: Job) -> list[str]:
        fold_args = [f"data.split.fold={job.fold}"] if folds else []
        return [job.config, *overrides, *shared, *fold_args, *job_overrides(jobs), f"run.dir={runs_dir}",
                f"run.name={run_name_of(job)}"]

    submitted: dict = {}
    if cluster is not None:  # every training at once: one SLURM array, waited on below in order
        from nailseg.workflows.cluster import submit_trainings

        pending = {run_name_of(j): (train_args_of(j), runs_dir / run_name_of(j), {}) for j in jobs_list
                   if not finished_run(runs_dir / run_name_of(j), j.config, train_args_of(j)[1:-2])}
        if pending:
            submitted = submit_trainings(cluster, pending)
            say(f"submitted {len(submitted)} training{'s' * (len(submitted) != 1)} to submitit ({cluster.executor}), "
                f"logs in {cluster.folder}")

    def one(numbered: tuple[int, Job]) -> tuple[Job, dict]:
        i, job = numbered
        exp = exps[configs.index(job.config)]
        label = job.name + (f" fold {job.fold + 1}/{folds}" if folds else "")
        trainable = [j.name for j in jobs_list[i:]]
        say(f"[{i + 1}/{len(jobs_list)}] {label}{eta_text(durations, trainable) if jobs == 1 else ''}")
        started = time.monotonic()
        run_name = run_name_of(job)
        if run_name in submitted:
            from nailseg.workflows.cluster import wait_training

            proc = wait_training(submitted[run_name], runs_dir / f"{run_name}.log")
        elif finished_run(runs_dir / run_name, job.config, train_args_of(job)[1:-2]):
            say(f"  {runs_dir / run_name}: finished by an earlier compare with this experiment; scored again")
            proc = subprocess.CompletedProcess([], 0)
        else:
            # with several jobs their epoch lines would interleave: each job's log has them
            proc = _nailseg("train", *train_args_of(job), log=runs_dir / f"{run_name}.log",
                            echo=say if jobs == 1 else None, env_extra=job_env(jobs))
            durations[job.name].append(time.monotonic() - started)
        if proc.returncode != 0:
            say(f"  {label} failed: {_error_of(proc)}")
            return job, {"config": job.name, "stack": exp.stack, "error": _error_of(proc)}
        try:
            row = row_from_run(runs_dir / run_name, job.name, checkpoint=checkpoint, overlays=True)
        except ConfigError as err:
            say(f"  {label} failed: {err.lines[0]}")
            return job, {"config": job.name, "stack": exp.stack, "error": err.lines[0]}
        say(f"  {label}: IoU {row['iou']:.4f}  Dice {row['dice']:.4f}  ({row['wall_time_s']:.0f} s)")
        return job, row

    try:
        done = run_jobs(one, enumerate(jobs_list), 1 if submitted else jobs, on_abort=_stop_live)
    except BaseException:  # Ctrl-C or SIGTERM: no submitted training runs on alone
        if submitted:
            from nailseg.workflows.cluster import cancel

            cancel(submitted)
        raise
    for job, row in done:
        rows_by_config[job.name].append(row)
    rows = [aggregate_folds(r) if folds else r[0] for r in rows_by_config.values()]
    write_outputs(rows, out, title=f"{len(configs)} config{'s' * (len(configs) != 1)} on {first.data.root}"
                  + (f", {folds}-fold CV" if folds else f", split val {split.val} / test {split.test}"),
                  command=_command(configs, overrides, out, folds))
    return rows


def collect_runs(runs: list[str], out: Path, *, checkpoint: str, say: Callable[[str], None] = print) -> list[dict]:
    """Rows from finished runs, without training; their splits must be identical."""
    paths = [Path(r) for r in runs]
    for p in paths:
        if not (p / "split.json").exists() or not (p / "summary.json").exists():
            raise ConfigError(f"{p}: not a finished run (needs split.json and summary.json)")
        _json_object(p / "summary.json")
    splits = {p: {k: v for k, v in _json_object(p / "split.json").items() if k in ("train", "val", "test")}
              for p in paths}
    reference = splits[paths[0]]
    differ = [str(p) for p in paths[1:] if splits[p] != reference]
    if differ:
        raise ConfigError(f"--runs: the split of {', '.join(differ)} differs from {paths[0]}'s; "
                          "compare runs trained on the same split")
    rows = []
    for i, (p, name) in enumerate(zip(paths, unique_names([str(p) for p in paths]))):
        say(f"[{i + 1}/{len(paths)}] {name}")
        rows.append(row_from_run(p, name, checkpoint=checkpoint, overlays=True, eval_dir=out / "runs" / name))
    write_outputs(rows, out, title=f"{len(paths)} run{'s' * (len(paths) != 1)} on one split", command="nailseg compare --runs "
                  + " ".join(runs) + f" --out {out}")
    return rows


def _command(configs, overrides, out, folds) -> str:
    return " ".join(["nailseg compare", *configs, *overrides, f"--out {out}"] + ([f"--folds {folds}"] if folds else []))
