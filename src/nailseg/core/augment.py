"""One stack-neutral augmentation spec, translated by each pipeline.

A config lists augmentations by name with pipeline-neutral parameters::

    augment:
      train:
        - {name: hflip, p: 0.5}
        - {name: affine, rotate: 15, scale: [0.9, 1.1], translate: 0.05, p: 0.5}
        - {name: brightness_contrast, brightness: 0.2, contrast: 0.2, p: 0.5}

The resize to ``data.image_size`` (or a ``random_resized_crop`` to it) and the
normalisation are added by the pipeline, the same way for training and validation, so
the spec only says what varies. Geometric augmentations move image and mask together
(masks with nearest-neighbour resampling, so they stay binary); colour augmentations
touch the image only. This module imports no deep-learning framework; the albumentations
translation imports albumentations lazily.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nailseg.core.weights import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, Normalization  # noqa: F401 - re-exported


class _Aug(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability of applying it")


def _range(v: tuple[float, float], low: float, high: float, *, open_low: bool = False) -> tuple[float, float]:
    """A (min, max) pair inside [low, high] (or (low, high] with ``open_low``), min <= max."""
    lo, hi = v
    if not all(x == x and abs(x) != float("inf") for x in v):
        raise ValueError("must be finite numbers")
    if lo > hi:
        raise ValueError(f"[{lo}, {hi}]: the first value must not exceed the second")
    if (lo <= low if open_low else lo < low) or hi > high:
        raise ValueError(f"[{lo}, {hi}]: both values must be in {'(' if open_low else '['}{low}, {high}]")
    return v


def _bounded(low: float, high: float, *, open_low: bool = False):
    """The type of a (min, max) field whose values must lie in [low, high] (or (low, high])."""
    return Annotated[tuple[float, float], AfterValidator(lambda v: _range(v, low, high, open_low=open_low))]


ZoomRange = _bounded(0.0, 10.0, open_low=True)  # a scale factor
ShareRange = _bounded(0.0, 1.0, open_low=True)  # a share of the picture's area
AspectRange = _bounded(0.0, 100.0, open_low=True)  # width / height
FractionRange = _bounded(0.0, 1.0)  # noise std, a fraction of 255
SigmaRange = _bounded(0.0, 20.0, open_low=True)  # blur sigma, pixels


class HFlip(_Aug):
    name: Literal["hflip"]


class VFlip(_Aug):
    name: Literal["vflip"]


class Affine(_Aug):
    name: Literal["affine"]
    rotate: float = Field(15.0, ge=0, le=180, description="max rotation, degrees (+/-)")
    scale: ZoomRange = (0.9, 1.1)
    translate: float = Field(0.05, ge=0, le=0.5, description="max shift, fraction of size")


class RandomResizedCrop(_Aug):
    name: Literal["random_resized_crop"]
    scale: ShareRange = (0.5, 1.0)
    ratio: AspectRange = (0.75, 1.3333)
    p: float = Field(1.0, ge=0.0, le=1.0)


class BrightnessContrast(_Aug):
    name: Literal["brightness_contrast"]
    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)


class HueSaturation(_Aug):
    name: Literal["hue_saturation"]
    hue: float = Field(0.05, ge=0, le=0.5, description="max hue shift, fraction of the colour wheel")
    saturation: float = Field(0.2, ge=0, le=1)


class GaussNoise(_Aug):
    name: Literal["gauss_noise"]
    std: FractionRange = Field((0.01, 0.05), description="noise std range, fraction of 255")


class Blur(_Aug):
    name: Literal["blur"]
    sigma: SigmaRange = (0.1, 1.5)


AugmentOp = Annotated[
    Union[HFlip, VFlip, Affine, RandomResizedCrop, BrightnessContrast, HueSaturation, GaussNoise, Blur],
    Field(discriminator="name"),
]
GEOMETRIC = {"hflip", "vflip", "affine", "random_resized_crop"}
# What each pipeline translates is its ``PipelineSpec.ops`` row (``nailseg.specs``); each pipeline
# module holds one translation per op in a table, and a test checks the two agree.


def default_train_augment() -> list[AugmentOp]:
    return [HFlip(name="hflip"), Affine(name="affine"), BrightnessContrast(name="brightness_contrast")]


def to_albumentations(
    ops: list[AugmentOp], size: tuple[int, int], *, normalize: bool = True, train: bool = True,
    norm: Normalization = IMAGENET, crop: tuple[int, int] | None = None, mask_fill: int = 0,
):
    """Build an ``albumentations.Compose`` for (image, mask) at ``size`` = (height, width).

    Training: the spec's ops in order, with the resize to ``size`` placed first (or the
    spec's ``random_resized_crop`` in its place). ``crop`` (``data.crop_size``): a random window
    of that (height, width) is cut from the ``size`` picture as soon as it exists, so the ops
    after it run on the window (cheaper) and the network trains on it. Evaluation: the resize
    only. ``norm`` is the encoder's input normalisation (``Experiment.normalization``).
    ``mask_fill``: the mask value where a geometric op uncovers the picture (0, background, for
    binary masks; ``data.ignore_index`` for class-index masks, so no class is invented there).
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import cv2

    from nailseg.core.optional import require

    A = require("albumentations", "train", "the CPU augmentation pipeline (albumentations)")

    h, w = size
    ops = list(ops) if train else []
    steps = []
    window = [A.RandomCrop(*crop)] if crop is not None and train and tuple(crop) != (h, w) else []
    if not any(op.name == "random_resized_crop" for op in ops):
        steps += [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST), *window]
    for op in ops:
        steps.append(albumentations_op(A, cv2, op, h, w, mask_fill))
        if op.name == "random_resized_crop":
            steps += window
    if normalize:
        steps.append(A.Normalize(mean=norm.mean, std=norm.std, max_pixel_value=255.0))
    return A.Compose(steps)


def _albu_resized_crop(A, cv2, op, h, w):
    # when skipped (p < 1), the image is resized instead
    return A.OneOf([
        A.RandomResizedCrop(size=(h, w), scale=op.scale, ratio=op.ratio, mask_interpolation=cv2.INTER_NEAREST,
                            p=op.p),
        A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, p=1.0 - op.p),
    ], p=1.0)


# One albumentations translation per op: (A, cv2, op, h, w) -> transform. Its keys are the
# albumentations row's ``ops`` in nailseg.specs (tests/test_specs.py).
ALBUMENTATIONS_OPS = {
    "hflip": lambda A, cv2, op, h, w: A.HorizontalFlip(p=op.p),
    "vflip": lambda A, cv2, op, h, w: A.VerticalFlip(p=op.p),
    "affine": lambda A, cv2, op, h, w, mask_fill=0: A.Affine(
        rotate=(-op.rotate, op.rotate), scale=op.scale, translate_percent=(-op.translate, op.translate),
        interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
        fill=0, fill_mask=mask_fill, p=op.p),
    "random_resized_crop": _albu_resized_crop,
    "brightness_contrast": lambda A, cv2, op, h, w: A.RandomBrightnessContrast(
        brightness_limit=op.brightness, contrast_limit=op.contrast, p=op.p),
    "hue_saturation": lambda A, cv2, op, h, w: A.HueSaturationValue(
        hue_shift_limit=op.hue * 180, sat_shift_limit=op.saturation * 255, val_shift_limit=0, p=op.p),
    "gauss_noise": lambda A, cv2, op, h, w: A.GaussNoise(std_range=op.std, p=op.p),
    "blur": lambda A, cv2, op, h, w: A.GaussianBlur(sigma_limit=op.sigma, blur_limit=0, p=op.p),
}


# The ops that uncover pixels: they take the mask's fill value as a sixth argument.
FILLING_OPS = frozenset({"affine"})


def albumentations_op(A, cv2, op: AugmentOp, h: int = 0, w: int = 0, mask_fill: int = 0):
    """One op's albumentations transform (``h``, ``w``: the output size, for ``random_resized_crop``
    only; ``mask_fill``: the mask value where a geometric op uncovers the picture)."""
    make = ALBUMENTATIONS_OPS[op.name]
    return make(A, cv2, op, h, w, mask_fill) if op.name in FILLING_OPS else make(A, cv2, op, h, w)
