"""NVIDIA DALI: reading, decoding and augmenting in one pipeline, on the GPU when there is one, and
an iterable that hands its batches to Lightning.

Written by `nailseg eject`; nothing here imports nailseg (nailseg's own DALI loader is built on this
very file, so what an ejected script runs is what `nailseg train` runs).

Two file readers (images, masks) with identical seeds, sharding and shuffling stay aligned sample
for sample. Decoding runs on the GPU (``mixed``: nvJPEG) when a GPU is there, and on the CPU
(``device_id=None``) when not. Every geometric draw (flip, affine, random resized crop) is made once
per sample and applied to image and mask (nearest neighbour for masks); colour augmentations touch
the image only. An op is any object with the spec's attributes (``op.name``, ``op.p``, ...).
"""

from __future__ import annotations

import math
import os

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def


def coin(p: float):
    """1.0 with probability ``p`` (per sample), else 0.0: multiplies a draw to switch an op off."""
    return fn.cast(fn.random.coin_flip(probability=p), dtype=types.FLOAT)


def uniform(lo: float, hi: float):
    """A per-sample draw from [lo, hi); a constant when the range is a single value."""
    if hi <= lo:
        return fn.random.uniform(range=[lo, lo + 1e-6])
    return fn.random.uniform(range=[lo, hi])


def flip(axis: str):
    def apply(op, image, mask, h, w):
        c = fn.random.coin_flip(probability=op.p)
        args = {"horizontal": c} if axis == "horizontal" else {"vertical": c, "horizontal": 0}
        return fn.flip(image, **args), fn.flip(mask, **args)
    return apply


def affine(op, image, mask, h, w, mask_fill: int = 0):
    c = coin(op.p)
    angle = uniform(-op.rotate, op.rotate) * c
    s = 1.0 + (uniform(*op.scale) - 1.0) * c
    tx = uniform(-op.translate, op.translate) * c * w
    ty = uniform(-op.translate, op.translate) * c * h
    centre = [w / 2.0 + 0.5, h / 2.0 + 0.5]  # matches OpenCV's grid (albumentations) exactly
    matrix = fn.transforms.combine(
        fn.transforms.scale(scale=fn.stack(s, s), center=centre),
        fn.transforms.rotation(angle=angle, center=centre),
        fn.transforms.translation(offset=fn.stack(tx, ty)),
    )
    image = fn.warp_affine(image, matrix=matrix, fill_value=0, inverse_map=False, interp_type=types.INTERP_LINEAR)
    mask = fn.warp_affine(mask, matrix=matrix, fill_value=mask_fill, inverse_map=False, interp_type=types.INTERP_NN)
    return image, mask


def brightness_contrast(op, image, mask, h, w):
    c = coin(op.p)
    return fn.brightness_contrast(image, brightness_shift=uniform(-op.brightness, op.brightness) * c,
                                  contrast=1.0 + uniform(-op.contrast, op.contrast) * c), mask


def hue_saturation(op, image, mask, h, w):
    c = coin(op.p)
    return fn.hsv(image, hue=uniform(-op.hue, op.hue) * 360.0 * c,
                  saturation=1.0 + uniform(-op.saturation, op.saturation) * c), mask


def gauss_noise(op, image, mask, h, w):
    c = coin(op.p)
    return fn.noise.gaussian(image, stddev=uniform(*op.std) * 255.0 * c), mask


def blur(op, image, mask, h, w):
    c = coin(op.p)
    sigma = dmath.max(uniform(*op.sigma) * c, 0.01)
    return fn.gaussian_blur(image, sigma=sigma, window_size=2 * math.ceil(3 * op.sigma[1]) + 1), mask


def resized_crop(op, image, mask, h, w):
    return image, mask  # drawn before the resize (its window is the resize's region of interest)


# One DALI translation per op: (op, image, mask, h, w) -> (image, mask), applied after the resize.
DALI_OPS = {
    "hflip": flip("horizontal"),
    "vflip": flip("vertical"),
    "affine": affine,
    "random_resized_crop": resized_crop,
    "brightness_contrast": brightness_contrast,
    "hue_saturation": hue_saturation,
    "gauss_noise": gauss_noise,
    "blur": blur,
}


def build_pipeline(image_files: list[str], mask_files: list[str], ops: list, size: tuple[int, int], *,
                   batch_size: int, train: bool, seed: int, mean: tuple, std: tuple, shard_id: int = 0,
                   num_shards: int = 1, device_id: int | None = None, num_threads: int = 2,
                   crop: tuple[int, int] | None = None, ignore_index: int | None = None):
    """The DALI pipeline: (image float CHW normalised with ``mean``/``std`` (0-1 scale), mask float
    1HW in {0, 1}, or class indices when ``ignore_index`` is given: the mask files are then 8-bit
    index PNGs).

    ``crop`` (training only): a random window of that (height, width) is cut right after the
    resize, the same place for image and mask, and the ops run on it."""
    h, w = size
    ops = list(ops) if train else []
    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2, exec_dynamic=True)
    def pipeline():
        reader_args = dict(shard_id=shard_id, num_shards=num_shards, shuffle_after_epoch=train,
                           pad_last_batch=True, seed=seed)
        raw_image, _ = fn.readers.file(files=image_files, name="images", **reader_args)
        raw_mask, _ = fn.readers.file(files=mask_files, name="masks", **reader_args)
        decoder = "mixed" if gpu else "cpu"
        image = fn.decoders.image(raw_image, device=decoder, output_type=types.RGB)
        mask = fn.decoders.image(raw_mask, device=decoder, output_type=types.GRAY)
        if ignore_index is None:  # the mask rule: a 0/1 mask keeps its ones, an 8-bit mask is foreground above 127
            peak = fn.reductions.max(mask)
            threshold = 0.5 + 127.0 * fn.cast(peak > 1, dtype=types.FLOAT)
            mask = fn.cast(fn.cast(mask, dtype=types.FLOAT) > threshold, dtype=types.UINT8)

        rrc = next((op for op in ops if op.name == "random_resized_crop"), None)
        resize_args = dict(resize_x=w, resize_y=h)
        if rrc is not None:  # crop window drawn once, used for image and mask
            c = coin(rrc.p)
            area = uniform(*rrc.scale)
            ratio = dmath.exp(uniform(math.log(rrc.ratio[0]), math.log(rrc.ratio[1])))
            cw = dmath.min(dmath.sqrt(area * ratio), 1.0)
            ch = dmath.min(dmath.sqrt(area / ratio), 1.0)
            cw, ch = 1.0 - c * (1.0 - cw), 1.0 - c * (1.0 - ch)
            x0 = uniform(0.0, 1.0) * (1.0 - cw)
            y0 = uniform(0.0, 1.0) * (1.0 - ch)
            resize_args.update(roi_start=fn.stack(y0, x0), roi_end=fn.stack(y0 + ch, x0 + cw), roi_relative=True)
        image = fn.resize(image, interp_type=types.INTERP_LINEAR, antialias=False, **resize_args)
        mask = fn.resize(mask, interp_type=types.INTERP_NN, **resize_args)
        oh, ow = h, w
        if train and crop is not None and tuple(crop) != (h, w):
            oh, ow = crop
            x, y = uniform(0.0, 1.0), uniform(0.0, 1.0)  # drawn once: image and mask move together
            image = fn.crop(image, crop_h=oh, crop_w=ow, crop_pos_x=x, crop_pos_y=y)
            mask = fn.crop(mask, crop_h=oh, crop_w=ow, crop_pos_x=x, crop_pos_y=y)

        for op in ops:
            if op.name == "affine":  # the only op that uncovers pixels: class masks get the ignore value there
                image, mask = affine(op, image, mask, oh, ow, mask_fill=ignore_index or 0)
            else:
                image, mask = DALI_OPS[op.name](op, image, mask, oh, ow)
        image = fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW",
                                         mean=[m * 255 for m in mean], std=[s * 255 for s in std])
        mask = fn.crop_mirror_normalize(mask, dtype=types.FLOAT, output_layout="CHW", mean=[0.0], std=[1.0])
        return image, mask

    return pipeline()


class DaliLoader:
    """The pipeline as an iterable of ``{"image", "mask"}`` batches for Lightning, with a correct
    ``__len__``. It drains an epoch that Lightning stopped early (DALI ignores a reset before the end
    of an epoch), resets for the next one, keeps or drops the last partial batch, and reads shard
    ``shard_id`` of ``num_shards`` (one per DDP rank)."""

    def __init__(self, image_files: list[str], mask_files: list[str], ops: list, size: tuple[int, int], *,
                 batch_size: int, train: bool, seed: int, drop_last: bool, mean: tuple, std: tuple,
                 num_threads: int | None = None, device: str | None = None, crop: tuple[int, int] | None = None,
                 ignore_index: int | None = None, shard_id: int = 0, num_shards: int = 1):
        self.image_files, self.mask_files = list(image_files), list(mask_files)
        self.ops, self.size, self.batch_size = ops, size, batch_size
        self.train, self.seed, self.drop_last = train, seed, drop_last
        self.mean, self.std, self.crop, self.ignore_index = mean, std, crop, ignore_index
        self.shard_id, self.num_shards = shard_id, num_shards
        self.num_threads = num_threads or max(1, min(8, (os.cpu_count() or 2) - 1))
        self.device = device or ("gpu" if torch.cuda.is_available() else "cpu")
        self._iterator = None
        self._finished_epoch = True

    def __len__(self) -> int:
        n = math.ceil(len(self.image_files) / self.num_shards)  # readers pad shards to equal size
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _build(self):
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        device_id = torch.cuda.current_device() if self.device == "gpu" else None
        pipe = build_pipeline(self.image_files, self.mask_files, self.ops, self.size, batch_size=self.batch_size,
                              train=self.train, seed=self.seed, mean=self.mean, std=self.std,
                              shard_id=self.shard_id, num_shards=self.num_shards, device_id=device_id,
                              num_threads=self.num_threads, crop=self.crop, ignore_index=self.ignore_index)
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        return DALIGenericIterator(pipe, ["image", "mask"], reader_name="images", last_batch_policy=policy,
                                   auto_reset=True)

    def __iter__(self):
        if self._iterator is None:
            self._iterator = self._build()
        elif not self._finished_epoch:  # Lightning stopped early: DALI needs the epoch drained
            for _ in self._iterator:
                pass
        self._finished_epoch = False
        for batch in self._iterator:
            yield {"image": batch[0]["image"], "mask": batch[0]["mask"]}
        self._finished_epoch = True
