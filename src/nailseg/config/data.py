"""``data:``: where the pairs are, how they are sized, split, balanced, cached and loaded."""

from __future__ import annotations

from pathlib import Path
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
    classes: list[str] | str | None = Field(
        None, description="many classes: their names in index order, or a file of names one a line (e.g. "
                          "classes.txt, found in data.root when relative); masks then hold class indices "
                          "(index or palette PNGs, or RGB with data.colors). null: the binary layout (mask rule)")
    ignore_index: int = Field(255, ge=0, le=255, description="with data.classes: the mask value of unlabelled "
                                                             "pixels, left out of the loss and the scores")
    colors: list[tuple[int, int, int]] | None = Field(
        None, description="with data.classes: each class's RGB colour, for RGB colour masks (and checked "
                          "against palette masks' colours)")

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

    @model_validator(mode="after")
    def _classes_named(self):
        """``data.classes`` as a list of names (a file is read once, here, so a run's config.yaml
        carries the names and needs no data folder at inference)."""
        if self.classes is None:
            if self.colors is not None:
                raise ValueError("data.colors: a colour table needs data.classes (the names, in index order)")
            return self
        names = self.classes
        if isinstance(names, str):
            from nailseg.core.labels import read_class_names
            from nailseg.errors import DataError

            path = Path(names) if Path(names).is_absolute() else Path(self.root) / names
            try:
                names = read_class_names(path)
            except DataError as err:
                raise ValueError(f"data.classes: {err.lines[0]}") from None
        names = [str(n).strip() for n in names]
        from nailseg.core.labels import repeated_name

        twice = repeated_name(names)
        if twice is not None:
            raise ValueError(f"data.classes: {twice!r} is named twice; each class index needs a name of its own")
        if len(names) < 2 or len(names) > 255 or any(not n for n in names):
            raise ValueError(f"data.classes: give 2 to 255 distinct, non-empty names (got {len(names)})")
        if self.ignore_index < len(names):
            raise ValueError(f"data.ignore_index: {self.ignore_index} is class {names[self.ignore_index]!r}; "
                             f"the ignore value must be {len(names)} or more (255 by default)")
        if self.colors is not None and len(self.colors) != len(names):
            raise ValueError(f"data.colors: {len(self.colors)} colours for {len(names)} classes (one a class)")
        if self.colors is not None and any(not 0 <= c <= 255 for rgb in self.colors for c in rgb):
            raise ValueError("data.colors: each colour is [r, g, b] with values 0-255")
        self.__dict__["classes"] = names  # not setattr: that would validate the whole section again
        return self

    @property
    def label_spec(self):
        """The :class:`~nailseg.core.labels.LabelSpec` of many-class data, or None (binary masks)."""
        if self.classes is None:
            return None
        from nailseg.core.labels import LabelSpec

        return LabelSpec(tuple(self.classes), self.ignore_index,
                         None if self.colors is None else tuple(tuple(c) for c in self.colors))

    @property
    def size_hw(self) -> tuple[int, int]:
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)

    @property
    def crop_hw(self) -> tuple[int, int] | None:
        """``crop_size`` as (height, width), or None: training sees whole pictures."""
        c = self.crop_size
        return None if c is None else (c, c) if isinstance(c, int) else tuple(c)
