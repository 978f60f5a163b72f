"""What nailseg can train and how, as plain data: one row per stack and one per pipeline.

This module imports nothing from nailseg but its errors, and no framework, so the config, the CLI, ``doctor``
and the data layer all read the same rows without importing torch or TensorFlow. Adding a
pipeline is one :class:`PipelineSpec` row plus its translations; adding a stack is one folder
plus one :class:`StackSpec` row (or :func:`register_stack` from a plugin, see below).

Plugins: a module named in ``NAILSEG_STACKS`` (comma-separated) or published under the
``nailseg.stacks`` entry-point group is imported the first time a stack is looked up, and
registers its own spec and model family. ``nailseg compare`` children inherit the variable.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from nailseg.errors import ConfigError

# The augmentation ops of the config (``augment.train[*].name``), in spec order.
ALL_OPS: frozenset[str] = frozenset({"hflip", "vflip", "affine", "random_resized_crop", "brightness_contrast",
                                     "hue_saturation", "gauss_noise", "blur"})


@dataclass(frozen=True)
class PipelineSpec:
    """One data pipeline (``data.pipeline``): what it can translate and how it reads the data."""

    name: str
    ops: frozenset[str]          # augmentation ops it translates (its table is tested against this)
    reads_cache: bool            # reads through the decode cache (``data.cache``)
    can_balance: bool            # can draw weighted samples (``data.balance``)
    device: str                  # where it augments: "cpu", "device" (the training device) or "cpu+gpu"
    extras: tuple[str, ...] = ()  # extras it needs beyond its stack's own
    why_no_cache: str = ""       # the refusal of data.cache: ram/disk when it does not read the cache
    purpose: str = ""
    can_crop: bool = False       # can train on random windows of the picture (``data.crop_size``)
    module: str = ""             # the import it needs beyond its stack's (checked at preflight, extra named)
    keeps_labels: bool = False   # moves class-index masks with nearest-neighbour and pads with the ignore value

    @property
    def augments_on_device(self) -> bool:
        """The batch is augmented and normalised on the training device, so the loader only decodes
        and resizes (kornia)."""
        return self.device == "device"


PIPELINE_SPECS: dict[str, PipelineSpec] = {p.name: p for p in (
    PipelineSpec("albumentations", ALL_OPS, reads_cache=True, can_balance=True, device="cpu", can_crop=True,
                 keeps_labels=True,
                 purpose="albumentations in the loader workers (torch DataLoader or tf.numpy_function)"),
    PipelineSpec("kornia", ALL_OPS, reads_cache=True, can_balance=True, device="device", extras=("gpuaug",),
                 can_crop=True, module="kornia", keeps_labels=True,
                 purpose="decode + resize in the workers, kornia augments the batch on the training device"),
    PipelineSpec("dali", ALL_OPS, reads_cache=False, can_balance=False, device="cpu+gpu", extras=("dali",),
                 can_crop=True, module="nvidia.dali", keeps_labels=True,
                 why_no_cache="DALI reads and decodes the files itself (on the GPU with nvJPEG), so a CPU "
                              "decode cache would undo what it is for",
                 purpose="NVIDIA DALI reads, decodes and augments (on the GPU when there is one)"),
    PipelineSpec("tf", ALL_OPS, reads_cache=True, can_balance=True, device="cpu", can_crop=True,
                 purpose="tf.data with tf.image ops, traced into the graph"),
    # random_resized_crop: its window is the picture at the training size, which Mask R-CNN does not need
    PipelineSpec("mmdet", ALL_OPS - {"random_resized_crop"}, reads_cache=False, can_balance=False, device="cpu",
                 keeps_labels=True,  # its instances carry their category through every op
                 why_no_cache="MMDetection's pipeline reads the files itself",
                 purpose="MMDetection's own data pipeline (RandomFlip, and Albu for the other ops)"),
)}
PIPELINES: tuple[str, ...] = ("auto", *PIPELINE_SPECS)


@dataclass(frozen=True)
class StackSpec:
    """One training stack: the model families it trains and what it offers."""

    name: str
    families: tuple[str, ...]       # model.family values this stack trains
    pipelines: tuple[str, ...]      # data.pipeline values it supports; the first is what ``auto`` means
    extra: str                      # pip install 'nailseg[extra]'
    requires: tuple[str, ...]       # import names checked before the stack is imported
    exports: tuple[str, ...]        # nailseg export --format values
    # "instances": COCO mAP and per-instance predictions; "pretrain": synthetic pretraining (model.init_from);
    # "crop": its networks take any input size, so they can train on windows (data.crop_size);
    # "budget": it sizes its epochs and schedule to trainer.max_time (core/budget.py);
    # "eject": it writes the experiment as a plain script of its framework (Stack.eject);
    # "multiclass": it trains many classes (data.classes) with softmax and the ignore value
    capabilities: frozenset[str] = frozenset()
    optim_unsupported: tuple[str, ...] = ()     # optim keys this stack cannot honour (refused at config time)
    benches: tuple[str, ...] = ()   # `nailseg bench VERB` it runs: <package>.bench_<verb>, with run() and CHOICES
    purpose: str = ""
    folder_exports: tuple[str, ...] = ()  # the export formats that write a folder, not a file
    module_name: str = ""           # the module exposing STACK; default nailseg.stacks.<name>.stack

    @property
    def module(self) -> str:
        return self.module_name or f"nailseg.stacks.{self.name}.stack"

    def bench_module(self, verb: str) -> str:
        return f"{self.module.rsplit('.', 1)[0]}.bench_{verb}"


STACKS: dict[str, StackSpec] = {spec.name: spec for spec in (
    StackSpec("lightning", ("smp", "upernet", "segformer"), ("albumentations", "kornia", "dali"), "torch",
              ("torch", "lightning", "segmentation_models_pytorch"), ("state_dict", "hf", "onnx"),
              capabilities=frozenset({"pretrain", "crop", "budget", "eject", "multiclass"}), benches=("loaders", "train"),
              folder_exports=("hf",),
              purpose="The PyTorch Lightning stack (model.family: smp, or upernet and segformer from transformers)"),
    StackSpec("keras", ("sm",), ("albumentations", "tf"), "tf", ("tensorflow", "tf_keras", "segmentation_models"),
              ("savedmodel", "keras", "tflite"), optim_unsupported=("freeze_encoder_bn",),
              capabilities=frozenset({"crop", "budget", "eject", "multiclass"}),
              benches=("tfdata", "train"),
              folder_exports=("savedmodel",),
              purpose="The Keras stack (model.family: sm)"),
    StackSpec("mmdet", ("maskrcnn",), ("mmdet",), "mmdet", ("torch", "mmengine", "mmcv", "mmdet", "pycocotools"),
              ("state_dict",), capabilities=frozenset({"instances", "multiclass", "eject", "budget"}),
              folder_exports=("state_dict",),  # the weights and the mmdet config they need, side by side
              purpose="The MMDetection stack (model.family: maskrcnn)"),
)}
PLUGIN_ENV = "NAILSEG_STACKS"
_loaded: set[str] = set()  # plugin modules imported so far ("" stands for the entry points)


def register_stack(spec: StackSpec) -> StackSpec:
    """Add a stack from outside nailseg (a plugin module; its model family registers with
    :func:`nailseg.config.register_family`). Its pipelines must be rows of ``PIPELINE_SPECS``."""
    unknown = [p for p in spec.pipelines if p not in PIPELINE_SPECS]
    if unknown:
        raise ValueError(f"stack {spec.name}: unknown pipeline(s) {', '.join(unknown)}")
    taken = {f for s in STACKS.values() if s.name != spec.name for f in s.families}
    if taken & set(spec.families):
        raise ValueError(f"stack {spec.name}: model.family {', '.join(sorted(taken & set(spec.families)))} "
                         f"is trained by another stack")
    STACKS[spec.name] = spec
    return spec


def load_plugins() -> None:
    """Import the plugin stacks once (``NAILSEG_STACKS`` and the ``nailseg.stacks`` entry points)."""
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGIN_ENV, "").split(","))):
        if name not in _loaded:  # checked each time: a forked or re-configured process may add some
            _loaded.add(name)
            try:
                importlib.import_module(name)
            except ImportError as err:
                _loaded.discard(name)
                raise ConfigError(f"{PLUGIN_ENV}={os.environ[PLUGIN_ENV]}: cannot import the stack plugin "
                                  f"{name!r} ({err}); check the name and that it is on the Python path") from None
    if "" not in _loaded:
        _loaded.add("")
        from importlib.metadata import entry_points

        for entry in entry_points(group="nailseg.stacks"):
            entry.load()


def export_formats() -> list[str]:
    """Every ``nailseg export --format`` value some stack writes."""
    load_plugins()
    return list(dict.fromkeys(f for s in STACKS.values() for f in s.exports))


def spec_for_family(family: str) -> StackSpec:
    """The stack that trains ``model.family``; ``KeyError`` when none does."""
    load_plugins()
    for spec in STACKS.values():
        if family in spec.families:
            return spec
    raise KeyError(family)

