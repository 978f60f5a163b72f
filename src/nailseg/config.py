"""The typed experiment config: one YAML file drives every stack.

``load_experiment(path, overrides)`` reads the YAML, applies dotted ``key=value``
overrides, and validates the result. Unknown keys and wrong types fail before anything
runs, with an error naming the key (and the nearest valid key when it looks like a typo).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from nailseg.core.augment import AugmentOp, default_train_augment
from nailseg.errors import ConfigError
from nailseg.specs import PIPELINE_SPECS, PIPELINES, STACKS, load_plugins, spec_for_family


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Section):
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)
    folds: int | None = Field(None, ge=2, description="k-fold cross-validation: the number of folds (test = the "
                                                      "held-out fold; val = a val share of the other folds; "
                                                      "the test fraction is then unused)")
    fold: int = Field(0, ge=0, description="with folds: which fold is held out as the test split (0-based)")

    @model_validator(mode="after")
    def _fold_in_range(self):
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is out of range for {self.folds} folds (0 to {self.folds - 1})")
        return self


class BalanceConfig(_Section):
    """Balanced sampling of training images by group (see nailseg.core.data.balance)."""

    by: Literal["fg_bins", "folder", "csv"] = "fg_bins"
    bins: int = Field(4, ge=2, description="fg_bins: number of bins")
    binning: Literal["log", "uniform", "quantile"] = Field("log", description="fg_bins: how bin edges are set")
    csv: str | None = Field(None, description="csv: the CSV file")
    column: str | None = Field(None, description="csv: the column that names the group")
    key_column: str = Field("file", description="csv: the column with the file name")
    weights: Literal["equal", "inverse", "sqrt_inverse"] | dict[str, float] = "equal"
    epoch_size: int | None = Field(None, ge=1, le=10_000_000, description="samples per epoch (default: training "
                                                                         "set size)")


MAX_IMAGE_SIDE = 4096  # a side beyond this is a typo, not a training size (and would exhaust memory)

class DataConfig(_Section):
    root: str = "data/synth"
    image_size: int | tuple[int, int] = Field(384, description="side, or (height, width)")
    crop_size: int | tuple[int, int] | None = Field(
        None, description="train on random windows of this side (or (height, width)) cut from the image_size "
                          "picture, so the network sees image_size detail at crop_size cost; validation, test, "
                          "export and serving see the whole image_size picture")
    split: SplitConfig = SplitConfig()
    seed: int = Field(42, ge=0, le=2**32 - 1)
    num_workers: int | Literal["auto"] = "auto"
    balance: BalanceConfig | None = None
    pipeline: Literal[PIPELINES] = Field(  # type: ignore[valid-type]  # the rows of specs.PIPELINE_SPECS
        "auto", description="auto: the stack's default; albumentations: CPU workers (DataLoader or tf.data); "
                            "kornia: augmentation on the GPU; dali: NVIDIA DALI; tf: tf.image ops (Keras); "
                            "mmdet: MMDetection's own pipeline (Mask R-CNN)")
    cache: Literal["none", "ram", "disk", "auto"] = Field(
        "auto", description="decode each pair once, at cache_scale x the training side: ram (shared memory), "
                            "disk (a memory-mapped file in the run folder or cache_dir), auto (ram when it fits "
                            "in cache_ram_share of free memory, else none), none (decode every epoch)")
    cache_scale: float = Field(1.25, ge=1.0, le=8.0, description="longer side kept, x the training side, so crops "
                                                               "and scale augmentation keep their pixels")
    cache_dir: str | None = Field(None, description="disk cache folder (default: RUN/cache)")
    cache_ram_share: float = Field(0.5, gt=0, le=0.9, description="auto/ram: largest share of free memory used")

    @field_validator("root")
    @classmethod
    def _root_named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty: name the data folder (images/ + labels/ or masks/)")
        return v

    @field_validator("num_workers")
    @classmethod
    def _workers_not_negative(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("must be auto or a whole number >= 0")
        return v

    @field_validator("image_size", "crop_size")
    @classmethod
    def _positive_multiple_of_32(cls, v):
        if v is None:
            return v
        sides = (v, v) if isinstance(v, int) else v
        for side in sides:
            if side < 32 or side % 32 or side > MAX_IMAGE_SIDE:
                raise ValueError(f"{side} must be a multiple of 32 from 32 to {MAX_IMAGE_SIDE} "
                                 "(encoders downsample by 32)")
        return v

    @model_validator(mode="after")
    def _crop_inside_picture(self):
        if self.crop_size is not None and any(c > s for c, s in zip(self.crop_hw, self.size_hw)):
            raise ValueError(f"data.crop_size: {list(self.crop_hw)} is larger than data.image_size "
                             f"{list(self.size_hw)}; a crop is a window of the resized picture (set data.crop_size "
                             "too, or data.crop_size=null to train on whole pictures)")
        return self

    @property
    def size_hw(self) -> tuple[int, int]:
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)

    @property
    def crop_hw(self) -> tuple[int, int] | None:
        """``crop_size`` as (height, width), or None: training sees whole pictures."""
        c = self.crop_size
        return None if c is None else (c, c) if isinstance(c, int) else tuple(c)


class AugmentConfig(_Section):
    train: list[AugmentOp] = Field(default_factory=default_train_augment)


class _ModelBase(_Section):
    default_encoder_lr_scale: ClassVar[float] = 1.0  # optim.encoder_lr_scale when it is not set
    encoder_has_batchnorm: ClassVar[bool] = True     # optim.freeze_encoder_bn has something to freeze

    def starts_pretrained(self) -> bool:
        """Whether the encoder starts from trained weights (so its BatchNorm statistics mean something)."""
        return any(str(getattr(self, key, "none")) not in ("", "none")
                   for key in ("encoder_weights", "init_from", "pretrained", "load_from"))

    def describe(self) -> dict[str, str]:
        """family / arch / encoder for tables (``nailseg compare``), whatever the family calls them."""
        return {"family": self.family, "arch": getattr(self, "arch", self.family),
                "encoder": getattr(self, "encoder", "")}

    @property
    def catalogue_encoder(self) -> str | None:
        """The encoder's name in the weights catalogue (``core/weights.py``: its provider and input
        normalisation), for the families whose encoder is one of its entries; ``None`` otherwise."""
        return None


ModelBase = _ModelBase  # what a plugin's model family subclasses (with register_family)


class SmpModel(_ModelBase):
    """segmentation_models_pytorch: any architecture with any encoder (Lightning stack)."""

    family: Literal["smp"] = "smp"
    arch: str = "Unet"
    encoder: str = "efficientnet-b4"
    encoder_weights: str = Field("none", description="none | imagenet (offline from an installed weights package "
                                                     "when one ships this encoder, see `nailseg weights list`; "
                                                     "else smp's download) | a local file (smp, timm, torchvision "
                                                     "or EfficientNet-PyTorch layout)")
    classes: int = Field(1, ge=1, le=2, description="1: one logit + sigmoid; 2: softmax over background/nail")
    init_from: str = Field("none", description="none | a run folder (its best weights) | a weights file: "
                                               "fine-tune from another run, e.g. one on synthetic nails")

    @property
    def catalogue_encoder(self) -> str | None:
        return self.encoder


class UpernetModel(_ModelBase):
    """transformers ``UperNetForSemanticSegmentation`` over a timm backbone (transformers' own
    ``TimmBackbone``), inside Lightning: the Hugging Face model that starts from the same offline
    ImageNet encoder as the smp recipe."""

    family: Literal["upernet"]
    default_encoder_lr_scale: ClassVar[float] = 0.5  # as the smp recipe's: the head starts random
    encoder: str = Field("tu-tf_efficientnet_lite0", description="tu-<timm model>: the backbone, named as in "
                                                                 "smp and the weights catalogue")
    encoder_weights: str = Field("none", description="none | imagenet (offline from an installed weights package, "
                                                     "see `nailseg weights list`; else timm's download) | a local file")
    hidden_size: int = Field(128, ge=16, le=1024, description="UperNet's channel width (transformers' default "
                                                              "512 is sized for GPUs)")
    classes: int = Field(1, ge=1, le=2, description="1: one logit + sigmoid; 2: softmax over background/nail")
    init_from: str = Field("none", description="none | a run folder | a weights file (see smp)")

    @field_validator("encoder")
    @classmethod
    def _timm_name(cls, v: str) -> str:
        if not v.startswith("tu-"):
            raise ValueError(f"{v!r}: a timm backbone, named tu-<timm model> (e.g. tu-tf_efficientnet_lite0)")
        return v

    @property
    def catalogue_encoder(self) -> str | None:
        return self.encoder

    def describe(self) -> dict[str, str]:
        return {"family": "upernet", "arch": "UperNet", "encoder": self.encoder}


class SegformerModel(_ModelBase):
    """transformers SegFormer inside Lightning."""

    family: Literal["segformer"]
    default_encoder_lr_scale: ClassVar[float] = 0.1  # its encoder is the pretrained-style half
    encoder_has_batchnorm: ClassVar[bool] = False    # Mix Transformer blocks use LayerNorm
    variant: Literal["b0", "b1", "b2", "b3", "b4", "b5"] = "b0"
    pretrained: str = Field("none", description="none | hub id | local folder (save_pretrained)")
    classes: int = Field(1, ge=1, le=2, description="1: one logit + sigmoid; 2: softmax over background/nail")
    init_from: str = Field("none", description="none | a run folder | a weights file (see smp)")

    def describe(self) -> dict[str, str]:
        return {"family": "segformer", "arch": "SegFormer", "encoder": f"mit-{self.variant}"}


class SmModel(_ModelBase):
    """segmentation_models on tf.keras (Keras stack)."""

    family: Literal["sm"]
    arch: str = "Unet"
    encoder: str = Field("efficientnetb4", description="sm backbone, e.g. resnet18, efficientnetb4, or "
                         "efficientnet-lite0/1/2 (ImageNet weights offline with nailseg[weights])")
    encoder_weights: str = Field("none", description="none | imagenet (offline for efficientnet-lite0/1/2, "
                                 "else sm's download) | path to a local .h5 file")

    @property
    def catalogue_encoder(self) -> str | None:
        from nailseg.core.weights import SM_LITE_ENCODERS

        return SM_LITE_ENCODERS.get(self.encoder)


MASKRCNN_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")  # MMDetection's own ResNet backbone


class MaskrcnnModel(_ModelBase):
    """MMDetection Mask R-CNN (instance segmentation), on MMDetection's ResNet or on a timm encoder
    (``tu-<timm model>``) registered in MMDetection's registry (``stacks/mmdet/backbone.py``)."""

    family: Literal["maskrcnn"]
    encoder: str = Field("resnet50", description="resnet18/34/50/101 (MMDetection's ResNet) | tu-<timm model>, "
                                                 "e.g. tu-tf_efficientnet_lite0 (ImageNet weights offline with "
                                                 "nailseg[weights])")
    encoder_weights: str = Field("none", description="none | imagenet (tu- encoders: offline from an installed "
                                                     "weights package, see `nailseg weights list`) | a local file "
                                                     "(tu- encoders)")
    load_from: str = Field("none", description="none | a local mmdet checkpoint | a URL (needs internet)")
    min_area: int = Field(4, ge=0, description="mask regions below this many pixels are not instances")
    max_instances: int = Field(30, ge=1, le=1000, description="most instances kept per image (MMDetection's "
                               "max_per_img; its COCO default of 100 is far above the nails of a few hands, "
                               "and the mask head's work grows with it)")

    @field_validator("encoder")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        if v not in MASKRCNN_RESNETS and not (v.startswith("tu-") and len(v) > 3):
            raise ValueError(f"{v!r}: one of {', '.join(MASKRCNN_RESNETS)}, or a timm encoder as tu-<timm model> "
                             "(e.g. tu-tf_efficientnet_lite0)")
        return v

    @model_validator(mode="after")
    def _weights_for_timm_only(self):
        if self.encoder_weights not in ("", "none") and not self.encoder.startswith("tu-"):
            raise ValueError(f"model.encoder_weights={self.encoder_weights!r}: MMDetection's {self.encoder} has no "
                             "offline ImageNet weights; use a tu- encoder (e.g. tu-tf_efficientnet_lite0) or "
                             "model.load_from")
        return self

    @property
    def catalogue_encoder(self) -> str | None:
        return self.encoder if self.encoder.startswith("tu-") else None

    def describe(self) -> dict[str, str]:
        return {"family": "maskrcnn", "arch": "MaskRCNN", "encoder": self.encoder}


ModelConfig = Union[SmpModel, UpernetModel, SegformerModel, SmModel, MaskrcnnModel]  # the built-in families
MODEL_CLASSES: dict[str, type[_ModelBase]] = {}


def register_family(cls: type[_ModelBase]) -> type[_ModelBase]:
    """Add a ``model.family`` (its class declares ``family: Literal["name"]``). A plugin stack calls
    this for its own family, next to :func:`nailseg.specs.register_stack`."""
    (family,) = get_args(cls.model_fields["family"].annotation)
    MODEL_CLASSES[family] = cls
    return cls


for _cls in (SmpModel, UpernetModel, SegformerModel, SmModel, MaskrcnnModel):
    register_family(_cls)


def _model_section(raw: Any) -> tuple[_ModelBase | None, list[dict[str, Any]]]:
    """The ``model:`` section as its family's class, or the errors (in pydantic's shape, located
    under ``model.<family>``) that say why not. Families are a registry, so the section is
    dispatched here rather than by a fixed union."""
    if isinstance(raw, _ModelBase):
        return raw, []
    if not isinstance(raw, dict):
        return None, [{"type": "model_type", "loc": ("model",), "msg": "must be a mapping (family:, ...)",
                       "input": raw}]
    load_plugins()
    family = raw.get("family", "smp")
    cls = MODEL_CLASSES.get(family) if isinstance(family, str) else None
    if cls is None:
        return None, [{"type": "union_tag_invalid", "loc": ("model",), "msg": "unknown family", "input": family}]
    try:
        return cls.model_validate({**raw, "family": family}), []
    except ValidationError as err:
        return None, [{**e, "loc": ("model", family, *e["loc"])} for e in err.errors()]


class LossConfig(_Section):
    name: Literal["dice_bce", "dice", "bce", "focal", "lovasz", "jaccard", "tversky"] = "dice_bce"
    dice_weight: float = Field(1.0, ge=0)
    bce_weight: float = Field(1.0, ge=0)


class OptimConfig(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False)
    scheduler: Literal["cosine", "poly", "none"] = "cosine"
    poly_power: float = Field(1.0, gt=0, description="poly: lr * (1 - progress) ** power (SegFormer's schedule)")
    warmup_epochs: int = Field(0, ge=0)
    encoder_lr_scale: float | None = Field(
        None, gt=0, description="encoder lr = lr * scale; default 0.1 for segformer, 1.0 for smp")
    freeze_encoder_bn: bool = Field(
        False, description="keep the encoder's BatchNorm running statistics at their pretrained values while "
                           "training (its affine weights still learn), as when fine-tuning an ImageNet encoder "
                           "on small batches of few photos")


class TrainerConfig(_Section):
    max_epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    precision: Literal["auto", "32", "32-true", "16-mixed", "bf16-mixed", "mixed_float16", "float32"] = Field(
        "auto", description="auto: bf16-mixed + channels_last (Lightning) / mixed_float16 (Keras) on a GPU; "
                        "bf16-mixed + channels_last for torch on a CPU with AMX; else 32")
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "ddp_notebook", "fsdp",
                      "deepspeed", "single_device"] = "auto"
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(None, ge=0, allow_inf_nan=False)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    limit_train_batches: int | float | None = Field(None, description="batches per epoch: a whole number >= 1, "
                                                                      "or a share in (0, 1]")
    limit_val_batches: int | float | None = Field(None, description="as limit_train_batches")
    deterministic: bool = False
    max_time: str | None = Field(None, description="a wall-clock budget (20m, 1h30m, 900s): the epochs that fit, "
                                                   "measured on the first two, and the schedule sized to them")

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, v):
        from nailseg.core.budget import parse_duration

        if v is None:
            return v
        parse_duration(v)
        return str(v)

    @property
    def max_time_s(self) -> float | None:
        from nailseg.core.budget import parse_duration

        return None if self.max_time is None else parse_duration(self.max_time)

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _count_or_share(cls, v):
        if v is None or isinstance(v, bool):
            if isinstance(v, bool):
                raise ValueError("must be a whole number >= 1 or a share in (0, 1]")
            return v
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"{v}: a number of batches must be at least 1")
            return v
        if not (0.0 < v <= 1.0):
            raise ValueError(f"{v}: a share of the batches must be in (0, 1] (or give a whole number)")
        return v

    @model_validator(mode="after")
    def _launchable_here(self):
        import os as _os

        cluster = any(v in _os.environ for v in ("SLURM_NTASKS", "WORLD_SIZE", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"))
        if self.num_nodes > 1 and not cluster:
            raise ValueError(f"num_nodes={self.num_nodes}: several nodes need a cluster launcher (SLURM or torchrun "
                             "sets WORLD_SIZE/MASTER_ADDR); none is set, so training would wait forever")
        return self


class WandbConfig(_Section):
    enabled: bool = False
    project: str = "nailseg"
    mode: Literal["offline", "online"] = "offline"


class LoggingConfig(_Section):
    tensorboard: bool = True
    wandb: WandbConfig = WandbConfig()
    predictions: int = Field(8, ge=0, description="validation overlays written at the end")


class PretrainConfig(_Section):
    """Synthetic pretraining, then fine-tuning: before the real training, the same model trains on
    ``nailseg data synth`` pictures and the real training starts from its best weights
    (``model.init_from``). No download: the synthetic nails are drawn by nailseg itself."""

    synth: int = Field(240, ge=8, le=20000, description="number of synthetic pictures to draw")
    synth_size: str = Field("384x288", description="WIDTHxHEIGHT of each synthetic picture (36 to 2048 a side)")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    image_size: int = Field(192, ge=32, le=MAX_IMAGE_SIDE, description="training side during pretraining")
    max_epochs: int = Field(12, ge=1)
    batch_size: int | None = Field(None, ge=1, description="default: trainer.batch_size")
    lr: float | None = Field(None, gt=0, description="default: optim.lr")

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"{v} must be a multiple of 32")
        return v

    @field_validator("synth_size")
    @classmethod
    def _drawable(cls, v: str) -> str:
        from nailseg.core.data.synth import check_size

        check_size(v)  # ValueError naming the bounds; pydantic names the key
        return v


MAX_NAME_BYTES = 255  # one path component on Linux/macOS file systems


class RunConfig(_Section):
    dir: str = "runs"
    name: str | None = None

    @field_validator("dir", "name")
    @classmethod
    def _plain_path(cls, v):
        if v is None:
            return v
        if "\x00" in v:
            raise ValueError("contains a NUL character")
        if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in v.split("/")):
            raise ValueError(f"a folder name is longer than {MAX_NAME_BYTES} bytes")
        return v


class Experiment(_Section):
    """Everything one training run needs. Key names are a public interface."""

    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: SerializeAsAny[_ModelBase] = SmpModel()  # one of MODEL_CLASSES, chosen by model.family
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    logging: LoggingConfig = LoggingConfig()
    run: RunConfig = RunConfig()
    pretrain: PretrainConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _family_model(cls, raw):
        """``model:`` as its family's class (``experiment_from_dict`` reports its errors key by key)."""
        if isinstance(raw, dict) and "model" in raw:
            model, errors = _model_section(raw["model"])
            if errors:
                e = errors[0]
                raise ValueError(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}")
            raw = {**raw, "model": model}
        return raw

    @model_validator(mode="after")
    def _stack_can_do_it(self):
        """Refuse, at config time, what the chosen stack or pipeline cannot do."""
        spec = self.stack_spec
        if self.data.pipeline != "auto" and self.data.pipeline not in spec.pipelines:
            raise ValueError(f"data.pipeline: {self.data.pipeline} is not a pipeline of the {spec.name} stack "
                             f"(model.family {self.model.family}); it supports auto, {', '.join(spec.pipelines)}")
        pipeline = PIPELINE_SPECS[self.pipeline]
        missing = [op.name for op in self.augment.train if op.name not in pipeline.ops]
        if missing:
            raise ValueError(f"augment.train: {', '.join(missing)} cannot run on the {pipeline.name} pipeline "
                             f"(it has {', '.join(sorted(pipeline.ops))})")
        if self.data.cache in ("ram", "disk") and not pipeline.reads_cache:
            raise ValueError(f"data.cache: {self.data.cache} cannot serve the {pipeline.name} pipeline: "
                             f"{pipeline.why_no_cache}; use data.cache: none (or auto)")
        if self.data.crop_size is not None and not ("crop" in spec.capabilities and pipeline.can_crop):
            croppers = [s.name for s in STACKS.values() if "crop" in s.capabilities]
            why = (f"the {spec.name} stack does not train on windows (the {', '.join(croppers)} stack does)"
                   if "crop" not in spec.capabilities else f"the {pipeline.name} pipeline cannot cut windows")
            raise ValueError(f"data.crop_size: {why}; remove it and train on the whole data.image_size picture")
        if self.trainer.max_time is not None and "budget" not in spec.capabilities:
            budgeted = [s.name for s in STACKS.values() if "budget" in s.capabilities]
            raise ValueError(f"trainer.max_time: the {spec.name} stack cannot size its epochs to a time budget yet "
                             f"(the {', '.join(budgeted)} stack can); remove it and set trainer.max_epochs")
        if self.data.balance is not None and not pipeline.can_balance:
            raise ValueError(f"data.balance: the {pipeline.name} pipeline cannot draw weighted samples "
                             f"(use data.pipeline: {spec.pipelines[0]})")
        if self.pretrain is not None and ("pretrain" not in spec.capabilities
                                          or getattr(self.model, "init_from", "none") not in ("", "none")):
            pretrainable = [s.name for s in STACKS.values() if "pretrain" in s.capabilities]
            raise ValueError(f"pretrain: synthetic pretraining needs a stack that can start from it "
                             f"({', '.join(pretrainable)}) and no model.init_from (pretraining sets it)")
        for key in spec.optim_unsupported:
            value = getattr(self.optim, key)
            unset = value == OptimConfig.model_fields[key].default or (key == "encoder_lr_scale" and value == 1.0)
            if not unset:
                raise ValueError(f"optim.{key}: the {spec.name} stack cannot honour it (got {value}); remove it")
        if self.optim.freeze_encoder_bn:
            self._check_bn_freeze()
        return self

    def _check_bn_freeze(self) -> None:
        if not self.model.encoder_has_batchnorm:
            raise ValueError(f"optim.freeze_encoder_bn: the {self.model.family} encoder has no BatchNorm layers "
                             "to freeze; remove it")
        if not (self.model.starts_pretrained() or self.pretrain is not None):
            raise ValueError("optim.freeze_encoder_bn: the encoder starts from random weights, so its BatchNorm "
                             "statistics are not worth keeping; set model.encoder_weights (or init_from, "
                             "load_from, pretrain) or remove it")

    @property
    def stack_spec(self):
        try:
            return spec_for_family(self.model.family)
        except KeyError:
            raise ValueError(f"model.family={self.model.family!r}: no stack trains it") from None

    @property
    def stack(self) -> str:
        """Which stack trains this model family."""
        return self.stack_spec.name

    @property
    def pipeline(self) -> str:
        """``data.pipeline`` with ``auto`` resolved to the stack's default."""
        return self.stack_spec.pipelines[0] if self.data.pipeline == "auto" else self.data.pipeline

    @property
    def normalization(self):
        """The encoder's input normalisation (``core.weights``), resolved once for every pipeline,
        the export graph and serve: TF-ported EfficientNet-Lite weights expect mean = std = 0.5,
        everything else ImageNet's mean/std."""
        from nailseg.core.weights import normalization_for

        return normalization_for(self.model.catalogue_encoder)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys that an earlier release had and one key now replaces: refused with one line naming it.
REPLACED_KEYS = {
    ("loader",): "data.pipeline",
    ("augment", "device"): "data.pipeline",
    ("augment", "engine"): "data.pipeline",
}
PREVIEW_CHARS = 80
MAX_CONFIG_NODES = 20_000  # a real config has a few hundred; YAML alias bombs expand to billions


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A short repr for error messages: never expands a huge (or alias-bombed) value."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxstring, r.maxother = 3, 6, 6, 6, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    """A plain string cut to ``limit`` characters for an error message."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_expansion(tree: Any, source: str, budget: int = MAX_CONFIG_NODES) -> None:
    """Refuse a loaded YAML tree whose expansion (aliases followed) exceeds ``budget`` nodes.

    PyYAML shares aliased nodes, so loading is cheap, but anything that walks the tree
    (validation, printing) pays for every expanded copy: count before walking, with a budget.
    """
    seen = 0
    stack = [tree]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > budget:
            raise ConfigError(f"{source}: expands to more than {budget} values (YAML aliases nested too deep?)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would silently keep
    the last one, so half of a config could be ignored without a word)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let the constructor report it
            break
        if duplicate:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {preview(key)} (line {mark.line + 1})",
                                                    mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
MAX_YAML_DEPTH = 64  # a real config nests 4 levels; 500 nested brackets exhaust Python's recursion


def _too_deep(text: str) -> bool:
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    indent = max((len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()), default=0)
    return deepest > MAX_YAML_DEPTH or indent > 2 * MAX_YAML_DEPTH * 4


def _load_unique(text: str) -> Any:
    """What ``yaml.safe_load`` does, with :class:`_UniqueKeyLoader` (a SafeLoader: no Python objects)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def safe_yaml(text: str, source: str) -> Any:
    if _too_deep(text):
        raise ConfigError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep (a config nests a few)")
    try:
        loaded = _load_unique(text)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deep to read (a config nests a few levels)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({preview(str(err).splitlines()[0] if str(err) else err, 120)})") from None
    check_expansion(loaded, source)
    return loaded


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {clip(dotted)}: '{clip(part)}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["trainer.max_epochs=3", "model.encoder=resnet18"]`` -> typed pairs (YAML scalars)."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {preview(item)}: expected key=value, e.g. trainer.max_epochs=3")
        value = safe_yaml(raw, f"override {clip(key.strip())}") if raw != "" else ""
        parsed.append((key.strip(), value))
    return parsed


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _valid_keys(ann, prefix + name + ".")
    for family_cls in MODEL_CLASSES.values() if model is Experiment else ():
        keys += [f"model.{k}" for k in family_cls.model_fields if f"model.{k}" not in keys]
    return keys


def _format_errors(errors: list[dict[str, Any]], source: str) -> list[str]:
    valid = _valid_keys(Experiment)
    tags = _UNION_TAGS | set(MODEL_CLASSES)
    lines, seen = [], set()
    for e in errors:
        parts = [p for p in e["loc"] if not (isinstance(p, str) and (p in tags or _TYPE_TAG.match(p)))]
        key = ".".join(str(p) for p in parts)
        if e["type"] != "extra_forbidden":  # a union gives one error per member: report the key once
            if key in seen:
                continue
            seen.add(key)
        family = next((p for p in e["loc"] if isinstance(p, str) and p in MODEL_CLASSES), None)
        loc = ".".join(str(p) for p in parts)
        if e["type"] == "extra_forbidden":
            if family is not None and loc.startswith("model."):
                keys = ", ".join(MODEL_CLASSES[family].model_fields)
                msg = f"{source}: unknown key '{clip(loc)}' for model.family {family} (its keys: {keys})"
            else:
                hint = difflib.get_close_matches(loc, valid, n=1)
                msg = f"{source}: unknown key '{clip(loc)}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        elif e["type"] == "value_error" and _NAMED_REFUSAL.match(_refusal(e)):
            msg = f"{source}: {clip(_refusal(e), 500)}"  # a cross-key refusal names its own key
        elif e["type"] == "union_tag_invalid" and loc == "model":
            msg = f"{source}: model.family: must be one of {', '.join(MODEL_CLASSES)} (got {preview(e.get('input'))})"
        else:
            msg = f"{source}: {loc or 'config'}: {preview(e['msg'], 200)} (got {preview(e.get('input'))})"
        lines.append(msg)
    return lines


_NAMED_REFUSAL = re.compile(r"^[a-z_]+(\.[a-z_0-9]+)*: ")


def _refusal(e: dict[str, Any]) -> str:
    return str(e.get("msg", "")).removeprefix("Value error, ")


_TYPE_TAG = re.compile(r"^(constrained-|literal\[|function-|tuple\[|list\[|dict\[|int$|float$|str$|bool$|none$)")
_UNION_TAGS = {"hflip", "vflip", "affine", "random_resized_crop", "brightness_contrast",
               "hue_saturation", "gauss_noise", "blur"}


def _refuse_replaced_keys(raw: dict[str, Any], source: str) -> None:
    for path, new in REPLACED_KEYS.items():
        node: Any = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            raise ConfigError(f"{source}: '{'.'.join(path)}' was replaced by '{new}' "
                              f"({', '.join(PIPELINES)})")


def _type_name(annotation) -> str:
    text = str(annotation)
    for noise in ("typing.", "<class '", "'>", "nailseg.core.augment.", "pydantic.fields."):
        text = text.replace(noise, "")
    return text if len(text) <= 28 else text[:25] + "..."


def config_keys(family: str | None = None) -> list[dict[str, str]]:
    """Every key of the experiment config with its type, default and description (``nailseg config keys``)."""
    rows: list[dict[str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (inner[0] if inner else None)
            key = prefix + name
            if key == "model":
                for fam, cls in MODEL_CLASSES.items():
                    if family in (None, fam):
                        walk(cls, f"model[{fam}].")
                continue
            if section is not None and key != "augment.train":
                walk(section, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            if isinstance(default, list):
                default = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
            rows.append({"key": key, "type": _type_name(ann), "default": preview(default, 60),
                         "description": field.description or ""})

    walk(Experiment, "")
    return rows


def experiment_from_dict(raw: dict[str, Any], source: str = "config") -> Experiment:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (data:, model:, ...)")
    check_expansion(raw, source)
    _refuse_replaced_keys(raw, source)
    try:
        model, errors = _model_section(raw.get("model", {}))
        if errors:  # the other sections are still checked, so one run reports every bad key
            try:
                Experiment.model_validate({k: v for k, v in raw.items() if k != "model"})
            except ValidationError as err:
                errors += [e for e in err.errors() if e["loc"]]  # not the stack checks of a default model
            raise ConfigError(_format_errors(errors, source))
        return Experiment.model_validate({**raw, "model": model})
    except ValidationError as err:
        raise ConfigError(_format_errors(err.errors(), source)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deep to validate") from None


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file; every way it can be unreadable is one ``ConfigError`` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (is it a YAML config?)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    loaded = safe_yaml(text, str(path))
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
    return loaded


def load_experiment(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Experiment:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = read_config_file(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    for key, value in parse_overrides(overrides or []):
        set_dotted(raw, key, value)
    return experiment_from_dict(raw, source)
