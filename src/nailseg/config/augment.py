"""``augment:``: the training augmentation, one spec every pipeline translates (``core.augment``)."""

from __future__ import annotations

from pydantic import Field

from nailseg.config.base import _Section
from nailseg.core.augment import AugmentOp, default_train_augment


class AugmentConfig(_Section):
    train: list[AugmentOp] = Field(default_factory=default_train_augment)
