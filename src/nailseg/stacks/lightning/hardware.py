"""What this machine's torch can do fast, for the shared precision rule in ``core.runtime``."""

from __future__ import annotations

import functools
import os

import torch

from nailseg.core.runtime import Precision, resolve_precision


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True where the CPU has Intel AMX tiles and oneDNN is built in: there torch's bf16
    convolutions run about 3x faster than fp32 (measured in docs/results.md). Without AMX,
    AVX-512 bf16 alone is slower than fp32 for training. ``NAILSEG_CPU_BF16=0`` turns it off."""
    if os.environ.get("NAILSEG_CPU_BF16", "").strip() == "0":
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume no AMX
        return False


def torch_precision(setting: str, accelerator: str) -> Precision:
    """``trainer.precision`` resolved for a torch training on this machine."""
    return resolve_precision(setting, accelerator, cpu_bf16=cpu_has_fast_bf16())
