"""tf.data input pipeline for the Keras stack: decode with ``tf.io``, augment, batch, prefetch.

Two augmentation libraries translate the same spec (``data.pipeline``: albumentations or tf):

- ``albumentations``: the CPU translation every torch pipeline uses, run inside
  ``tf.numpy_function``; each element carries its own seed (drawn from a seeded
  ``tf.data.Dataset.random`` stream), so a fixed seed gives the same augmentations;
- ``tf``: graph-native ``tf.image`` stateless ops, one seed per element shared by image and
  mask (nearest-neighbour resampling for the mask).

Balanced sampling (``data.balance``) builds one infinite, shuffled stream per group and mixes
them with ``tf.data.Dataset.sample_from_datasets`` at the target shares, so no group runs dry.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter

import numpy as np
import tensorflow as tf

from nailseg.core.augment import AugmentOp, to_albumentations
from nailseg.core.weights import IMAGENET, Normalization
from nailseg.core.data.discover import Pair

AUTOTUNE = tf.data.AUTOTUNE


def decode_pair(image_path: tf.Tensor, mask_path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 RGB image (H, W, 3) and uint8 0/1 mask (H, W, 1), by the data layer's mask rule."""
    image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
    raw = tf.io.decode_image(tf.io.read_file(mask_path), channels=0, expand_animations=False, dtype=tf.uint8)
    raw = tf.reduce_max(raw[..., :3] if raw.shape[-1] in (2, 4) else raw, axis=-1, keepdims=True)
    peak = tf.reduce_max(raw)
    mask = tf.where(peak <= 1, raw >= 1, raw > 127)
    image.set_shape([None, None, 3])
    return image, tf.cast(mask, tf.uint8)


# ---- the tf pipeline: tf.image ops-------------------------------------------------------------------------

def _coin(seed, p: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < p


def _sub(seed, i: int) -> tf.Tensor:
    """An independent stateless seed per augmentation step."""
    return tf.random.experimental.stateless_fold_in(seed, i)


def _affine_matrix(seed, op, h: int, w: int) -> tf.Tensor:
    """The 8-vector output->input projective transform of a rotation/scale/translation about the centre."""
    u = tf.random.stateless_uniform([4], seed, 0.0, 1.0)
    angle = (u[0] * 2 - 1) * op.rotate * math.pi / 180.0
    scale = op.scale[0] + u[1] * (op.scale[1] - op.scale[0])
    tx = (u[2] * 2 - 1) * op.translate * w
    ty = (u[3] * 2 - 1) * op.translate * h
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # inverse map: input = R^-1 S^-1 (output - centre - t) + centre
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    ox, oy = cx + tx, cy + ty
    return tf.stack([a0, a1, cx - a0 * ox - a1 * oy, b0, b1, cy - b0 * ox - b1 * oy, 0.0, 0.0])


def _warp(x: tf.Tensor, matrix: tf.Tensor, interpolation: str) -> tf.Tensor:
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=matrix[None], output_shape=tf.shape(x)[:2], fill_value=0.0,
        interpolation=interpolation, fill_mode="CONSTANT")
    return out[0]


def _gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2.0 * sigma**2))
    k = k / tf.reduce_sum(k)
    kernel_h = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    kernel_v = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(image[None], kernel_h, [1, 1, 1, 1], "SAME")
    return tf.nn.depthwise_conv2d(out, kernel_v, [1, 1, 1, 1], "SAME")[0]


def _tf_flip(axis: int):
    def flip(s, op, image, mask, h, w):
        use = _coin(s, op.p)
        return tf.where(use, tf.reverse(image, [axis]), image), tf.where(use, tf.reverse(mask, [axis]), mask)
    return flip


def _tf_affine(s, op, image, mask, h, w):
    use = _coin(_sub(s, 1), op.p)
    matrix = _affine_matrix(_sub(s, 2), op, h, w)
    return tf.where(use, _warp(image, matrix, "BILINEAR"), image), tf.where(use, _warp(mask, matrix, "NEAREST"), mask)


def _tf_brightness_contrast(s, op, image, mask, h, w):
    use = _coin(_sub(s, 1), op.p)
    shift = tf.random.stateless_uniform([], _sub(s, 2), -op.brightness, op.brightness) * 255.0
    factor = tf.random.stateless_uniform([], _sub(s, 3), 1 - op.contrast, 1 + op.contrast)
    mean = tf.reduce_mean(image)
    return tf.where(use, (image - mean) * factor + mean + shift, image), mask


def _tf_hue_saturation(s, op, image, mask, h, w):
    use = _coin(_sub(s, 1), op.p)
    out = tf.image.stateless_random_hue(image / 255.0, op.hue, _sub(s, 2)) if op.hue > 0 else image / 255.0
    if op.saturation > 0:
        out = tf.image.stateless_random_saturation(out, 1 - op.saturation, 1 + op.saturation, _sub(s, 3))
    return tf.where(use, out * 255.0, image), mask


def _tf_gauss_noise(s, op, image, mask, h, w):
    use = _coin(_sub(s, 1), op.p)
    std = tf.random.stateless_uniform([], _sub(s, 2), op.std[0], op.std[1]) * 255.0
    return tf.where(use, image + tf.random.stateless_normal(tf.shape(image), _sub(s, 3)) * std, image), mask


def _tf_blur(s, op, image, mask, h, w):
    use = _coin(_sub(s, 1), op.p)
    sigma = tf.random.stateless_uniform([], _sub(s, 2), op.sigma[0], op.sigma[1])
    return tf.where(use, _gaussian_blur(image, sigma, math.ceil(3 * op.sigma[1])), image), mask


def _tf_resized_crop(s, op, image, mask, h, w):
    return image, mask  # cropped before the resize, in tf_augment


# One tf.image translation per op: (seed, op, image, mask, h, w) -> (image, mask), after the resize.
# Its keys are the tf row's ``ops`` in nailseg.specs (tests/test_specs.py).
TF_OPS = {
    "hflip": _tf_flip(1),
    "vflip": _tf_flip(0),
    "affine": _tf_affine,
    "random_resized_crop": _tf_resized_crop,
    "brightness_contrast": _tf_brightness_contrast,
    "hue_saturation": _tf_hue_saturation,
    "gauss_noise": _tf_gauss_noise,
    "blur": _tf_blur,
}


def tf_augment(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, ops: list[AugmentOp],
               size: tuple[int, int], train: bool, window: tuple[int, int] | None = None,
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """float32 image in [0, 255] (h, w, 3) and float32 0/1 mask (h, w, 1) after the spec.

    ``window`` (``data.crop_size``, training only): a random (height, width) window of the ``size``
    picture, cut as soon as it exists, so the ops after it run on the window (as albumentations'
    ``RandomCrop`` does in the other pipeline)."""
    h, w = size
    ops = list(ops) if train else []
    crop = next((op for op in ops if op.name == "random_resized_crop"), None)
    if crop is not None:
        s = _sub(seed, 100)
        shape = tf.shape(image)
        area = tf.random.stateless_uniform([], _sub(s, 1), crop.scale[0], crop.scale[1])
        log_r = tf.random.stateless_uniform([], _sub(s, 2), math.log(crop.ratio[0]), math.log(crop.ratio[1]))
        r = tf.exp(log_r)
        cw = tf.minimum(tf.sqrt(area * r), 1.0)
        ch = tf.minimum(tf.sqrt(area / r), 1.0)
        use = tf.cast(_coin(_sub(s, 3), crop.p), tf.float32)
        cw, ch = 1.0 - use * (1.0 - cw), 1.0 - use * (1.0 - ch)
        x0 = tf.random.stateless_uniform([], _sub(s, 4)) * (1.0 - cw)
        y0 = tf.random.stateless_uniform([], _sub(s, 5)) * (1.0 - ch)
        hh, ww = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        oy, ox = tf.cast(y0 * hh, tf.int32), tf.cast(x0 * ww, tf.int32)
        th, tw = tf.maximum(1, tf.cast(ch * hh, tf.int32)), tf.maximum(1, tf.cast(cw * ww, tf.int32))
        image = tf.image.crop_to_bounding_box(image, oy, ox, th, tw)
        mask = tf.image.crop_to_bounding_box(mask, oy, ox, th, tw)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)
    mask = tf.cast(tf.image.resize(mask, size, method="nearest"), tf.float32)
    if train and window is not None and tuple(window) != (h, w):
        s = _sub(seed, 200)
        oy = tf.random.stateless_uniform([], s, 0, h - window[0] + 1, dtype=tf.int32)
        ox = tf.random.stateless_uniform([], _sub(s, 1), 0, w - window[1] + 1, dtype=tf.int32)
        image = tf.image.crop_to_bounding_box(image, oy, ox, window[0], window[1])
        mask = tf.image.crop_to_bounding_box(mask, oy, ox, window[0], window[1])
        h, w = window
    for i, op in enumerate(ops):
        image, mask = TF_OPS[op.name](_sub(seed, i), op, image, mask, h, w)
    return tf.clip_by_value(image, 0.0, 255.0), mask


# ---- the albumentations pipeline ---------------------------------------------------------------------

def _albumentations_fn(ops: list[AugmentOp], size: tuple[int, int], train: bool, mask_fill: int = 0,
                       crop: tuple[int, int] | None = None):
    """A numpy function for ``tf.numpy_function``; one Compose per tf.data thread (each holds its RNG).
    ``mask_fill``: what a warp pads the mask with (the ignore value for class-index masks); ``crop``:
    the training window (``data.crop_size``)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    local = threading.local()

    def apply(image: np.ndarray, mask: np.ndarray, seed: np.ndarray):
        transform = getattr(local, "transform", None)
        if transform is None:
            transform = local.transform = to_albumentations(ops, size, train=train, normalize=False,
                                                            mask_fill=mask_fill, crop=crop)
        transform.set_random_seed(int(seed) % (2**31))
        out = transform(image=image, mask=mask[..., 0])
        return out["image"].astype(np.float32), out["mask"][..., None].astype(np.float32)

    return apply


# ---- the dataset ---------------------------------------------------------------------------------

class GroupCounter:
    """Counts which balance group each drawn element came from (read per epoch by a callback)."""

    def __init__(self, names: list[str]):
        self.names = names
        self.counts: Counter = Counter()

    def record(self, group: np.ndarray) -> np.ndarray:
        self.counts[int(group)] += 1
        return group

    def take_shares(self) -> dict[str, float]:
        total = sum(self.counts.values()) or 1
        shares = {name: self.counts[i] / total for i, name in enumerate(self.names)}
        self.counts.clear()
        return shares


def balanced_files(pairs: list[Pair], grouping, seed: int) -> tf.data.Dataset:
    """An infinite stream of (image path, mask path, group index) in the grouping's target shares.

    Each group is its own shuffled, repeated stream, and ``sample_from_datasets`` picks the
    next group by the target weights: a small group is reshuffled and drawn again, never
    exhausted, for as long as training runs.
    """
    index = {p.key: i for i, p in enumerate(pairs)}
    streams = []
    for g, name in enumerate(grouping.names):
        members = [index[k] for k, grp in zip(grouping.keys, grouping.groups) if grp == name]
        ds = tf.data.Dataset.from_tensor_slices(([str(pairs[i].image) for i in members],
                                                 [str(pairs[i].mask) for i in members], [g] * len(members)))
        streams.append(ds.shuffle(len(members), seed=seed + g, reshuffle_each_iteration=True).repeat())
    return tf.data.Dataset.sample_from_datasets(streams, weights=[grouping.target[n] for n in grouping.names],
                                                seed=seed, stop_on_empty_dataset=False)


def source_reader(pairs: list[Pair], source):
    """A ``decode`` for tf.data that reads pairs from ``source`` (the decode cache, or the files
    through the same reduced-size loading), found by image path."""
    index_of = {str(p.image): i for i, p in enumerate(pairs)}

    def read(image_path: bytes):
        image, mask = source[index_of[image_path.decode()]]
        return image, mask[..., None]

    def decode(image_path: tf.Tensor, mask_path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, mask = tf.numpy_function(read, [image_path], [tf.uint8, tf.uint8], stateful=False)
        image.set_shape([None, None, 3])
        mask.set_shape([None, None, 1])
        return image, mask

    return decode


def build_dataset(pairs: list[Pair], ops: list[AugmentOp], size: tuple[int, int], *, batch_size: int,
                  train: bool, seed: int, pipeline: str, grouping=None, counter: GroupCounter | None = None,
                  drop_remainder: bool = False, source=None, norm: Normalization = IMAGENET,
                  ignore_index: int | None = None, crop: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Batches of (normalised float32 image (N, h, w, 3), float32 0/1 mask (N, h, w, 1)).

    ``crop`` (``data.crop_size``): training batches are random (height, width) windows of the
    ``size`` pictures; evaluation batches (``train=False``) stay whole.

    ``source``: a :mod:`nailseg.core.data.cache` source the pairs are read from; without one,
    ``tf.io`` decodes the files at full size. ``norm``: the encoder's (``Experiment.normalization``).
    ``ignore_index``: many classes (the source reads class indices, exact in float32); a warp pads
    their mask with it (the ``tf`` pipeline is refused for them at config time)."""
    decode = decode_pair if source is None else source_reader(pairs, source)
    images = [str(p.image) for p in pairs]
    masks = [str(p.mask) for p in pairs]
    if grouping is not None and train:
        files = balanced_files(pairs, grouping, seed)
        if counter is not None:
            files = files.map(lambda i, m, g: (i, m, tf.numpy_function(counter.record, [g], tf.int32, stateful=True)))
    else:
        files = tf.data.Dataset.from_tensor_slices((images, masks, [0] * len(images)))
        if train:
            files = files.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(lambda x: tf.stack([x, x // 7 + 1]))
    ds = tf.data.Dataset.zip((files, seeds))
    crop = tuple(crop) if train and crop is not None else None
    h, w = crop or size
    mean = tf.constant(norm.mean, tf.float32) * 255.0
    std = tf.constant(norm.std, tf.float32) * 255.0

    if pipeline == "tf":
        def load(item, element_seed):
            image, mask = decode(item[0], item[1])
            image, mask = tf_augment(image, mask, element_seed, ops, size, train, crop)
            return (image - mean) / std, mask
    else:
        apply = _albumentations_fn(ops, size, train, mask_fill=0 if ignore_index is None else ignore_index,
                                   crop=crop)

        def load(item, element_seed):
            image, mask = decode(item[0], item[1])
            image, mask = tf.numpy_function(apply, [image, mask, element_seed[0]], [tf.float32, tf.float32])
            image.set_shape([h, w, 3])
            mask.set_shape([h, w, 1])
            return (image - mean) / std, mask

    options = tf.data.Options()
    options.deterministic = True
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE).with_options(options)
