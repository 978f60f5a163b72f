"""The typed experiment config: one YAML file drives every backend.

``load_experiment(path, overrides)`` reads the YAML, applies dotted ``key=value``
overrides, and validates the result. Unknown keys and wrong types fail before anything
runs, with an error naming the key (and the nearest valid key when it looks like a typo).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nailseg.augment import ENGINE_OPS, AugmentOp, default_train_augment
from nailseg.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Section):
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)


class BalanceConfig(_Section):
    """Balanced sampling of training images by group (see nailseg.data.balance)."""

    by: Literal["fg_bins", "folder", "csv"] = "fg_bins"
    bins: int = Field(4, ge=2, description="fg_bins: number of bins")
    binning: Literal["log", "uniform", "quantile"] = Field("log", description="fg_bins: how bin edges are set")
    csv: str | None = Field(None, description="csv: the CSV file")
    column: str | None = Field(None, description="csv: the column that names the group")
    key_column: str = Field("file", description="csv: the column with the file name")
    weights: Literal["equal", "inverse", "sqrt_inverse"] | dict[str, float] = "equal"
    epoch_size: int | None = Field(None, ge=1, description="samples per epoch (default: training set size)")


class DataConfig(_Section):
    root: str = "data/synth"
    image_size: int | tuple[int, int] = Field(384, description="side, or (height, width)")
    split: SplitConfig = SplitConfig()
    seed: int = 42
    num_workers: int | Literal["auto"] = "auto"
    balance: BalanceConfig | None = None

    @field_validator("image_size")
    @classmethod
    def _positive_multiple_of_32(cls, v):
        sides = (v, v) if isinstance(v, int) else v
        for side in sides:
            if side < 32 or side % 32:
                raise ValueError(f"{side} must be a multiple of 32 and at least 32 (encoders downsample by 32)")
        return v

    @property
    def size_hw(self) -> tuple[int, int]:
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)


class AugmentConfig(_Section):
    train: list[AugmentOp] = Field(default_factory=default_train_augment)
    device: Literal["cpu", "gpu"] = Field(
        "cpu", description="cpu: albumentations in DataLoader workers; gpu: kornia on the batch's device")
    engine: Literal["auto", "albumentations", "tf"] = Field(
        "auto", description="keras backend: albumentations in tf.numpy_function, or tf.image stateless ops")


class ModelConfig(_Section):
    family: Literal["smp", "segformer", "sm", "maskrcnn"] = Field(
        "smp", description="smp: segmentation_models_pytorch; segformer: transformers; sm: segmentation_models "
                           "(Keras); maskrcnn: MMDetection Mask R-CNN (instance segmentation)")
    # smp
    arch: str = "Unet"
    encoder: str = Field("efficientnet-b4", description="smp encoder, or sm backbone (e.g. efficientnetb4)")
    encoder_weights: str = Field("none", description="smp/sm: none | imagenet (needs internet) | path to a local file")
    # segformer
    variant: Literal["b0", "b1", "b2", "b3", "b4", "b5"] = "b0"
    pretrained: str = Field("none", description="segformer: none | hub id | local folder (save_pretrained)")
    classes: int = Field(1, ge=1, le=2, description="1: one logit + sigmoid; 2: softmax over background/nail")
    # maskrcnn
    load_from: str = Field("none", description="maskrcnn: none | a local mmdet checkpoint | a URL (needs internet)")
    min_area: int = Field(4, ge=0, description="maskrcnn: mask regions below this many pixels are not instances")


class LossConfig(_Section):
    name: Literal["dice_bce", "dice", "bce", "focal", "lovasz", "jaccard", "tversky"] = "dice_bce"
    dice_weight: float = Field(1.0, ge=0)
    bce_weight: float = Field(1.0, ge=0)


class OptimConfig(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["cosine", "poly", "none"] = "cosine"
    poly_power: float = Field(1.0, gt=0, description="poly: lr * (1 - progress) ** power (SegFormer's schedule)")
    warmup_epochs: int = Field(0, ge=0)
    encoder_lr_scale: float | None = Field(
        None, gt=0, description="encoder lr = lr * scale; default 0.1 for segformer, 1.0 for smp")


class TrainerConfig(_Section):
    max_epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    precision: Literal["auto", "32", "32-true", "16-mixed", "bf16-mixed", "mixed_float16", "float32"] = Field(
        "auto", description="auto: bf16-mixed + channels_last (Lightning) / mixed_float16 (Keras) on a GPU, 32 on a CPU")
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = None
    seed: int = 42
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    deterministic: bool = False


class WandbConfig(_Section):
    enabled: bool = False
    project: str = "nailseg"
    mode: Literal["offline", "online"] = "offline"


class LoggingConfig(_Section):
    tensorboard: bool = True
    wandb: WandbConfig = WandbConfig()
    predictions: int = Field(8, ge=0, description="validation overlays written at the end")


class RunConfig(_Section):
    dir: str = "runs"
    name: str | None = None


class Experiment(_Section):
    """Everything one training run needs. Key names are a public interface."""

    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    logging: LoggingConfig = LoggingConfig()
    run: RunConfig = RunConfig()
    loader: Literal["default", "dali"] = Field(
        "default", description="default: torch DataLoader (Lightning) or tf.data (Keras); dali: NVIDIA DALI")

    @model_validator(mode="after")
    def _engines_can_do_the_spec(self):
        """Refuse, at config time, an augmentation the chosen engine cannot do."""
        engine = self.augment_engine
        missing = [op.name for op in self.augment.train if op.name not in ENGINE_OPS[engine]]
        if missing:
            raise ValueError(f"augment.train: {', '.join(missing)} cannot run on the {engine} engine")
        if self.loader == "dali" and self.augment.device == "gpu":
            raise ValueError("loader: dali already augments on the GPU; use augment.device: cpu with it")
        if self.loader == "dali" and self.data.balance is not None:
            raise ValueError("data.balance needs loader: default (DALI's file readers cannot draw weighted samples)")
        if self.model.family == "sm" and (self.loader != "default" or self.augment.device != "cpu"):
            raise ValueError("model.family: sm (Keras) reads data with tf.data: use loader: default, augment.device: cpu")
        if self.model.family == "maskrcnn":
            unsupported = [op.name for op in self.augment.train if op.name not in ("hflip", "vflip")]
            if unsupported or self.loader != "default" or self.augment.device != "cpu" or self.data.balance:
                raise ValueError("model.family: maskrcnn trains through MMDetection's own pipeline: augment.train "
                                 "may hold hflip and vflip only, with loader: default, augment.device: cpu and "
                                 f"no data.balance (got {', '.join(unsupported) or 'other settings'})")
        if self.model.family != "sm" and self.augment.engine == "tf":
            raise ValueError("augment.engine: tf is the Keras backend's; torch backends use augment.device")
        return self

    @property
    def augment_engine(self) -> str:
        if self.model.family == "sm":
            return "tf" if self.augment.engine == "tf" else "albumentations"
        if self.loader == "dali":
            return "dali"
        return "kornia" if self.augment.device == "gpu" else "albumentations"

    @property
    def backend(self) -> str:
        """Which backend trains this model family."""
        return {"smp": "lightning", "segformer": "lightning", "sm": "keras", "maskrcnn": "mmdet"}[self.model.family]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["trainer.max_epochs=3", "model.encoder=resnet18"]`` -> typed pairs (YAML scalars)."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. trainer.max_epochs=3")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        parsed.append((key.strip(), value))
    return parsed


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _valid_keys(ann, prefix + name + ".")
    return keys


def _format_errors(err: ValidationError, source: str) -> list[str]:
    valid = _valid_keys(Experiment)
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(loc, valid, n=1)
            msg = f"{source}: unknown key '{loc}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        else:
            msg = f"{source}: {loc}: {e['msg']} (got {e.get('input')!r})"
        lines.append(msg)
    return lines


_UNION_TAGS = {"hflip", "vflip", "affine", "random_resized_crop", "brightness_contrast",
               "hue_saturation", "gauss_noise", "blur"}


def experiment_from_dict(raw: dict[str, Any], source: str = "config") -> Experiment:
    try:
        return Experiment.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_experiment(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Experiment:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
        raw = loaded
    for key, value in parse_overrides(overrides or []):
        set_dotted(raw, key, value)
    return experiment_from_dict(raw, source)
