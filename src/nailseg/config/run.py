"""``logging:``, ``pretrain:`` and ``run:``: what a run writes, where, and what it trains first."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nailseg.config.base import _Section
from nailseg.config.data import MAX_IMAGE_SIDE


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
