"""Trainings as submitit jobs: a SLURM array on a cluster, or submitit's local executor here.

``compare --executor slurm`` submits one array job (one task per config and fold) and waits
for it; ``tune --executor slurm`` submits one task per study worker (each runs ``nailseg tune`` on
the study's shared storage, Optuna's own distributed mode); ``--executor local`` takes the same
path on this machine through submitit's ``LocalExecutor``, which is how it is tested. Each task
runs ``nailseg train`` (or ``tune``) as a child process (torch and TensorFlow never share one).
When SLURM preempts a task or its time runs out, SLURM sends its warning signal and submitit
calls the job's ``checkpoint``: the child is stopped and the task is requeued; a requeued
training continues its run from ``last.ckpt`` (``train --resume``), a requeued study worker
trains the study's next trials.
submitit is imported only here, and only when an executor is asked for.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

EXECUTORS = ("local", "slurm")


@dataclass
class ClusterSettings:
    """Where and how the tasks run; ``folder`` keeps submitit's pickles and each task's log."""

    executor: str                  # "local" (this machine) or "slurm"
    folder: Path
    partition: str | None = None   # SLURM partition; the cluster's default when None
    time_min: float = 60           # a task's time limit (SLURM --time), minutes
    signal_delay_s: int = 90       # the warning signal comes this long before the limit (SLURM --signal)
    cpus: int = 2                  # cores per task
    mem_gb: int = 16
    gpus: int = 0                  # GPUs per task
    parallel: int | None = None    # tasks of the array at once (SLURM --array=...%N); None: no cap

    def executor_for(self, tasks: int) -> submitit.Executor:
        if self.executor == "local":
            executor = submitit.LocalExecutor(folder=str(self.folder))
            executor.update_parameters(timeout_min=self.time_min, gpus_per_node=self.gpus,
                                       signal_delay_s=self.signal_delay_s)
            return executor
        executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
        params = {"timeout_min": self.time_min, "cpus_per_task": self.cpus, "mem_gb": self.mem_gb,
                  "gpus_per_node": self.gpus, "tasks_per_node": 1, "nodes": 1,
                  "slurm_signal_delay_s": self.signal_delay_s,
                  "slurm_array_parallelism": self.parallel or tasks, "name": "nailseg"}
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(**params)
        return executor


def _child_env(env: dict[str, str]) -> dict[str, str]:
    child_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", **env}
    child_env.pop("NAILSEG_RUN_DIR", None)
    return child_env


def _kill_now(child: subprocess.Popen | None) -> None:
    """SIGKILL, not SIGTERM: Lightning only notes a SIGTERM and trains on, past the scheduler's grace.
    os.*, not child.kill()/wait(): the signal handler that calls this interrupted child.wait(), which
    holds the lock those take. Reaping it here means no requeued task can meet a child still alive."""
    if child is not None and child.returncode is None:
        try:
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
        except (ProcessLookupError, ChildProcessError):  # it had already ended
            pass


class TrainingJob(submitit.helpers.Checkpointable):
    """One training: ``nailseg train ARGS`` into ``run``, resumed from ``last.ckpt`` after a requeue."""

    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None

    def __call__(self, train_args: list[str], run: str, env: dict[str, str]) -> int:
        path = Path(run)
        if (path / "summary.json").is_file():  # finished before a requeue reached it
            return 0
        last = path / "checkpoints" / "last.ckpt"
        if last.is_file():
            args = ["train", "--resume", str(path)]
        else:
            if path.is_dir():  # stopped before its first epoch ended: nothing to continue from
                shutil.rmtree(path)
            args = ["train", *train_args]
        self._child = subprocess.Popen([sys.executable, "-m", "nailseg.cli", *args], env=_child_env(env))
        return self._child.wait()

    def checkpoint(self, train_args: list[str], run: str, env: dict[str, str]) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time: stop the training at once and requeue. A kill is safe:
        checkpoints are written atomically, and ``train --resume`` continues a run killed at any
        point from its last finished epoch (``tests/test_reliability.py`` kills around epoch ends)."""
        _kill_now(self._child)
        return submitit.helpers.DelayedSubmission(TrainingJob(), train_args, run, env)


class StudyWorkerJob(submitit.helpers.Checkpointable):
    """One worker of an Optuna study: ``nailseg tune ARGS`` on the study's shared storage. Preempted,
    it is killed and requeued with the same command: the storage's heartbeat marks the trial it was
    training failed, and the requeued worker trains the study's next trials."""

    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None

    def __call__(self, tune_args: list[str], env: dict[str, str]) -> int:
        self._child = subprocess.Popen([sys.executable, "-m", "nailseg.cli", "tune", *tune_args], env=_child_env(env))
        return self._child.wait()

    def checkpoint(self, tune_args: list[str], env: dict[str, str]) -> submitit.helpers.DelayedSubmission:
        _kill_now(self._child)
        return submitit.helpers.DelayedSubmission(StudyWorkerJob(), tune_args, env)


def submit_study_workers(settings: ClusterSettings, workers: list[list[str]], env: dict[str, str] | None = None
                         ) -> list[submitit.Job]:
    """Submit one task per worker command (``nailseg tune`` arguments), as one SLURM array."""
    settings.folder.mkdir(parents=True, exist_ok=True)
    executor = settings.executor_for(len(workers))
    with executor.batch():
        return [executor.submit(StudyWorkerJob(), list(args), dict(env or {})) for args in workers]


def submit_trainings(settings: ClusterSettings, tasks: dict[str, tuple[list[str], Path, dict[str, str]]]
                     ) -> dict[str, submitit.Job]:
    """Submit every training at once (one SLURM array); ``tasks``: name -> (train args, run, env)."""
    settings.folder.mkdir(parents=True, exist_ok=True)
    executor = settings.executor_for(len(tasks))
    names = list(tasks)
    with executor.batch():
        submitted = [executor.submit(TrainingJob(), list(tasks[n][0]), str(tasks[n][1]), dict(tasks[n][2]))
                     for n in names]
    return dict(zip(names, submitted))


def wait_training(job: submitit.Job, log: Path) -> subprocess.CompletedProcess:
    """Wait for one task (a training or a study worker); its exit status and the task's output (also
    kept in ``log``)."""
    try:
        returncode = job.result()
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as err:
        returncode = 1
        error = str(err).strip().splitlines()
    else:
        error = []
    stdout, stderr = job.stdout() or "", job.stderr() or ""
    if error:
        stderr += "\n" + "\n".join(error[-3:])
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# submitit job {job.job_id}\n{stdout}\n{stderr}", encoding="utf-8")
    return subprocess.CompletedProcess([], returncode, stdout, stderr)


def cancel(jobs) -> None:
    """Ctrl-C or SIGTERM on compare or tune: no task trains on alone (``jobs``: a dict or a list)."""
    for job in (jobs.values() if isinstance(jobs, dict) else jobs):
        try:
            job.cancel(check=False)
        except Exception:  # noqa: BLE001 - a task that already ended cannot be cancelled
            pass
