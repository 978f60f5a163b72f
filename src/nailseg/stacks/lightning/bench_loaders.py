"""``nailseg bench loaders``: input pipelines side by side, batches delivered on the device.

Each pipeline is timed from the loader's output to a normalised, augmented float batch
resident on the device the model would use: exactly what a training step waits for.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from nailseg.core.benchmark import environment, summarize, time_repeats
from nailseg.core.data.discover import find_pairs
from nailseg.config import Experiment

PIPELINES = ("decode-only", "cpu", "kornia", "dali")
DECODE_ONLY = ("images/s of reading and resizing the files alone (reduced-size JPEG decoding, area downscale "
               "to cache_scale x the side, then the resize to the training size), in a pool of the same number "
               "of threads; no augmentation, no tensors on the device")
METHOD = ("images/s = batches x batch size / wall time, per repeat, after {warmup} warm-up batches; "
          "the median over {repeats} repeats of {batches} batches; each batch delivered on {device} "
          "(augmented, normalised, float32), CUDA synchronised at the end of each repeat")


def _cycle(make_iter):
    while True:
        yield from make_iter()


def _decode_only(exp: Experiment, pairs, workers: int):
    """The floor every pipeline sits on: read and resize each file (reduced-size decoding
    included), no augmentation, no tensors; ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    from nailseg.core.data.cache import cache_longest_side, load_pair

    longest = cache_longest_side(exp.data.size_hw, exp.data.cache_scale)
    h, w = exp.data.size_hw
    pool = ThreadPoolExecutor(workers)
    order = itertools.cycle(range(len(pairs)))

    def read(i: int) -> np.ndarray:
        image, mask = load_pair(pairs[i], longest)
        cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)

    def next_batch():
        images = list(pool.map(read, [next(order) for _ in range(exp.trainer.batch_size)]))
        return torch.from_numpy(np.stack(images)), None

    return next_batch


def _batch_source(name: str, exp: Experiment, pairs, device: torch.device, workers: int):
    """A function returning the next ready batch (image, mask) on ``device`` for pipeline ``name``."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if name == "decode-only":
        return _decode_only(exp, pairs, workers)
    if name == "dali":
        from nailseg.stacks.lightning.loaders.dali import DaliLoader

        loader = DaliLoader(pairs, exp.augment.train, exp.data.size_hw, batch_size=exp.trainer.batch_size,
                            train=True, seed=0, drop_last=True, num_threads=workers,
                            device="gpu" if device.type == "cuda" else "cpu", crop=exp.data.crop_hw)
        stream = _cycle(lambda: iter(loader))

        def next_batch():
            b = next(stream)
            return b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True)

        return next_batch
    from nailseg.stacks.lightning.loaders.dataloader import build_loader
    from nailseg.stacks.lightning.loaders.kornia import device_augment

    raw = exp.to_dict()
    raw["data"].update(pipeline="kornia" if name == "kornia" else "albumentations", num_workers=workers)
    variant = Experiment.model_validate(raw)
    loader = build_loader(variant, pairs, train=True, drop_last=True)
    stream = _cycle(lambda: iter(loader))
    augment = device_augment(variant)
    augment = augment.to(device) if augment is not None else None

    def next_batch():
        b = next(stream)
        image = b["image"].to(device, non_blocking=True)
        mask = b["mask"].to(device, non_blocking=True)
        if augment is not None:
            image, mask = augment(image, mask, train=True)
        return image, mask

    return next_batch


def _with_cache(exp: Experiment, cache: str, folder: str) -> Experiment:
    raw = exp.to_dict()
    raw["data"].update(cache=cache, cache_dir=folder if cache == "disk" else None)
    return Experiment.model_validate(raw)


def bench_loaders(exp: Experiment, pipelines: list[str], *, workers: int, batches: int, repeats: int,
                  warmup: int = 3, caches: list[str] = ("none",), repeat_files_to: int = 0) -> list[dict]:
    """One row per pipeline and cache mode (DALI reads its files itself: ``none`` only), plus a
    ``decode-only`` row when asked for. ``repeat_files_to``: cycle the folder's files up to that
    many (the cache then holds each copy, as it would for that many distinct files)."""
    import tempfile
    import time

    pairs, _ = find_pairs(exp.data.root)
    target = max(exp.trainer.batch_size, repeat_files_to)
    if len(pairs) < target:  # repeat the files to fill at least one batch (or the asked-for count)
        pairs = list(itertools.islice(itertools.cycle(pairs), target))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    env = environment(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    method = METHOD.format(warmup=warmup, repeats=repeats, batches=batches, device=device.type)
    results = []
    with tempfile.TemporaryDirectory(prefix="nailseg-bench-cache-") as disk_dir:
        for name in pipelines:
            for cache in (["none"] if name in ("dali", "decode-only") else caches):
                started = time.perf_counter()
                next_batch = _batch_source(name, _with_cache(exp, cache, disk_dir), pairs, device, workers)
                setup_s = time.perf_counter() - started

                def step():
                    image, _ = next_batch()
                    return image.shape[0]

                rates = time_repeats(step, warmup=warmup, batches=batches, repeats=repeats, sync=sync)
                label = name if name == "decode-only" else f"{name} cache={cache}"
                results.append(summarize(name, rates, label=label, cache=cache, setup_s=round(setup_s, 3),
                                         method=method if name != "decode-only" else DECODE_ONLY,
                                         batch_size=exp.trainer.batch_size, image_size=list(exp.data.size_hw),
                                         cpu_threads=workers, files=len(pairs), data=str(exp.data.root),
                                         cache_scale=exp.data.cache_scale,
                                         augment=[op.name for op in exp.augment.train], **env))
    return results


# What `nailseg bench` calls (nailseg.stacks.load_bench).
run = bench_loaders
CHOICES = PIPELINES
