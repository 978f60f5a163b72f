"""Lazy imports of optional dependencies with one clear line when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from nailseg.errors import MissingDependencyError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a :class:`MissingDependencyError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        # Only translate the error when it is the requested package that is missing,
        # not a broken transitive import inside it.
        if err.name and module.split(".")[0] == err.name.split(".")[0]:
            raise MissingDependencyError(module, extra, purpose) from err
        raise


def pyplot(purpose: str) -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend, or one line naming the ``train`` extra
    (inference installs, ``nailseg[onnx]``/``[serve]``, leave matplotlib out)."""
    matplotlib = require("matplotlib", "train", purpose)
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
