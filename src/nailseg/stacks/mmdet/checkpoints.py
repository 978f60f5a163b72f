"""mmengine checkpoints read safely: mmengine pickles its message hub beside the weights, so a
checkpoint is unpickled with a restricted allow-list (torch's ``weights_only`` one plus the
history buffers), and a planted ``__reduce__`` cannot run code."""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import numpy as np
import torch

from nailseg.errors import ConfigError
from nailseg.stacks._torch.checkpoints import safe_load


def _mmengine_globals() -> dict:
    """What an mmengine checkpoint may name, and nothing else: torch's own ``weights_only``
    allow-list (tensors, storages, plain containers) plus the message hub's history buffers and
    the numpy arrays inside them."""
    import torch._weights_only_unpickler as weights_only
    from mmengine.logging.history_buffer import HistoryBuffer

    multiarray = getattr(np, "_core", np.core).multiarray
    allowed = dict(weights_only._get_allowed_globals())
    for obj in (HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype):
        allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    for t in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        cls = type(np.dtype(t))
        allowed[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return allowed


def _history_getattr(obj, name: str):
    """The one ``getattr`` an mmengine checkpoint needs: a HistoryBuffer's statistics methods."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is HistoryBuffer or isinstance(obj, HistoryBuffer):
        if name in ("mean", "min", "max", "current", "data") or name in getattr(HistoryBuffer, "_statistics_methods", {}):
            return getattr(obj, name)
    raise pickle.UnpicklingError(f"refused getattr({type(obj).__name__}, {name!r}) in an mmengine checkpoint")


class _MmengineUnpickler(pickle.Unpickler):
    """A restricted unpickler (the Python docs' "restricting globals"): any global outside
    :func:`_mmengine_globals` is refused, so a planted ``__reduce__`` cannot run code."""

    allowed: dict = {}

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name == "getattr":
            return _history_getattr
        key = f"{module}.{name}"
        if key in self.allowed:
            return self.allowed[key]
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {key} (weights_only)")


class _MmenginePickle:
    """A ``pickle_module`` for ``torch.load`` that unpickles with :class:`_MmengineUnpickler`."""

    Unpickler = _MmengineUnpickler
    load = staticmethod(lambda f, **kw: _MmengineUnpickler(f, **kw).load())
    __name__ = "nailseg_mmengine_pickle"


def _torch_load_mmengine(original, f, *args, **kwargs):
    _MmengineUnpickler.allowed = _mmengine_globals()
    kwargs.pop("weights_only", None)
    kwargs["pickle_module"] = _MmenginePickle
    # weights_only=False only hands unpickling to pickle_module: _MmengineUnpickler refuses every global
    # outside torch's weights_only allow-list plus HistoryBuffer (tested with a planted __reduce__).
    return original(f, *args, weights_only=False, **kwargs)


@contextlib.contextmanager
def mmengine_safe_loading():
    """mmengine calls ``torch.load`` itself (resume, load_from); inside this block every such call
    goes through the restricted unpickler, so a planted pickle cannot run code."""
    original = torch.load
    torch.load = lambda f, *args, **kwargs: _torch_load_mmengine(original, f, *args, **kwargs)
    try:
        yield
    finally:
        torch.load = original


def load_mmengine_checkpoint(path: Path) -> dict:
    """An mmengine checkpoint, read safely; corrupt or unsafe files are one ``ConfigError`` naming them."""
    with mmengine_safe_loading():
        ckpt = safe_load(path, "mmengine checkpoint", loader=torch.load)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{path}: not an mmengine checkpoint (no state_dict)")
    return ckpt
