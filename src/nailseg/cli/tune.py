"""``nailseg tune``: a hyper-parameter search over config keys, on Optuna."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from nailseg.cli.cluster import add_cluster_flags, cluster_settings
from nailseg.cli.common import add_experiment_arguments, output_folder, positive
from nailseg.errors import NailsegError

STUDY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def cmd_tune(args) -> int:
    from nailseg.core.optional import require
    from nailseg.workflows.tune import check_space, read_space, run_tune

    require("optuna", "tune", "nailseg tune (Optuna)")
    _stop_trials_on_signal()
    out = output_folder(args.out)
    placed = [x.split("=", 1)[0] for x in args.overrides if x.split("=", 1)[0] in ("run.dir", "run.name")]
    if placed:
        raise NailsegError(f"{placed[0]}: tune places every trial under --out ({out}/trials/); give --out instead")
    if args.folds is not None and args.folds < 2:
        raise NailsegError(f"--folds {args.folds}: k-fold cross-validation needs at least 2 folds")
    if not STUDY_NAME.match(args.study):
        raise NailsegError(f"--study {args.study!r}: letters, digits, '.', '_' and '-' only (at most 100)")
    from nailseg.workflows.parallel import check_jobs

    jobs = check_jobs(args.jobs)
    if args.tasks is not None and (args.executor is None or args.tasks < 1):
        raise NailsegError(f"--tasks {args.tasks}: " + ("at least 1" if args.executor else "only with --executor local|slurm"))
    cluster = cluster_settings(args, out, "tune")
    dims = read_space(Path(args.space))
    check_space(args.config, args.overrides, dims)
    if cluster is not None:
        from nailseg.workflows.tune import tune_with_workers

        result = tune_with_workers(cluster, args.config, args.overrides, Path(args.space), dims, out,
                                   trials=args.trials, folds=args.folds, storage=args.storage,
                                   study_name=args.study, seed=args.seed, prune=not args.no_prune,
                                   tasks=args.tasks or 2)
    else:
        result = run_tune(args.config, args.overrides, dims, out, trials=args.trials, folds=args.folds,
                          storage=args.storage, study_name=args.study, seed=args.seed, prune=not args.no_prune,
                          jobs=jobs, quota=args.quota)
    print(f"best trial {result['best_trial']}: val IoU {result['best_value']:.4f}  {result['best_params']}")
    print(f"train it: nailseg train {result['best_config']}")
    print(out / "best.json")
    return 0


def _stop_trials_on_signal() -> None:
    """Ctrl-C or SIGTERM stops every trial's training child first, then unwinds: with ``--jobs``
    Optuna's thread pool waits for its running trials, which must not train on alone."""
    import signal
    import sys

    from nailseg.workflows.compare import _stop_live

    def stop(signum, _frame):
        _stop_live()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


DESCRIPTION = """\
Search the config keys of SPACE.yaml, e.g. optim.lr: {type: float, low: 1e-4, high: 1e-2, log: true}
and trainer.batch_size: {type: categorical, choices: [4, 8]}, with Optuna's TPE sampler. Each
trial is one `nailseg train` (any stack) under OUT/trials/; each finished epoch's validation score
feeds Optuna's median pruner, which may stop a poor trial early. --folds K scores a trial by the
mean validation IoU of K folds (never the held-out fold). The study is kept in --storage (default:
OUT/study.db, SQLite), so running the same command again continues it up to --trials finished
(complete or pruned) trials; a killed trial is marked failed and trained again. --jobs N runs N
trials at once, the cores split between them. A PostgreSQL or MySQL URL lets several machines work
on one study (run the same command on each). Writes OUT/best.yaml (a complete config for `nailseg
train`), best.json, trials.csv and Optuna's plots (history.png, importances.png, parallel.png).
"""


def add_parser(sub) -> None:
    tu = sub.add_parser(
        "tune", help="search config keys with Optuna (TPE, pruning, a resumable study)",
        description=DESCRIPTION)
    add_experiment_arguments(tu, overrides_help="dotted overrides applied to every trial")
    tu.add_argument("--space", required=True, help="YAML search space: {key: {type, low, high, log, step, choices}}")
    tu.add_argument("--trials", type=positive, required=True, help="finished trials the study should hold")
    tu.add_argument("--folds", type=int, help="score each trial by K-fold cross-validation (K >= 2)")
    tu.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    tu.add_argument("--study", default="nailseg", help="study name in the storage (default: nailseg)")
    tu.add_argument("--seed", type=int, default=0, help="TPE sampler seed (default: 0)")
    tu.add_argument("--jobs", type=int, default=1,
                    help="trials at once (default 1); the cores are split between them (cores / jobs threads and "
                         "one data worker each), so they do not fight over the cores")
    tu.add_argument("--no-prune", action="store_true", help="train every trial to its last epoch")
    tu.add_argument("--quota", type=int, help=argparse.SUPPRESS)  # a study worker's share (tune --executor)
    cluster = add_cluster_flags(
        tu, "--executor slurm submits --tasks study workers as one SLURM array job and waits for them: each runs "
        "nailseg tune on the same --storage with its share of the missing trials and its own sampler seed "
        "(Optuna's distributed mode). A preempted worker is requeued and trains the study's next trials (the "
        "storage marks the interrupted one failed). --executor local takes the same path on this machine. "
        "On a cluster give a --storage every node reaches (PostgreSQL or MySQL; SQLite only on a shared disk "
        "one node writes at a time).")
    cluster.add_argument("--tasks", type=int, help="study workers submitted as tasks (default 2)")
    tu.add_argument("--out", required=True, help="output folder")
    tu.set_defaults(func=cmd_tune)
