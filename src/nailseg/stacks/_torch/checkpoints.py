"""Loading torch checkpoints without running code a file carries.

``torch.load(weights_only=True)`` unpickles tensors, plain containers and an allow-list of
types only; a pickled object whose ``__reduce__`` would run code is refused. Every load of
a file from a run folder or a user goes through :func:`safe_load`, which turns a refused,
truncated or corrupt file into one ``ConfigError`` naming it.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from nailseg.errors import ConfigError


def safe_load(path: str | Path, what: str = "checkpoint", map_location="cpu", loader=None):
    """``torch.load(path, weights_only=True)`` (or ``loader``, a restricted equivalent), with every
    failure turned into one line naming the file."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read forever; /dev/zero never ends
        raise ConfigError(f"{path}: not a {what} (not a regular file)")
    try:
        if loader is not None:
            return loader(path, map_location=map_location)
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        if ("Unsupported operand" in str(err) or "String is too long" in str(err)) and not _looks_pickled(path):
            # neither a zip archive nor a pickle (whose protocol 2+ header is 0x80): a text file or garbage
            raise ConfigError(f"{path}: not a {what}: neither a torch archive nor a pickle of tensors") from None
        if "weights_only" in str(err) or "Unsupported global" in str(err) or "GLOBAL" in str(err) or "refused" in str(err):
            raise ConfigError(f"{path}: refused to load this {what}: it holds Python objects that could run code, "
                              "not only tensors (loaded with weights_only=True)") from None
        raise ConfigError(f"{path}: corrupt {what} ({first})") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError,
            IndexError, TypeError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: corrupt or truncated {what} ({first})") from None


def _looks_pickled(path: Path) -> bool:
    """A torch zip archive (``PK``) or a pickle of protocol 2 or later (``0x80``), by its first bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(2).startswith((b"PK", b"\x80"))
    except OSError:
        return False
