"""``nailseg compare``: train several configs the same way (optionally k-fold) and compare them."""

from __future__ import annotations

import os

from nailseg.cli.common import output_folder
from nailseg.errors import NailsegError


def _exit_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler's timeout) unwinds like Ctrl-C, so the training child that
    compare is waiting on is stopped with it instead of running on alone."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def cluster_settings(args, out):
    """The submitit settings of ``--executor`` (None: trainings are children of this process)."""
    if args.executor is None:
        slurm_flags = [f for f in ("partition", "time_min", "cpus", "mem_gb", "gpus", "array_parallelism")
                       if getattr(args, f) is not None]
        if slurm_flags:
            raise NailsegError(f"--{slurm_flags[0].replace('_', '-')}: only with --executor local|slurm")
        return None
    if args.jobs != 1:
        raise NailsegError("--jobs: not with --executor (the scheduler decides how many tasks run at once; "
                           "--array-parallelism caps it on SLURM)")
    for flag in ("time_min", "cpus", "mem_gb", "array_parallelism"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise NailsegError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    from nailseg.core.optional import require

    require("submitit", "cluster", "compare --executor")
    if args.executor == "slurm":
        import shutil

        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:  # submitit would raise a traceback; nothing is written yet
            raise NailsegError(f"--executor slurm: {' and '.join(missing)} not found on PATH: run compare on a "
                               "SLURM login node (or use --executor local to take the same path on this machine)")
    from nailseg.workflows.cluster import ClusterSettings

    given = {k: v for k, v in (("partition", args.partition), ("time_min", args.time_min), ("cpus", args.cpus),
                               ("mem_gb", args.mem_gb), ("gpus", args.gpus),
                               ("parallel", args.array_parallelism)) if v is not None}
    return ClusterSettings(executor=args.executor, folder=out / "submitit", **given)


def cmd_compare(args) -> int:
    from nailseg.workflows.compare import collect_runs, run_compare

    _exit_on_sigterm()
    out = output_folder(args.out)
    if args.folds is not None and args.folds < 2:
        raise NailsegError(f"--folds {args.folds}: k-fold cross-validation needs at least 2 folds")
    if args.runs:
        if args.items:
            raise NailsegError("nailseg compare --runs RUN ...: give run folders only, no configs or overrides")
        rows = collect_runs(args.runs, out, checkpoint=args.checkpoint)
    else:
        configs = [x for x in args.items if not ("=" in x and not os.path.exists(x))]
        overrides = [x for x in args.items if "=" in x and not os.path.exists(x)]
        if not configs:
            raise NailsegError("nailseg compare: give at least one config (or --runs RUN ...)")
        placed = [x.split("=", 1)[0] for x in overrides if x.split("=", 1)[0] in ("run.dir", "run.name")]
        if placed:
            raise NailsegError(f"{placed[0]}: compare places every run itself, under --out ({out}/runs/CONFIG[-foldK]); "
                               "give --out instead")
        from nailseg.workflows.parallel import check_jobs

        rows = run_compare(configs, overrides, out, folds=args.folds, seed=0, checkpoint=args.checkpoint,
                           jobs=check_jobs(args.jobs), cluster=cluster_settings(args, out))
    print(f"{'config':24} {'stack':10} {'IoU':>8} {'sd':>7} {'Dice':>7} {'img/s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:24} {r.get('stack', ''):10} failed: {r['error']}")
            continue
        sd = f"{r['iou_sd']:.4f}" if "iou_sd" in r else ""
        print(f"{r['config']:24} {r['stack'] or '':10} {r['iou']:>8.4f} {sd:>7} {r['dice']:>7.4f} "
              f"{r.get('images_per_s') or 0:>8.1f}")
    print(out / "report.md")
    return 2 if all("error" in r for r in rows) else 0


def add_parser(sub) -> None:
    cmp_ = sub.add_parser(
        "compare", help="train configs on the same data and split (or k folds) and compare them",
        description="Train each CONFIG (each in its own process: torch and TensorFlow never share one) on the "
                    "same data and the same split, with the KEY=VALUE overrides applied to all, and score each "
                    "with the shared evaluation at original resolution on the same held-out images. --folds K "
                    "runs K-fold cross-validation over the whole folder (seeded, the same folds for every "
                    "config). --runs collects finished runs instead (their splits must match). Writes "
                    "OUT/compare.json, compare.png, curves.png and report.md (with each config's worst images). "
                    "A config that fails is reported in its row; the others still run.")
    cmp_.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="experiment configs and overrides")
    cmp_.add_argument("--runs", nargs="+", metavar="RUN", help="compare finished run folders instead of training")
    cmp_.add_argument("--folds", type=int, help="k-fold cross-validation with K folds (K >= 2)")
    cmp_.add_argument("--jobs", type=int, default=1,
                      help="trainings at once (default 1); the cores are split between them (cores / jobs "
                           "threads and one data worker each), so they do not slow each other down; each "
                           "job's epoch lines go to its log, OUT/runs/NAME.log")
    cluster = cmp_.add_argument_group(
        "clusters (submitit)",
        "--executor slurm submits every training (each config and fold) as one SLURM array job and waits for "
        "it; a preempted or timed-out task is requeued and continues its run from last.ckpt. --executor "
        "local takes the same path on this machine (submitit's local executor). Tasks' logs: OUT/submitit.")
    cluster.add_argument("--executor", choices=["local", "slurm"],
                         help="run the trainings as submitit jobs (default: children of this process, see --jobs)")
    cluster.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    cluster.add_argument("--time-min", type=int, help="each task's time limit in minutes (default 60)")
    cluster.add_argument("--cpus", type=int, help="cores per task (default 2)")
    cluster.add_argument("--mem-gb", type=int, help="memory per task in GB (default 16)")
    cluster.add_argument("--gpus", type=int, help="GPUs per task (default 0)")
    cluster.add_argument("--array-parallelism", type=int, help="tasks of the array at once (default: all)")
    cmp_.add_argument("--checkpoint", choices=["best", "last"], default="last",
                      help="which checkpoint is scored (default: last, so the held-out images never chose it)")
    cmp_.add_argument("--out", required=True, help="output folder")
    cmp_.set_defaults(func=cmd_compare)
