"""``nailseg tune``: a hyper-parameter search on Optuna over any config key.

Each trial is a ``nailseg train`` child (its own process, like ``compare``), so every stack is
tuned the same way. While a trial trains, its ``metrics.jsonl`` (one line per finished epoch,
written by every stack) is read back and each epoch's validation score goes to Optuna's pruner,
which may stop the child early. With ``--folds K`` a trial trains K folds and scores the mean of
their validation IoU (the validation part of each fold's training folds, never its held-out fold).

The study lives in Optuna's storage: a SQLite file in the output folder by default, so the same
command continues a killed study (Optuna's heartbeat marks the killed trial failed), or a
PostgreSQL/MySQL URL that many machines share (Optuna's own distributed mode).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nailseg.core.io import read_jsonl, write_json, write_text, write_yaml
from nailseg.errors import ConfigError

KINDS = ("float", "int", "categorical")
HEARTBEAT_S = 30  # a trial's process reports it is alive this often; a silent one is failed after 2x


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``float``/``int`` between ``low`` and ``high`` (``log`` scale, ``step``), or
    ``categorical`` among ``choices``."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)


def read_space(path: Path) -> list[Dimension]:
    """``SPACE.yaml``: ``{config.key: {type: float|int|categorical, low, high, log, step, choices}}``;
    every way it can be wrong is one ``ConfigError`` naming the file and the key."""
    from nailseg.config import read_config_file

    raw = read_config_file(path)
    if not raw:
        raise ConfigError(f"{path}: no keys to search (e.g. optim.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}})")
    dims, problems = [], []
    for key, spec in raw.items():
        where = f"{path}: {key}"
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a mapping with type: {' | '.join(KINDS)}")
            continue
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        kind = spec.get("type")
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        elif kind not in KINDS:
            problems.append(f"{where}: type must be one of {', '.join(KINDS)} (got {spec.get('type')!r})")
        elif kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                problems.append(f"{where}: categorical needs a non-empty list of choices")
            else:
                dims.append(Dimension(str(key), kind, choices=tuple(choices)))
        else:
            low, high = spec.get("low"), spec.get("high")
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for v in (low, high))
            if not numbers or low >= high:
                problems.append(f"{where}: needs numbers low < high (got {low!r}, {high!r})")
            elif spec.get("log") and low <= 0:
                problems.append(f"{where}: log scale needs low > 0")
            elif kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
                problems.append(f"{where}: int bounds must be whole numbers")
            else:
                dims.append(Dimension(str(key), kind, float(low), float(high), bool(spec.get("log", False)),
                                      spec.get("step")))
    if problems:
        raise ConfigError(problems)
    return dims


def check_space(config: str, overrides: list[str], dims: list[Dimension]) -> None:
    """Every bound (or choice) of every key is a config ``nailseg train`` accepts, checked before
    any trial runs: a typo in a key or an impossible value fails in a second, not after an hour."""
    from nailseg.config import load_experiment

    for d in dims:
        values = d.choices if d.kind == "categorical" else (d.low, d.high)
        for v in values:
            value = int(v) if d.kind == "int" else v
            try:
                load_experiment(config, [*overrides, f"{d.key}={json.dumps(value)}"])
            except ConfigError as err:
                raise ConfigError([f"--space {d.key}={value!r}: {line}" for line in err.lines]) from None


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


DRIVERS = {"postgresql": "psycopg2-binary (URL postgresql://...)", "mysql": "PyMySQL (URL mysql+pymysql://...)"}


def shown_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot even parse is shown up to its credentials
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str, flag: str = "--storage"):
    """Optuna's RDB storage at ``url``, or one line saying why not: a missing database driver, a
    URL SQLAlchemy cannot parse, or a server that cannot be reached (a traceback otherwise)."""
    import warnings

    import optuna
    from optuna.exceptions import ExperimentalWarning

    try:
        with warnings.catch_warnings():  # the heartbeat (which marks a killed trial failed) is "experimental"
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=2 * HEARTBEAT_S,
                                              failed_trial_callback=None)
    except ImportError:
        scheme = url.split(":", 1)[0].split("+", 1)[0]
        hint = DRIVERS.get(scheme)
        raise ConfigError(f"{flag} {shown_url(url)}: no database driver for {scheme} is installed here"
                          + (f" (pip install {hint})" if hint else "")) from None
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's ArgumentError, OperationalError, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{flag} {shown_url(url)}: cannot open the study storage ({first[:200]})") from None


def _train_and_report(args: list[str], run: Path, log: Path, report: Callable[[float, int], bool],
                      extra_env: dict[str, str] | None = None) -> int:
    """Run ``nailseg train ARGS`` into ``run``; after each finished epoch call ``report(score, epoch)``,
    and stop the child when it answers True (pruned). Returns the child's exit code (-1: pruned).
    ``extra_env``: the thread limits of one of several trials at once (``workflows/parallel.py``)."""
    from nailseg.workflows.compare import LIVE, _stop

    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("NAILSEG_RUN_DIR", None)
    log.parent.mkdir(parents=True, exist_ok=True)
    seen = 0
    with open(log, "w", encoding="utf-8") as sink:
        child = subprocess.Popen([sys.executable, "-m", "nailseg.cli", "train", *args], stdout=sink,
                                 stderr=subprocess.STDOUT, env=env)
        LIVE.add(child)  # so an interrupted study with --jobs stops every trial's child
        try:
            while True:
                done = child.poll() is not None
                records = read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
                for record in records[seen:]:
                    score = record.get("val_iou", record.get("val_segm_map"))
                    if isinstance(score, (int, float)) and report(float(score), int(record["epoch"])):
                        _stop(child)
                        return -1
                seen = len(records)
                if done:
                    return child.returncode
                time.sleep(1.0)
        except BaseException:
            _stop(child)
            raise
        finally:
            LIVE.discard(child)


def run_tune(config: str, overrides: list[str], dims: list[Dimension], out: Path, *, trials: int,
             folds: int | None, storage: str | None, study_name: str, seed: int, prune: bool, jobs: int = 1,
             quota: int | None = None, say: Callable[[str], None] = print) -> dict:
    """Run (or continue) the study until it holds ``trials`` finished trials; write the best
    config, the trials table and the plots into ``out``. ``jobs``: trials at once, each on
    cores / jobs threads and one data worker (Optuna's ``n_jobs``; TPE asks the shared study).
    ``quota``: at most this many trials from this process (a study worker's share; 0: none, only
    the outputs are written)."""
    from nailseg.workflows.compare import _stop_live
    from nailseg.workflows.parallel import job_env, job_overrides

    import optuna
    from optuna.trial import TrialState

    from nailseg.config import load_experiment

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    given = open_storage(storage) if storage else None  # a bad URL says so before anything is written
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=study_name, storage=given or open_storage(url), direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner, load_if_exists=True)
    # A finished trial completed or was pruned. A failed one (a killed command, a crashed training)
    # stays in the storage and in trials.csv, but does not count: running the command again trains
    # its replacement, so a study killed twice still ends with --trials finished trials.
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=counted))
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    say(f"study {study_name!r} in {url}: {done} of {trials} trials done"
        + (f" ({failed} failed, not counted)" if failed else ""))

    running: set[int] = set()  # the numbers of the trials this process trains now

    def objective(trial) -> float:
        running.add(trial.number)
        try:
            return trial_score(trial)
        finally:
            running.discard(trial.number)

    def trial_score(trial) -> float:
        params = {d.key: d.suggest(trial) for d in dims}
        chosen = [f"{k}={json.dumps(v)}" for k, v in params.items()]
        say(f"trial {trial.number}: {' '.join(chosen)}")
        scores = []
        for k in range(folds) if folds else [None]:
            name = f"trial{trial.number:03d}" + (f"-fold{k}" if k is not None else "")
            fold_args = [f"data.split.folds={folds}", f"data.split.fold={k}"] if k is not None else []
            run = out / "trials" / name

            def report(score: float, epoch: int, first_fold: bool = k in (None, 0)) -> bool:
                say(f"  {name} epoch {epoch + 1}: val {score:.4f}")
                if not first_fold:  # the pruner compares trials on one curve: the first fold's
                    return False
                trial.report(score, epoch)
                return trial.should_prune()

            code = _train_and_report([config, *overrides, *job_overrides(jobs), *chosen, *fold_args,
                                      f"run.dir={out / 'trials'}", f"run.name={name}"], run,
                                     out / "trials" / f"{name}.log", report, job_env(jobs))
            if code == -1:
                say(f"  pruned at epoch {len(read_jsonl(run / 'metrics.jsonl'))}")
                raise optuna.TrialPruned()
            if code != 0:
                raise RuntimeError(f"{name}: nailseg train failed (exit {code}); see {out / 'trials' / (name + '.log')}")
            summary = json.loads((run / "summary.json").read_text())
            scores.append(float(summary["val_iou"]))
        score = sum(scores) / len(scores)
        trial.set_user_attr("fold_val_iou", scores)
        say(f"  trial {trial.number}: val IoU {score:.4f}" + (f" (mean of {len(scores)} folds)" if folds else ""))
        return score

    missing = trials - done if quota is None else min(trials - done, quota)
    if missing > 0:
        try:  # n_trials: exactly the missing ones from this command, however many run at once
            study.optimize(objective, n_trials=missing, n_jobs=jobs, catch=(RuntimeError,),
                           gc_after_trial=True, callbacks=[optuna.study.MaxTrialsCallback(trials, states=counted)])
        except BaseException:
            _stop_live()  # Ctrl-C/SIGTERM: no trial trains on alone
            # and each is marked failed now: a stop that lands while Optuna's pool is shutting down
            # (every trial already handed out) leaves its threads to finish at interpreter exit, too
            # late to record the failure, and the trial would stay RUNNING in the storage for good
            for number in list(running):
                study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            raise
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"{out}: no trial finished (see {out / 'trials'}/*.log)")
    best = study.best_trial
    best_overrides = [*overrides, *(f"{k}={json.dumps(v)}" for k, v in best.params.items())]
    resolved = load_experiment(config, best_overrides).to_dict()
    resolved["run"]["name"] = None
    write_yaml(out / "best.yaml", resolved)
    result = {"study": study_name, "storage": url, "best_trial": best.number, "best_value": best.value,
              "best_params": best.params, "trials": len(study.trials), "config": config, "overrides": overrides,
              "folds": folds, "best_config": str(out / "best.yaml")}
    write_json(out / "best.json", result)
    write_text(out / "trials.csv", trials_csv(study.trials, [d.key for d in dims]))
    for name in write_plots(study, out):
        say(f"plot: {name}")
    return result


def tune_with_workers(cluster, config: str, overrides: list[str], space: Path, dims: list[Dimension], out: Path, *,
                      trials: int, folds: int | None, storage: str | None, study_name: str, seed: int,
                      prune: bool, tasks: int, say: Callable[[str], None] = print) -> dict:
    """The study's missing trials shared out among ``tasks`` submitit tasks (one SLURM array), each
    a ``nailseg tune`` on the same storage with its own share and sampler seed: Optuna's own
    distributed mode, so no scheduler of ours hands out trials. Then the outputs, from the study."""
    import optuna
    from optuna.trial import TrialState

    from nailseg.workflows.cluster import cancel, submit_study_workers, wait_training

    given = open_storage(storage) if storage else None  # a bad URL says so before anything is written
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=given or open_storage(url), direction="maximize",
                                load_if_exists=True)  # created once here, so the workers do not race to
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    missing = max(0, trials - done)
    workers = min(tasks, missing)
    shares = [missing // workers + (k < missing % workers) for k in range(workers)] if workers else []
    from nailseg.workflows.parallel import job_env, job_overrides

    # local tasks share this machine's cores: split them as --jobs does (a SLURM task has its own --cpus)
    local = cluster.executor == "local" and workers > 1
    common = [str(Path(config).resolve()), *overrides, *(job_overrides(workers) if local else []),
              "--space", str(space.resolve()), "--trials", str(trials),
              "--storage", url, "--study", study_name, "--out", str(out.resolve()),
              *(["--folds", str(folds)] if folds else []), *([] if prune else ["--no-prune"])]
    if shares:
        jobs = submit_study_workers(cluster, [[*common, "--seed", str(seed + k), "--quota", str(share)]
                                              for k, share in enumerate(shares)], job_env(workers) if local else {})
        say(f"study {study_name!r} in {url}: {done} of {trials} trials done; submitted {len(jobs)} worker"
            f"{'s' * (len(jobs) != 1)} to submitit ({cluster.executor}) with {', '.join(map(str, shares))} trials, "
            f"logs in {cluster.folder}")
        try:
            for k, job in enumerate(jobs):
                proc = wait_training(job, cluster.folder / f"worker{k}.log")
                say(f"worker {k}: " + ("done" if proc.returncode == 0 else
                                      f"failed (exit {proc.returncode}), see {cluster.folder / f'worker{k}.log'}"))
        except BaseException:  # Ctrl-C or SIGTERM: no worker trains on alone
            cancel(jobs)
            raise
    result = run_tune(config, overrides, dims, out, trials=trials, folds=folds, storage=url, study_name=study_name,
                      seed=seed, prune=prune, quota=0, say=say)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    if finished < trials:
        say(f"the study holds {finished} of {trials} finished trials (see the workers' logs); run the same "
            "command again to train the rest")
    return result


def trials_csv(trials, keys: list[str]) -> str:
    """One row per trial: number, state, value, seconds, each searched key."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", "value", "seconds", *keys])
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value, seconds,
                         *(t.params.get(k, "") for k in keys)])
    return buffer.getvalue()


def write_plots(study, out: Path) -> list[Path]:
    """Optuna's own matplotlib plots as PNG: history, parameter importances, parallel coordinates
    (each where the study can draw it: importances need two finished trials and a varying parameter)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as ov

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # Optuna marks its matplotlib plots so
    written = []
    # PED-ANOVA: Optuna's importance evaluator that needs no scikit-learn (fANOVA's does)
    importances = lambda s: ov.plot_param_importances(s, evaluator=PedAnovaImportanceEvaluator())  # noqa: E731
    for name, draw in (("history", ov.plot_optimization_history), ("importances", importances),
                       ("parallel", ov.plot_parallel_coordinate)):
        try:
            axes = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials for this plot
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        path = out / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written
