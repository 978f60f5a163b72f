"""``nailseg compare``: train several configs the same way (optionally k-fold) and compare them."""

from __future__ import annotations

import os

from nailseg.cli.cluster import add_cluster_flags, cluster_settings
from nailseg.cli.common import output_folder
from nailseg.errors import NailsegError


def _exit_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler's timeout) unwinds like Ctrl-C, so the training child that
    compare is waiting on is stopped with it instead of running on alone."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


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


DESCRIPTION = """\
Train each CONFIG (each in its own process: torch and TensorFlow never share one) on the same data
and the same split, with the KEY=VALUE overrides applied to all, and score each with the shared
evaluation at original resolution on the same held-out images. --folds K runs K-fold
cross-validation over the whole folder (seeded, the same folds for every config). --runs collects
finished runs instead (their splits must match). Writes OUT/compare.json, compare.png, curves.png
and report.md (with each config's worst images). Every config is loaded first: one that does not
load (a typo, a bad value) stops the comparison before anything trains. A training that fails is
reported in its row; the others still run.
"""


def add_parser(sub) -> None:
    cmp_ = sub.add_parser(
        "compare", help="train configs on the same data and split (or k folds) and compare them",
        description=DESCRIPTION)
    cmp_.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="experiment configs and overrides")
    cmp_.add_argument("--runs", nargs="+", metavar="RUN", help="compare finished run folders instead of training")
    cmp_.add_argument("--folds", type=int, help="k-fold cross-validation with K folds (K >= 2)")
    cmp_.add_argument("--jobs", type=int, default=1,
                      help="trainings at once (default 1); the cores are split between them (cores / jobs "
                           "threads and one data worker each), so they do not slow each other down; each "
                           "job's epoch lines go to its log, OUT/runs/NAME.log")
    add_cluster_flags(
        cmp_, "--executor slurm submits every training (each config and fold) as one SLURM array job and waits for "
        "it; a preempted or timed-out task is requeued and continues its run from last.ckpt. --executor "
        "local takes the same path on this machine (submitit's local executor). Tasks' logs: OUT/submitit.")
    cmp_.add_argument("--checkpoint", choices=["best", "last"], default="last",
                      help="which checkpoint is scored (default: last, so the held-out images never chose it)")
    cmp_.add_argument("--out", required=True, help="output folder")
    cmp_.set_defaults(func=cmd_compare)
