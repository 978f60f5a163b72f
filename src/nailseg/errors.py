"""Errors a user can act on.

Every error that reaches the command line is a :class:`NailsegError`: the CLI prints its
lines (one per problem, each naming the file or key) and exits with code 2, no traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class NailsegError(Exception):
    """An error caused by the user's input, reported without a traceback."""

    exit_code = 2

    def __init__(self, message: str | Iterable[str]):
        # One problem, one line: control characters (a newline in a file name) are escaped.
        self.lines = [quote_name(line) for line in ([message] if isinstance(message, str) else list(message))]
        super().__init__("\n".join(self.lines))


class DataError(NailsegError):
    """The data folder has problems (missing, corrupt or mismatched files)."""


class ConfigError(NailsegError):
    """The experiment config has an unknown key, a wrong type or a bad value."""


def install_hint(extra: str) -> str:
    """The one way nailseg spells an install, the same in errors, ``doctor`` and the README."""
    return f"pip install 'nailseg[{extra}]' (in a checkout: pip install -e '.[{extra}]')"


class MissingDependencyError(NailsegError):
    """An optional dependency is not installed; names the extra that provides it."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed: {install_hint(extra)}"
        )
        self.module, self.extra = module, extra


def quote_name(value) -> str:
    """A path or name safe to print on one line: control characters (a newline in a file name)
    are escaped, everything else (accents, spaces) is kept as it is."""
    import re

    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], str(value))
