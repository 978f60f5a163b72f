"""``nailseg bench tfdata``: the Keras stack's two pipelines against decode + resize only.

A separate command from ``bench loaders`` because TensorFlow and torch must not share a process.
"""

from __future__ import annotations

import itertools

from nailseg.core.benchmark import summarize, time_repeats
from nailseg.core.data.discover import find_pairs
from nailseg.config import Experiment

PIPELINES = ("decode-only", "albumentations", "tf")


def bench_tfdata(exp: Experiment, pipelines: list[str], *, batches: int, repeats: int, warmup: int = 3) -> list[dict]:
    import os
    import platform

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from nailseg.stacks.keras.tfdata import build_dataset

    pairs, _ = find_pairs(exp.data.root)
    if len(pairs) < exp.trainer.batch_size:
        pairs = list(itertools.islice(itertools.cycle(pairs), exp.trainer.batch_size))
    results = []
    for name in pipelines:
        ops = [] if name == "decode-only" else exp.augment.train
        ds = build_dataset(pairs, ops, exp.data.size_hw, batch_size=exp.trainer.batch_size, train=True, seed=0,
                           pipeline="tf" if name == "tf" else "albumentations", drop_remainder=True,
                           norm=exp.normalization, crop=exp.data.crop_hw).repeat()
        stream = iter(ds)

        def step():
            images, _ = next(stream)
            return int(images.shape[0])

        rates = time_repeats(step, warmup=warmup, batches=batches, repeats=repeats)
        results.append(summarize(name, rates, batch_size=exp.trainer.batch_size, image_size=list(exp.data.size_hw),
                                 crop_size=list(exp.data.crop_hw) if exp.data.crop_hw else None,
                                 files=len(pairs), data=str(exp.data.root),
                                 augment=[op.name for op in ops], tensorflow=tf.__version__,
                                 cpu_count=os.cpu_count(), machine=platform.machine(), device="cpu (tf.data)",
                                 method=f"tf.data batches (decoded, resized, augmented, normalised) per second; median "
                                        f"of {repeats} repeats of {batches} batches after {warmup} warm-up batches; "
                                        "decode-only = no augmentation"))
    return results


# What `nailseg bench` calls (nailseg.stacks.load_bench).
run = bench_tfdata
CHOICES = PIPELINES
