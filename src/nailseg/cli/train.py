"""``nailseg train``: one run, on whichever stack the config names."""

from __future__ import annotations

from nailseg.cli.common import add_experiment_arguments
from nailseg.errors import NailsegError


def cmd_train(args) -> int:
    from nailseg.config import load_experiment
    from nailseg.runs import choose_run_dir, resume_run
    from nailseg.engine import run_training

    if args.resume:
        if args.config and "=" in args.config:  # argparse puts the first override in `config`
            args.overrides, args.config = [args.config, *args.overrides], None
        if args.config:
            raise NailsegError("--resume takes the run folder; pass overrides as KEY=VALUE only")
        run, exp = resume_run(args.resume, args.overrides)
    else:
        if not args.config:
            raise NailsegError("nailseg train: give a config file (e.g. configs/demo-cpu.yaml) or --resume RUN_DIR")
        exp = load_experiment(args.config, args.overrides)
        run = choose_run_dir(exp, args.config)
    summary = run_training(exp, run, resume=bool(args.resume))
    if summary is None:  # a non-zero DDP rank: rank 0 reports
        return 0
    print(f"val IoU {summary['val_iou']:.4f}  Dice {summary['val_dice']:.4f}  "
          f"({summary['epochs']} epochs, {summary['wall_time_s']:.0f} s, {summary['device']})")
    print(run.path)
    return 0


DESCRIPTION = """\
Train from a YAML experiment config with dotted overrides, e.g. 'nailseg train configs/demo-cpu.yaml
trainer.max_epochs=3 model.encoder=resnet18'. The config and the data are checked first (nothing is
written for a refused run); the run folder (config.yaml, split.json, checkpoints, metrics.jsonl,
TensorBoard events, summary.json, predictions/) is printed last. One process at a time may train a
run folder.
"""


def add_parser(sub) -> None:
    train = sub.add_parser(
        "train", help="train a model from an experiment config",
        description=DESCRIPTION,
    )
    add_experiment_arguments(train, optional=True)
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a killed or finished run from its last checkpoint (overrides that change "
                            "the model are refused)")
    train.set_defaults(func=cmd_train)
