"""``nailseg bench train`` for a Keras config: training steps per second per precision policy, with
and without XLA (``jit_compile``), on one batch already in memory (the model's limit) and fed by
the config's tf.data pipeline.

The same verb as the Lightning stack's (``stacks/lightning/bench_train.py``), so the two stacks'
figures come from one command; the rows name the Keras policy (``mixed_bfloat16``...) they ran.
"""

from __future__ import annotations

import itertools
import os
import sys

from nailseg.config import Experiment
from nailseg.core.benchmark import environment, summarize, time_repeats
from nailseg.core.data.discover import find_pairs

POLICIES = {"32": "float32", "32-true": "float32", "bf16-mixed": "mixed_bfloat16", "16-mixed": "mixed_float16"}


def bench_train(exp: Experiment, precisions: list[str], *, batches: int, repeats: int, warmup: int = 3,
                pipelines: list[str] | None = None, caches: list[str] | None = None,
                jit: tuple[bool, ...] = (False, True)) -> list[dict]:
    """Per precision and XLA setting: the limit, then the config's pipeline with its ``ratio`` to
    it. ``pipelines``/``caches``: the Keras stack has one tf.data pipeline per config (``data.pipeline``)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras as keras

    from nailseg.stacks.keras.models import build_sm_loss, build_sm_model
    from nailseg.stacks.keras.tfdata import build_dataset

    pairs, _ = find_pairs(exp.data.root)
    if len(pairs) < exp.trainer.batch_size:
        pairs = list(itertools.islice(itertools.cycle(pairs), exp.trainer.batch_size))
    pipeline = exp.pipeline
    dataset = build_dataset(pairs, exp.augment.train, exp.data.size_hw, batch_size=exp.trainer.batch_size,
                            train=True, seed=0, pipeline=pipeline, drop_remainder=True, norm=exp.normalization,
                            crop=exp.data.crop_hw).repeat()  # the windows training sees (data.crop_size)
    stream = iter(dataset)
    resident = next(stream)
    env = environment("cpu" if not tf.config.list_physical_devices("GPU") else "gpu")
    d = exp.model.describe()
    results = []
    for precision in precisions:
        policy = POLICIES[precision]
        for xla in jit:
            keras.backend.clear_session()
            keras.utils.set_random_seed(0)
            keras.mixed_precision.set_global_policy(policy)
            model = build_sm_model(exp.model.model_copy(update={"encoder_weights": "none"}),
                                   exp.data.crop_hw or exp.data.size_hw)
            opt = keras.optimizers.Adam(exp.optim.lr)
            if policy == "mixed_float16":
                opt = keras.mixed_precision.LossScaleOptimizer(opt)
            model.compile(optimizer=opt, loss=build_sm_loss(exp.loss), jit_compile=xla)

            def step(batch):
                model.train_on_batch(batch[0], batch[1])
                return int(batch[0].shape[0])

            common = dict(precision=precision, keras_policy=policy, jit_compile=xla,
                          model=f"{d['family']}:{d['arch']}/{d['encoder']}", batch_size=exp.trainer.batch_size,
                          image_size=list(exp.data.size_hw), crop_size=list(exp.data.crop_hw) if exp.data.crop_hw else None,
                          parameters=int(model.count_params()),
                          method=f"Keras train_on_batch (forward, loss, backward, Adam step); median of {repeats} "
                                 f"repeats of {batches} steps after {warmup} warm-up step{'s' if warmup != 1 else ''}", **env)
            tag = f"{policy}{' + XLA' if xla else ''}"
            try:
                step(resident)  # XLA compiles here, or says it cannot
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
                reason = next((x for x in str(err).splitlines() if "unsupported operations" in x), str(err)[:200])
                print(f"bench train: {tag} skipped: XLA cannot compile this model here "
                      f"({reason.strip()[:240]})", file=sys.stderr)
                continue
            limit = time_repeats(lambda: step(resident), warmup=warmup, batches=batches, repeats=repeats)
            lim = summarize("model limit (batch in memory)", limit, label=f"limit {tag}", **common)
            results.append(lim)
            fed = time_repeats(lambda: step(next(stream)), warmup=warmup, batches=batches, repeats=repeats)
            res = summarize(f"{pipeline} pipeline", fed, label=f"{pipeline} {tag}", data_pipeline=pipeline, **common)
            res["ratio"] = res["images_per_s"] / lim["images_per_s"]
            res["percent_of_limit"] = 100.0 * res["ratio"]
            results.append(res)
    keras.mixed_precision.set_global_policy("float32")
    return results


# What `nailseg bench` calls (nailseg.registry.load_bench).
run = bench_train
