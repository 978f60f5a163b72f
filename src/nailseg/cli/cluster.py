"""The submitit flags ``compare`` and ``tune`` share: ``--executor local|slurm`` and the task's resources."""

from __future__ import annotations

from nailseg.errors import NailsegError

RESOURCE_FLAGS = ("partition", "time_min", "cpus", "mem_gb", "gpus", "array_parallelism")


def add_cluster_flags(parser, description: str):
    """The ``clusters (submitit)`` argument group; ``description`` says what one task is."""
    cluster = parser.add_argument_group("clusters (submitit)", description)
    cluster.add_argument("--executor", choices=["local", "slurm"],
                         help="run the work as submitit jobs (default: children of this process, see --jobs)")
    cluster.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    cluster.add_argument("--time-min", type=int, help="each task's time limit in minutes (default 60)")
    cluster.add_argument("--cpus", type=int, help="cores per task (default 2)")
    cluster.add_argument("--mem-gb", type=int, help="memory per task in GB (default 16)")
    cluster.add_argument("--gpus", type=int, help="GPUs per task (default 0)")
    cluster.add_argument("--array-parallelism", type=int, help="tasks of the array at once (default: all)")
    return cluster


def cluster_settings(args, out, command: str = "compare"):
    """The submitit settings of ``--executor`` (None: the work runs as children of this process).
    Every flag is checked here, before anything is written."""
    if args.executor is None:
        given = [f for f in RESOURCE_FLAGS if getattr(args, f) is not None]
        if given:
            raise NailsegError(f"--{given[0].replace('_', '-')}: only with --executor local|slurm")
        return None
    if args.jobs != 1:
        raise NailsegError("--jobs: not with --executor (the scheduler decides how many tasks run at once; "
                           "--array-parallelism caps it on SLURM)")
    for flag in ("time_min", "cpus", "mem_gb", "array_parallelism"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise NailsegError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    from nailseg.core.optional import require

    require("submitit", "cluster", f"{command} --executor")
    if args.executor == "slurm":
        import shutil

        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:  # submitit would raise a traceback; nothing is written yet
            raise NailsegError(f"--executor slurm: {' and '.join(missing)} not found on PATH: run {command} on a "
                               "SLURM login node (or use --executor local to take the same path on this machine)")
    from nailseg.workflows.cluster import ClusterSettings

    given = {k: v for k, v in (("partition", args.partition), ("time_min", args.time_min), ("cpus", args.cpus),
                               ("mem_gb", args.mem_gb), ("gpus", args.gpus),
                               ("parallel", args.array_parallelism)) if v is not None}
    return ClusterSettings(executor=args.executor, folder=out / "submitit", **given)
