"""The augmentation spec as a kornia ``AugmentationSequential``, run where the batch is.

With ``data.pipeline: kornia`` the DataLoader workers only decode and resize (and send
``uint8`` tensors, a quarter of the bytes of float32); the LightningModule runs this module
in ``on_after_batch_transfer`` on the device, training batches only. Image and mask go
through one sequential, so every geometric draw is shared; masks are resampled with nearest
neighbour (kornia's default for ``DataKey.MASK``) and stay binary, or, with many classes, stay
class indices: the mask goes through shifted by one, so that the zeros kornia pads uncovered
pixels with come out as the ignore value (as the albumentations pipeline's ``mask_fill``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nailseg.core.augment import IMAGENET, AugmentOp, Normalization


def _kornia_blur(op, size):
    kernel = 2 * math.ceil(3 * op.sigma[1]) + 1
    return "RandomGaussianBlur", dict(kernel_size=(kernel, kernel), sigma=op.sigma, p=op.p)


# One kornia translation per op: (op, size) -> (the ``kornia.augmentation`` class, its arguments),
# which build the module here and are written as code by ``nailseg eject``. Its keys are the kornia
# row's ``ops`` in nailseg.specs (tests/test_specs.py).
KORNIA_OPS = {
    "hflip": lambda op, size: ("RandomHorizontalFlip", dict(p=op.p)),
    "vflip": lambda op, size: ("RandomVerticalFlip", dict(p=op.p)),
    "affine": lambda op, size: ("RandomAffine", dict(degrees=op.rotate, translate=(op.translate, op.translate),
                                                     scale=op.scale, padding_mode="zeros", p=op.p)),
    "random_resized_crop": lambda op, size: ("RandomResizedCrop", dict(size=size, scale=op.scale, ratio=op.ratio,
                                                                       p=op.p)),
    # albumentations: brightness adds beta * 255, contrast scales around the mean
    "brightness_contrast": lambda op, size: ("ColorJiggle", dict(brightness=op.brightness, contrast=op.contrast,
                                                                 p=op.p)),
    "hue_saturation": lambda op, size: ("ColorJiggle", dict(hue=op.hue, saturation=op.saturation, p=op.p)),
    # kornia draws with one std: the middle of the spec's range
    "gauss_noise": lambda op, size: ("RandomGaussianNoise", dict(mean=0.0, std=sum(op.std) / 2, p=op.p)),
    "blur": _kornia_blur,
}


def kornia_steps(ops: list[AugmentOp], size: tuple[int, int], crop: tuple[int, int] | None = None
                 ) -> list[tuple[str, dict]]:
    """The spec as (kornia class name, arguments) in order. ``data.crop_size``: the window is cut
    as soon as the size picture exists (after a random_resized_crop, else first), as in the
    albumentations pipeline."""
    steps = [KORNIA_OPS[op.name](op, size) for op in ops]
    if crop is not None and tuple(crop) != tuple(size):
        at = next((i + 1 for i, op in enumerate(ops) if op.name == "random_resized_crop"), 0)
        steps.insert(at, ("RandomCrop", dict(size=tuple(crop))))
    return steps


class GpuAugment(nn.Module):
    """uint8 (N, 3, H, W) image + (N, 1, H, W) mask -> augmented, normalised float image + binary mask
    (class indices, with ``ignore_index`` where a geometric op uncovered the picture, for a many-class
    mask)."""

    def __init__(self, ops: list[AugmentOp], size: tuple[int, int], norm: Normalization = IMAGENET,
                 crop: tuple[int, int] | None = None, ignore_index: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        from nailseg.core.optional import require

        require("kornia", "gpuaug", "GPU augmentation (data.pipeline: kornia)")
        import kornia.augmentation as K

        steps = [getattr(K, name)(**kwargs) for name, kwargs in kornia_steps(ops, size, crop)]
        self.sequential = K.AugmentationSequential(*steps, data_keys=["input", "mask"]) if steps else None
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, mask: torch.Tensor, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.float() / 255.0
        m = mask.float()
        if train and self.sequential is not None:
            if self.ignore_index is not None:
                m = m + 1  # class k travels as k + 1; kornia's padding 0 then means 'uncovered'
            x, m = self.sequential(x, m)
            x = x.clamp_(0.0, 1.0)
            if self.ignore_index is None:
                m = (m > 0.5).float()
            else:
                m = torch.where(m < 0.5, torch.full_like(m, float(self.ignore_index)), m.round() - 1)
        return (x - self.mean) / self.std, m


def device_augment(exp) -> GpuAugment | None:
    """The batch augmentation of ``exp`` when its pipeline augments on the training device (its
    spec row says so: kornia), else ``None`` (the loader workers augmented already). The one place
    that decides it, for training and for the benchmarks."""
    if not exp.pipeline_spec.augments_on_device:
        return None
    labels = exp.data.label_spec
    return GpuAugment(exp.augment.train, exp.data.size_hw, exp.normalization, crop=exp.data.crop_hw,
                      ignore_index=None if labels is None else labels.ignore_index)
