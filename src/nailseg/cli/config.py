"""``nailseg config show | keys``: the resolved experiment config, and every key it accepts."""

from __future__ import annotations

import argparse

from nailseg.cli.common import add_experiment_arguments
from nailseg.specs import STACKS


DESCRIPTION = """\
show: the config after its overrides, with every default filled in (what `nailseg train` would run;
like LightningCLI's --print_config). keys: every key, its type, default and meaning.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="print a resolved config, or every key with its type and default",
                       description=DESCRIPTION)
    verbs = p.add_subparsers(dest="config_command", metavar="VERB", required=True)
    show = verbs.add_parser("show", help="the resolved config as YAML")
    add_experiment_arguments(show, optional=True, config_help="experiment YAML (default: the built-in defaults)")
    show.set_defaults(func=cmd_show)
    keys = verbs.add_parser("keys", help="every key with its type and default")
    keys.add_argument("--family", choices=[f for s in STACKS.values() for f in s.families], default=None,
                      help="list the model keys of this family only (default: all families)")
    keys.set_defaults(func=cmd_keys)


def cmd_show(args: argparse.Namespace) -> int:
    import yaml

    from nailseg.config import load_experiment

    config = args.config
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        args.overrides, config = [config, *args.overrides], None
    exp = load_experiment(config, args.overrides)
    print(yaml.safe_dump(exp.to_dict(), sort_keys=False).rstrip())
    print(f"# stack: {exp.stack}, pipeline: {exp.pipeline}, input normalisation: {exp.normalization.name}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from nailseg.config import config_keys

    rows = config_keys(args.family)
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        doc = f"  {r['description']}" if r["description"] else ""
        print(f"{r['key']:{width}}  {r['type']:28}  default {r['default']}{doc}")
    return 0
