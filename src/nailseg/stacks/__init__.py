"""The training stacks and their registry.

A stack is one folder (``stacks/<name>/``) whose ``stack.py`` exposes ``STACK``, an object
that satisfies :class:`nailseg.engine.Stack`, plus one :class:`StackSpec` line below. The spec
is plain data: the config validates ``model.family`` and ``data.pipeline`` against it and the
CLI names the extra to install, all without importing the stack's framework. Only
``stacks/<name>/`` imports that framework, and torch and TensorFlow never share a process.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from nailseg.errors import ConfigError, MissingDependencyError


@dataclass(frozen=True)
class StackSpec:
    name: str
    families: tuple[str, ...]       # model.family values this stack trains
    pipelines: tuple[str, ...]      # data.pipeline values it supports; the first is what ``auto`` means
    extra: str                      # pip install 'nailseg[extra]'
    requires: tuple[str, ...]       # import names checked before the stack is imported
    exports: tuple[str, ...]        # nailseg export --format values
    capabilities: frozenset[str] = frozenset()  # "instances": COCO mAP and per-instance predictions
    optim_unsupported: tuple[str, ...] = ()     # optim keys this stack cannot honour (refused at config time)
    benches: tuple[str, ...] = ()   # `nailseg bench VERB` it runs: stacks/<name>/bench_<verb>.py, with run() and CHOICES
    purpose: str = ""

    @property
    def module(self) -> str:
        return f"nailseg.stacks.{self.name}.stack"


STACKS: dict[str, StackSpec] = {spec.name: spec for spec in (
    StackSpec("lightning", ("smp", "segformer"), ("albumentations", "kornia", "dali"), "torch",
              ("torch", "lightning", "segmentation_models_pytorch"), ("state_dict", "hf", "onnx"),
              benches=("loaders", "train"), purpose="The PyTorch Lightning stack (model.family: smp or segformer)"),
    StackSpec("keras", ("sm",), ("albumentations", "tf"), "tf", ("tensorflow", "tf_keras", "segmentation_models"),
              ("savedmodel", "keras", "tflite"), optim_unsupported=("encoder_lr_scale",), benches=("tfdata",),
              purpose="The Keras stack (model.family: sm)"),
    StackSpec("mmdet", ("maskrcnn",), ("mmdet",), "mmdet", ("torch", "mmengine", "mmcv", "mmdet", "pycocotools"),
              ("state_dict",), capabilities=frozenset({"instances"}),
              purpose="The MMDetection stack (model.family: maskrcnn)"),
)}


def spec_for_family(family: str) -> StackSpec:
    for spec in STACKS.values():
        if family in spec.families:
            return spec
    raise ConfigError(f"model.family={family!r}: no stack trains it "
                      f"(families: {', '.join(f for s in STACKS.values() for f in s.families)})")


def load_stack(name: str):
    """Import a stack's module (checking its packages first) and return its ``STACK``."""
    spec = STACKS[name]
    for dep in spec.requires:
        if importlib.util.find_spec(dep) is None:
            raise MissingDependencyError(dep, spec.extra, spec.purpose)
    return importlib.import_module(spec.module).STACK


def load_bench(verb: str, stack: str | None = None):
    """The module behind ``nailseg bench VERB`` (``stack``: the config's stack, when the benchmark
    runs a config), found through the specs: the CLI names no stack module."""
    specs = [s for s in STACKS.values() if verb in s.benches and (stack is None or s.name == stack)]
    if not specs:
        owners = [s.name for s in STACKS.values() if verb in s.benches]
        raise ConfigError(f"nailseg bench {verb}: the {stack} stack has no such benchmark "
                          f"(it runs on: {', '.join(owners) or 'no stack'})")
    load_stack(specs[0].name)
    return importlib.import_module(f"nailseg.stacks.{specs[0].name}.bench_{verb}")
