"""``data:``: where the pairs are, how they are sized, split, balanced, cached and loaded."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from nailseg.config.base import _Section
from nailseg.specs import PIPELINES


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
