"""What this machine's torch can do fast, for the shared precision rule in ``core.runtime``."""

from __future__ import annotations

import functools
import os

import torch

from nailseg.core.runtime import BF16_CPU_FLAGS, Precision, cpu_flags, resolve_precision


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels on this CPU: Intel AMX tiles, or AVX-512 BF16
    instructions. There torch's bf16 + channels_last convolutions train 3.0x (AMX Xeon) to 3.3-3.9x
    (AVX-512 BF16 EPYC) faster than fp32 (docs/results.md); a CPU with neither emulates bf16 and is
    slower than fp32. ``NAILSEG_CPU_BF16=0`` turns it off."""
    if os.environ.get("NAILSEG_CPU_BF16", "").strip() == "0":
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if torch.cpu._is_amx_tile_supported():
            return True
    except (AttributeError, RuntimeError):  # a torch without the probe: fall back to the CPU flags
        pass
    return bool(_cpu_flags() & set(BF16_CPU_FLAGS))


def _cpu_flags() -> set[str]:  # a seam the tests replace
    return cpu_flags()


def torch_precision(setting: str, accelerator: str) -> Precision:
    """``trainer.precision`` resolved for a torch training on this machine."""
    return resolve_precision(setting, accelerator, cpu_bf16=cpu_has_fast_bf16())
