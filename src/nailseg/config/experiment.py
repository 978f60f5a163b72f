"""The whole experiment: every section, and the cross-key refusals of what a stack cannot do."""

from __future__ import annotations

from typing import Any

from pydantic import SerializeAsAny, model_validator

from nailseg.config.augment import AugmentConfig
from nailseg.config.base import _Section
from nailseg.config.data import DataConfig
from nailseg.config.families import model_section
from nailseg.config.model import SmpModel, _ModelBase
from nailseg.config.optim import LossConfig, OptimConfig
from nailseg.config.run import LoggingConfig, PretrainConfig, RunConfig
from nailseg.config.trainer import TrainerConfig
from nailseg.specs import PIPELINE_SPECS, STACKS, spec_for_family


def _stacks_that(capability: str, one: str, many: str) -> str:
    """"the lightning stack does" / "the lightning and keras stacks do": who offers ``capability``."""
    names = [s.name for s in STACKS.values() if capability in s.capabilities]
    if len(names) == 1:
        return f"the {names[0]} stack {one}"
    return f"the {', '.join(names[:-1])} and {names[-1]} stacks {many}"


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
            model, errors = model_section(raw["model"])
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
            others = _stacks_that("crop", "does", "do")
            why = (f"the {spec.name} stack does not train on windows ({others})"
                   if "crop" not in spec.capabilities else f"the {pipeline.name} pipeline cannot cut windows")
            raise ValueError(f"data.crop_size: {why}; remove it and train on the whole data.image_size picture")
        if self.data.crop_size is not None and self.model.family == "sm" and self.model.arch.lower() == "pspnet":
            raise ValueError("data.crop_size: sm's PSPNet is built for one input size (its pooling grid divides it), "
                             "so it cannot train on windows and validate on whole pictures; use model.arch Unet, FPN "
                             "or Linknet, or remove data.crop_size")
        if self.trainer.max_time is not None and "budget" not in spec.capabilities:
            raise ValueError(f"trainer.max_time: the {spec.name} stack cannot size its epochs to a time budget yet "
                             f"({_stacks_that('budget', 'can', 'can')}); remove it and set trainer.max_epochs")
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
        self._check_classes(spec, pipeline)
        return self

    def _check_classes(self, spec, pipeline) -> None:
        """Many classes: a stack and pipeline that keep class indices, and the model sized to them."""
        n = len(self.data.classes) if self.data.classes is not None else None
        declared = getattr(self.model, "classes", None)
        weights = self.loss.class_weights
        if weights != "none" and n is None:
            raise ValueError("loss.class_weights: weighs the classes of data.classes; a binary run weighs its "
                             "foreground with loss.bce_weight/dice_weight (or data.balance)")
        if weights != "none" and "instances" in spec.capabilities:
            raise ValueError(f"loss.class_weights: the {spec.name} stack's losses are its own (per instance), "
                             "not weighed by class; remove it")
        if isinstance(weights, list) and len(weights) != n:
            raise ValueError(f"loss.class_weights: {len(weights)} weights for the {n} classes of data.classes")
        if n is None:
            if declared is not None and declared > 2:
                raise ValueError(f"model.classes: {declared} classes need data.classes (their names, in index "
                                 "order, or classes.txt)")
            return
        if "multiclass" not in spec.capabilities:
            able = [s.name for s in STACKS.values() if "multiclass" in s.capabilities]
            raise ValueError(f"data.classes: the {spec.name} stack trains binary masks only so far; many classes "
                             f"train on the {', '.join(able)} stack")
        if not pipeline.keeps_labels:
            keeping = [p.name for p in PIPELINE_SPECS.values() if p.keeps_labels]
            raise ValueError(f"data.classes: the {pipeline.name} pipeline does not carry class-index masks yet; "
                             f"use data.pipeline: {', '.join(keeping)}")
        if declared not in (None, 1, n):  # None: a family without the key (sm), its head follows the names
            raise ValueError(f"model.classes: {declared}, but data.classes names {n}; remove model.classes "
                             "(it follows data.classes)")
        if self.loss.name not in ("dice_bce", "dice", "bce"):
            raise ValueError(f"loss.name: {self.loss.name} is a binary loss; with data.classes use dice_bce, dice "
                             "or bce (softmax cross-entropy stands in for BCE)")
        self.model.__dict__["classes"] = n  # the model's head follows the names (no re-validation loop)

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
    def pipeline_spec(self):
        """The resolved pipeline's row in ``specs.PIPELINE_SPECS``: what it can do and where it runs."""
        return PIPELINE_SPECS[self.pipeline]

    @property
    def normalization(self):
        """The encoder's input normalisation (``core.weights``), resolved once for every pipeline,
        the export graph and serve: TF-ported EfficientNet-Lite weights expect mean = std = 0.5,
        everything else ImageNet's mean/std."""
        from nailseg.core.weights import normalization_for

        return normalization_for(self.model.catalogue_encoder)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
