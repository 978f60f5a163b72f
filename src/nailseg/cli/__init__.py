"""``nailseg``: one command line over data tools, training, evaluation, prediction and benchmarks.

The CLI is thin: each verb group lives in its own module (``data``, ``train``, ``bench``,
``compare``) that parses, loads the config, calls one function and prints. Frameworks are
imported inside the command that needs them, so ``nailseg --help`` and ``nailseg data ...``
never import torch or TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from nailseg import __version__
from nailseg.errors import NailsegError

EPILOG = """\
one convention for options:
  KEY=VALUE  sets a key of the experiment config (dotted: trainer.max_epochs=3), wherever a verb
             reads a config: train, compare, bench loaders|train|tfdata, config show.
             `nailseg config keys` lists every key with its type and default.
  --flag     sets an option of the verb itself (where to write, which split, how many): every
             verb, the same spelling everywhere (--out, --data, --split, --quiet).
  A verb that runs a trained model (eval, predict, export, serve) takes a run folder or a model
  file and only --flags: the run's own config.yaml is the config.

examples:
  nailseg data synth data/synth --n 200
  nailseg data check data/synth
  nailseg train configs/demo-cpu.yaml trainer.max_epochs=3
  nailseg eval runs/RUN --split test
  nailseg predict runs/RUN photos/ --out predictions/
  nailseg export runs/RUN --format onnx --int8
  nailseg compare configs/demo-cpu.yaml configs/keras-cpu.yaml --folds 5 --out compare/
  nailseg bench loaders --data data/synth --size 384 --batch 64
  nailseg weights list
  nailseg config show configs/demo-cpu.yaml trainer.max_epochs=3
  nailseg doctor
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is one ``error:`` line (as every other refusal is), not the
    usage block before it; ``--help`` still prints the usage. Sub-command parsers are this class too."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from nailseg.cli import (bench, compare, config, data, doctor, eject, evaluate, export, predict, serve, train,
                             tune, weights)

    parser = _Parser(
        prog="nailseg",
        description="Train, evaluate and compare segmentation models for photographs of hands and nails "
                    "(or any folder of images/ + labels/ or masks/). Exit codes: 0 done, 2 refused input "
                    "(one 'error:' line per problem), 130 interrupted.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nailseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data.add_parser(sub)
    train.add_parser(sub)
    evaluate.add_parser(sub)
    predict.add_parser(sub)
    export.add_parser(sub)
    eject.add_parser(sub)
    compare.add_parser(sub)
    tune.add_parser(sub)
    bench.add_parser(sub)
    serve.add_parser(sub)
    weights.add_parser(sub)
    config.add_parser(sub)
    doctor.add_parser(sub)
    return parser


OVERRIDE = re.compile(r"^[A-Za-z_][\w.\[\]-]*=")


def parse_intermixed(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, but KEY=VALUE overrides may also follow the flags (``nailseg tune CONFIG --out O
    optim.lr=0.01``): argparse stops filling a positional list at the first flag, and its own
    ``parse_intermixed_args`` does not work with sub-commands."""
    args, extra = parser.parse_known_args(argv)
    field = "overrides" if hasattr(args, "overrides") else "items" if hasattr(args, "items") else None
    if extra and field and all(OVERRIDE.match(x) for x in extra):
        setattr(args, field, [*(getattr(args, field) or []), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        parser = build_parser()  # reads the stack rows, plugins included (a broken plugin is one error line)
        args = parse_intermixed(parser, argv)
        return args.func(args)
    except NailsegError as err:
        for line in err.lines:
            print(f"error: {line}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # `nailseg config keys | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: could not write{where}: {err.strerror.lower() if err.strerror else err}; "
              "the files written before were kept", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory (lower data.image_size or trainer.batch_size)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
