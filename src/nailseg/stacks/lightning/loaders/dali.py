"""NVIDIA DALI: reading, decoding and augmenting in one pipeline, on the GPU when there is one.

Two file readers (images, masks) with identical seeds, sharding and shuffling stay aligned
sample for sample. Decoding runs on the GPU (``mixed``: nvJPEG, hardware-assisted for
baseline JPEGs) when a GPU is there, and on the CPU (``device_id=None``) when not. Every
geometric draw (flip, affine, random resized crop) is made once per sample and applied to
image and mask (nearest neighbour for masks); colour augmentations touch the image only.
The spec is the same one albumentations and kornia translate.

Many classes (``data.classes``): DALI's decoder would turn a palette or colour mask into grey
levels that are not class indices, so each mask is first read by nailseg's own label reader
(index, palette or colour table, values checked) and written once as an 8-bit index PNG in
the run folder (``dali_labels/``); DALI decodes those as they are, moves them with nearest
neighbour, and pads what an affine uncovers with the ignore value.

:class:`DaliLoader` plugs the pipeline into Lightning as a plain iterable with a correct
``__len__``; it drains an epoch that Lightning stopped early (DALI ignores a reset before the
end of an epoch), resets cleanly for the next one, keeps or drops the last partial batch as
configured, and shards by rank under DDP.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from nailseg.core.augment import IMAGENET, AugmentOp, Normalization
from nailseg.core.data.discover import Pair
from nailseg.stacks._torch.distributed import rank_world


def _dali():
    from nailseg.core.optional import require

    require("nvidia.dali", "dali", "The DALI pipeline (data.pipeline: dali)")
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    return fn, dmath, types


def _coin(fn, p: float):
    return fn.cast(fn.random.coin_flip(probability=p), dtype=_dali()[2].FLOAT)


def _uniform(fn, lo: float, hi: float):
    """A per-sample draw from [lo, hi); a constant when the range is a single value."""
    if hi <= lo:
        return fn.random.uniform(range=[lo, lo + 1e-6])
    return fn.random.uniform(range=[lo, hi])


def _dali_flip(axis: str):
    def flip(fn, dmath, types, op, image, mask, h, w):
        c = fn.random.coin_flip(probability=op.p)
        args = {"horizontal": c} if axis == "horizontal" else {"vertical": c, "horizontal": 0}
        return fn.flip(image, **args), fn.flip(mask, **args)
    return flip


def _dali_affine(fn, dmath, types, op, image, mask, h, w, mask_fill: int = 0):
    c = _coin(fn, op.p)
    angle = _uniform(fn, -op.rotate, op.rotate) * c
    s = 1.0 + (_uniform(fn, *op.scale) - 1.0) * c
    tx = _uniform(fn, -op.translate, op.translate) * c * w
    ty = _uniform(fn, -op.translate, op.translate) * c * h
    centre = [w / 2.0 + 0.5, h / 2.0 + 0.5]  # matches OpenCV's grid (albumentations) exactly
    matrix = fn.transforms.combine(
        fn.transforms.scale(scale=fn.stack(s, s), center=centre),
        fn.transforms.rotation(angle=angle, center=centre),
        fn.transforms.translation(offset=fn.stack(tx, ty)),
    )
    image = fn.warp_affine(image, matrix=matrix, fill_value=0, inverse_map=False, interp_type=types.INTERP_LINEAR)
    mask = fn.warp_affine(mask, matrix=matrix, fill_value=mask_fill, inverse_map=False, interp_type=types.INTERP_NN)
    return image, mask


def _dali_brightness_contrast(fn, dmath, types, op, image, mask, h, w):
    c = _coin(fn, op.p)
    return fn.brightness_contrast(image, brightness_shift=_uniform(fn, -op.brightness, op.brightness) * c,
                                  contrast=1.0 + _uniform(fn, -op.contrast, op.contrast) * c), mask


def _dali_hue_saturation(fn, dmath, types, op, image, mask, h, w):
    c = _coin(fn, op.p)
    return fn.hsv(image, hue=_uniform(fn, -op.hue, op.hue) * 360.0 * c,
                  saturation=1.0 + _uniform(fn, -op.saturation, op.saturation) * c), mask


def _dali_gauss_noise(fn, dmath, types, op, image, mask, h, w):
    c = _coin(fn, op.p)
    return fn.noise.gaussian(image, stddev=_uniform(fn, *op.std) * 255.0 * c), mask


def _dali_blur(fn, dmath, types, op, image, mask, h, w):
    c = _coin(fn, op.p)
    sigma = dmath.max(_uniform(fn, *op.sigma) * c, 0.01)
    return fn.gaussian_blur(image, sigma=sigma, window_size=2 * math.ceil(3 * op.sigma[1]) + 1), mask


def _dali_resized_crop(fn, dmath, types, op, image, mask, h, w):
    return image, mask  # drawn before the resize (its window is the resize's region of interest)


# One DALI translation per op: (fn, dmath, types, op, image, mask, h, w) -> (image, mask), applied
# after the resize. Its keys are the dali row's ``ops`` in nailseg.specs (tests/test_specs.py).
DALI_OPS = {
    "hflip": _dali_flip("horizontal"),
    "vflip": _dali_flip("vertical"),
    "affine": _dali_affine,
    "random_resized_crop": _dali_resized_crop,
    "brightness_contrast": _dali_brightness_contrast,
    "hue_saturation": _dali_hue_saturation,
    "gauss_noise": _dali_gauss_noise,
    "blur": _dali_blur,
}


def build_pipeline(image_files: list[str], mask_files: list[str], ops: list[AugmentOp], size: tuple[int, int], *,
                   batch_size: int, train: bool, seed: int, shard_id: int, num_shards: int,
                   device_id: int | None, num_threads: int, norm: Normalization = IMAGENET,
                   crop: tuple[int, int] | None = None, ignore_index: int | None = None):
    """The DALI pipeline: (image float CHW normalised, mask float 1HW in {0, 1}, or class indices
    when ``ignore_index`` is given: the mask files are then 8-bit index PNGs, see :func:`index_masks`).

    ``crop`` (``data.crop_size``, training only): a random window of that (height, width) is cut
    right after the resize, the same place for image and mask, and the ops run on it."""
    fn, dmath, types = _dali()
    from nvidia.dali import pipeline_def

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
            c = _coin(fn, rrc.p)
            area = _uniform(fn, *rrc.scale)
            ratio = dmath.exp(_uniform(fn, math.log(rrc.ratio[0]), math.log(rrc.ratio[1])))
            cw = dmath.min(dmath.sqrt(area * ratio), 1.0)
            ch = dmath.min(dmath.sqrt(area / ratio), 1.0)
            cw, ch = 1.0 - c * (1.0 - cw), 1.0 - c * (1.0 - ch)
            x0 = _uniform(fn, 0.0, 1.0) * (1.0 - cw)
            y0 = _uniform(fn, 0.0, 1.0) * (1.0 - ch)
            resize_args.update(roi_start=fn.stack(y0, x0), roi_end=fn.stack(y0 + ch, x0 + cw), roi_relative=True)
        image = fn.resize(image, interp_type=types.INTERP_LINEAR, antialias=False, **resize_args)
        mask = fn.resize(mask, interp_type=types.INTERP_NN, **resize_args)
        oh, ow = h, w
        if train and crop is not None and tuple(crop) != (h, w):
            oh, ow = crop
            x, y = _uniform(fn, 0.0, 1.0), _uniform(fn, 0.0, 1.0)  # drawn once: image and mask move together
            image = fn.crop(image, crop_h=oh, crop_w=ow, crop_pos_x=x, crop_pos_y=y)
            mask = fn.crop(mask, crop_h=oh, crop_w=ow, crop_pos_x=x, crop_pos_y=y)

        for op in ops:
            if op.name == "affine":  # the only op that uncovers pixels: class masks get the ignore value there
                image, mask = _dali_affine(fn, dmath, types, op, image, mask, oh, ow, mask_fill=ignore_index or 0)
            else:
                image, mask = DALI_OPS[op.name](fn, dmath, types, op, image, mask, oh, ow)
        image = fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW",
                                         mean=[m * 255 for m in norm.mean], std=[s * 255 for s in norm.std])
        mask = fn.crop_mirror_normalize(mask, dtype=types.FLOAT, output_layout="CHW", mean=[0.0], std=[1.0])
        return image, mask

    return pipeline()


def index_masks(pairs: list[Pair], labels, folder: Path) -> list[str]:
    """Each pair's mask as an 8-bit index PNG in ``folder`` (written once, atomically; a file
    already there from an earlier epoch or a resume is kept), read by nailseg's label reader so
    palette and colour masks become class indices before DALI decodes them."""
    import numpy as np
    from PIL import Image

    from nailseg.core.io import atomic_path
    from nailseg.core.labels import read_labels

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for pair in pairs:
        out = folder / (pair.key.replace("/", "__") + ".png")  # keys are unique, so are these names
        if not out.is_file():
            with atomic_path(out) as tmp:
                Image.fromarray(np.ascontiguousarray(read_labels(pair.mask, labels))).save(tmp, format="PNG")
        files.append(str(out))
    return files


class DaliLoader:
    """A DALI pipeline as an iterable of ``{"image", "mask"}`` batches for Lightning."""

    def __init__(self, pairs: list[Pair], ops: list[AugmentOp], size: tuple[int, int], *, batch_size: int,
                 train: bool, seed: int, drop_last: bool, num_threads: int | None = None,
                 device: str | None = None, norm: Normalization = IMAGENET,
                 crop: tuple[int, int] | None = None, labels=None, label_folder: Path | None = None):
        """``labels``: the :class:`~nailseg.core.labels.LabelSpec` of many-class data; its masks are
        rewritten as index PNGs into ``label_folder`` (:func:`index_masks`)."""
        self.norm, self.crop = norm, crop
        self.image_files = [str(p.image) for p in pairs]
        self.ignore_index = None if labels is None else labels.ignore_index
        if labels is not None:
            if label_folder is None:
                raise ValueError("DaliLoader: many classes need a label_folder for their index masks")
            self.mask_files = index_masks(pairs, labels, label_folder)
        else:
            self.mask_files = [str(p.mask) for p in pairs]
        self.ops, self.size, self.batch_size = ops, size, batch_size
        self.train, self.seed, self.drop_last = train, seed, drop_last
        self.num_threads = num_threads or max(1, min(8, (os.cpu_count() or 2) - 1))
        self.device = device or ("gpu" if torch.cuda.is_available() else "cpu")
        self._iterator = None
        self._finished_epoch = True

    def _shard_size(self) -> int:
        _, world = rank_world()
        return math.ceil(len(self.image_files) / world)  # readers pad shards to equal size

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _build(self):
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        rank, world = rank_world()
        device_id = (torch.cuda.current_device() if self.device == "gpu" else None)
        pipe = build_pipeline(self.image_files, self.mask_files, self.ops, self.size, batch_size=self.batch_size,
                              train=self.train, seed=self.seed, shard_id=rank, num_shards=world,
                              device_id=device_id, num_threads=self.num_threads, norm=self.norm,
                              crop=self.crop, ignore_index=self.ignore_index)
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
