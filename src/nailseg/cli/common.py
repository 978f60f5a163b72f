"""Helpers the verb modules share: output-path checks, comma-separated choices, the experiment positionals."""

from __future__ import annotations

from pathlib import Path

from nailseg.errors import NailsegError


def output_folder(path: str, flag: str = "--out") -> Path:
    """A folder to write into: refuse a path that is an existing file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NailsegError(f"{flag} {path}: exists and is a file; give a folder")
    return out


def output_file(path: str, flag: str = "--out") -> Path:
    """A file to (over)write atomically: refuse a path that is an existing folder."""
    out = Path(path)
    if out.is_dir():
        raise NailsegError(f"{flag} {path}: is a folder; give a file name")
    if out.parent.exists() and not out.parent.is_dir():
        raise NailsegError(f"{flag} {path}: {out.parent} is a file, not a folder")
    return out


def choices(text: str, allowed, flag: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown or not chosen:
        raise NailsegError(f"{flag}: unknown {', '.join(unknown) or 'empty list'} (choose from {', '.join(allowed)})")
    return chosen


def _whole_number(value: str, least: int) -> int:
    import argparse

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < least:
        raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
    return number


def positive(value: str) -> int:
    """argparse type: a whole number >= 1 (a clear usage error otherwise)."""
    return _whole_number(value, 1)


def non_negative(value: str) -> int:
    """argparse type: a whole number >= 0."""
    return _whole_number(value, 0)


def add_experiment_arguments(parser, *, optional: bool = False, config_help: str = "experiment YAML (see configs/)",
                             overrides_help: str = "dotted overrides, e.g. trainer.max_epochs=3") -> None:
    """The CONFIG and KEY=VALUE... positionals of every verb that resolves an experiment."""
    parser.add_argument("config", nargs="?" if optional else None, help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
