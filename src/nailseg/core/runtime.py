"""Runtime rules every stack follows, written once: precision, device and rank, workers,
``drop_last``, the learning-rate schedule and where weights come from.

Framework-free: a stack passes in what only its framework can tell (is there a GPU?), so
the same YAML resolves to the same choices on Lightning, Keras and MMDetection.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# The Keras spellings and Lightning's mean the same thing on every stack.
_PRECISION_ALIASES = {"32": "32-true", "float32": "32-true", "mixed_float16": "16-mixed"}


@dataclass(frozen=True)
class Precision:
    """What ``trainer.precision`` resolves to on one machine."""

    name: str              # Lightning spelling: 32-true, 16-mixed, bf16-mixed
    channels_last: bool    # memory format for convolutions (tensor cores want NHWC)
    on_gpu: bool

    @property
    def amp(self) -> bool:
        return self.name != "32-true"


def resolve_accelerator(setting: str, has_gpu: bool) -> str:
    if setting == "auto":
        return "gpu" if has_gpu else "cpu"
    return "gpu" if setting == "cuda" else setting


def resolve_precision(setting: str, accelerator: str, *, cpu_bf16: bool = False, gpu_auto: str = "bf16-mixed",
                      channels_last_ok: bool = True) -> Precision:
    """``auto``: mixed precision on a GPU (``gpu_auto``: bf16 for torch; a stack whose kernels
    prefer float16 with loss scaling passes "16-mixed"). On a CPU, bf16 only where the stack says
    the CPU runs it fast (``cpu_bf16``: bf16 matrix units, where oneDNN's bf16 convolutions beat
    fp32, docs/results.md); elsewhere ``auto`` stays 32-bit. ``channels_last_ok``: the stack can use
    the NHWC memory format (torch) when it pays."""
    on_gpu = accelerator == "gpu"
    fast_bf16 = cpu_bf16 and accelerator == "cpu"
    if setting == "auto":
        name = gpu_auto if on_gpu else ("bf16-mixed" if fast_bf16 else "32-true")
    else:
        name = _PRECISION_ALIASES.get(setting, setting)
    channels_last = channels_last_ok and ((on_gpu and name != "32-true") or (fast_bf16 and name == "bf16-mixed"))
    return Precision(name=name, channels_last=channels_last, on_gpu=on_gpu)


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # Intel AMX tiles; AVX-512 BF16 (e.g. AMD Zen 4/5, Cooper Lake)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# What a CPU's flags mean for nailseg: bf16 matrix units (training precision) and int8 dot products
# (which quantisation settings ``export --int8`` tries first). Profiles, fastest first.
CPU_PROFILES = ("amx", "avx512-vnni", "avx2")
_PROFILE_FLAGS = {"amx": ("amx_int8",), "avx512-vnni": ("avx512_vnni", "avx_vnni")}
# The int8 settings (deploy/quantize.py: INT8_SETTINGS) each profile tries, first choice first: VNNI
# and AMX sum u8 x s8 products in int32, so full-range int8 weights first; AVX2 sums pairs in int16,
# which 7-bit weights cannot overflow.
INT8_LADDERS = {
    "amx": ("u8s8", "u8s8-7bit", "u8u8"),
    "avx512-vnni": ("u8s8", "u8s8-7bit", "u8u8"),
    "avx2": ("u8s8-7bit", "u8u8", "u8s8"),
}
REPORTED_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_profile(flags: set[str] | None = None) -> str:
    """``amx`` (AMX-INT8 tiles), ``avx512-vnni`` (VNNI int8 dot products, AVX-512 or AVX) or ``avx2``
    (no int8 dot-product instruction: u8 x s8 products are summed in int16 and can saturate)."""
    flags = cpu_flags() if flags is None else flags
    for profile, needs in _PROFILE_FLAGS.items():
        if flags & set(needs):
            return profile
    return "avx2"


def cpu_report(flags: set[str] | None = None) -> dict:
    """The flags that decide nailseg's CPU paths, and the profile they make (``doctor``, ``summary.json``,
    ``export.int8.json`` and every benchmark name it)."""
    flags = cpu_flags() if flags is None else flags
    return {"profile": cpu_profile(flags), "flags": [f for f in REPORTED_FLAGS if f in flags],
            "bf16_native": bool(flags & set(BF16_CPU_FLAGS))}


def cpu_has_bf16_flags() -> bool:
    """Native bf16 instructions on this CPU, unless ``NAILSEG_CPU_BF16=0`` turns them off."""
    return os.environ.get("NAILSEG_CPU_BF16", "").strip() != "0" and bool(cpu_flags() & set(BF16_CPU_FLAGS))


def global_rank() -> int:
    """This process's rank from the launcher's environment (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def world_size() -> int:
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if var in os.environ:
            return int(os.environ[var])
    return 1


def resolve_workers(setting: int | str) -> int:
    """``auto``: one loader worker per spare core (at most 8), none on a single core."""
    if setting != "auto":
        return int(setting)
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def drop_last(n_items: int, batch_size: int) -> bool:
    """Drop a ragged last training batch only when there are several batches (per rank), or when it
    would hold one sample: BatchNorm cannot normalise a single value per channel (UperNet's pooled
    1x1 branch raises on it)."""
    return n_items >= 4 * batch_size or (n_items > batch_size and n_items % batch_size == 1)


def lr_factor(epoch: int, epochs: int, warmup: int, schedule: str, power: float = 1.0) -> float:
    """Multiplier of the base lr during ``epoch``: linear warm-up, then cosine (to 1%), poly or constant.

    Every stack feeds this to its own scheduler (torch ``LambdaLR``, a Keras piecewise-constant
    schedule, mmengine's param schedulers), so one YAML gives one schedule.
    """
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    progress = min(1.0, (epoch - warmup) / max(1, epochs - warmup))
    if schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return max(0.0, 1.0 - progress) ** power
    return 1.0


def encoder_lr_scale(scale: float | None, default: float) -> float:
    """``optim.encoder_lr_scale``, or the model family's own default (``ModelBase.default_encoder_lr_scale``)
    when it is not set."""
    return default if scale is None else scale


@dataclass(frozen=True)
class WeightsSource:
    kind: Literal["none", "hub", "file", "provider"]
    value: str = ""


def resolve_weights(setting: str | None, key: str, *, check_online: str | tuple[str, ...] | None = None) -> WeightsSource:
    """``none`` | a local file or folder | a hub name. A hub name fails fast when offline,
    naming ``key``, instead of hanging in download retries."""
    from nailseg.errors import ConfigError

    if setting in (None, "", "none"):
        return WeightsSource("none")
    path = Path(setting).expanduser()
    if path.exists():
        return WeightsSource("file", str(path))
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("NAILSEG_OFFLINE") == "1":
        raise ConfigError(f"{key}={setting!r}: not a local file, and downloads are switched off "
                          "(HF_HUB_OFFLINE=1); use none or a path to a local weights file")
    if check_online is not None:
        from nailseg.core.net import online

        hosts = (check_online,) if isinstance(check_online, str) else check_online
        if not any(online(h) for h in hosts):
            raise ConfigError(f"{key}={setting!r}: not a local file, and weights cannot be downloaded "
                              "(no internet); use none or a path to a local weights file")
    return WeightsSource("hub", setting)
