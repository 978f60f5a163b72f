"""``loss:`` and ``optim:``: what is minimised, and how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nailseg.config.base import _Section


class LossConfig(_Section):
    name: Literal["dice_bce", "dice", "bce", "focal", "lovasz", "jaccard", "tversky"] = "dice_bce"
    dice_weight: float = Field(1.0, ge=0)
    bce_weight: float = Field(1.0, ge=0)
    class_weights: Literal["none", "median_frequency", "inverse_sqrt"] | list[float] = Field(
        "none", description="many classes: the cross-entropy weight of each class. median_frequency (the "
                            "SegNet/CamVid rule: median share / class share) or inverse_sqrt (1 / sqrt(share), "
                            "gentler) are computed once from the training split's pixels (run/class_weights.json); "
                            "or one positive number a class, in index order")

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, list) and (not v or any(not (w > 0) or w == float("inf") for w in v)):
            raise ValueError(f"{v}: one positive, finite weight a class")
        return v


class OptimConfig(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False)
    scheduler: Literal["cosine", "poly", "none"] = "cosine"
    poly_power: float = Field(1.0, gt=0, description="poly: lr * (1 - progress) ** power (SegFormer's schedule)")
    warmup_epochs: int = Field(0, ge=0)
    encoder_lr_scale: float | None = Field(
        None, gt=0, description="encoder lr = lr * scale; default 0.1 for segformer, 0.5 for upernet, "
                             "1.0 for smp, sm (Keras: a second optimiser) and maskrcnn")
    freeze_encoder_bn: bool = Field(
        False, description="keep the encoder's BatchNorm running statistics at their pretrained values while "
                           "training (its affine weights still learn), as when fine-tuning an ImageNet encoder "
                           "on small batches of few photos")
