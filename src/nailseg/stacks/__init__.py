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
    purpose: str = ""

    @property
    def module(self) -> str:
        return f"nailseg.stacks.{self.name}.stack"


STACKS: dict[str, StackSpec] = {spec.name: spec for spec in (
    StackSpec("lightning", ("smp", "segformer"), ("albumentations", "kornia", "dali"), "torch",
              ("torch", "lightning", "segmentation_models_pytorch"), ("state_dict", "hf", "onnx"),
              purpose="The PyTorch Lightning stack (model.family: smp or segformer)"),
    StackSpec("keras", ("sm",), ("albumentations", "tf"), "tf", ("tensorflow", "tf_keras", "segmentation_models"),
              ("savedmodel", "keras", "tflite"), optim_unsupported=("encoder_lr_scale",),
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
