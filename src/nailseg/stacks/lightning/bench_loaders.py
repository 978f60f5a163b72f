"""``nailseg bench loaders``: input pipelines side by side, batches delivered on the device.

Each pipeline is timed from the loader's output to a normalised, augmented float batch
resident on the device the model would use: exactly what a training step waits for.
"""

from __future__ import annotations

import itertools

import torch

from nailseg.core.benchmark import environment, summarize, time_repeats
from nailseg.core.data.discover import find_pairs
from nailseg.config import Experiment

PIPELINES = ("cpu", "kornia", "dali")
METHOD = ("images/s = batches x batch size / wall time, per repeat, after {warmup} warm-up batches; "
          "the median over {repeats} repeats of {batches} batches; each batch delivered on {device} "
          "(augmented, normalised, float32), CUDA synchronised at the end of each repeat")


def _cycle(make_iter):
    while True:
        yield from make_iter()


def _batch_source(name: str, exp: Experiment, pairs, device: torch.device, workers: int):
    """A function returning the next ready batch (image, mask) on ``device`` for pipeline ``name``."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if name == "dali":
        from nailseg.stacks.lightning.loaders.dali import DaliLoader

        loader = DaliLoader(pairs, exp.augment.train, exp.data.size_hw, batch_size=exp.trainer.batch_size,
                            train=True, seed=0, drop_last=True, num_threads=workers,
                            device="gpu" if device.type == "cuda" else "cpu")
        stream = _cycle(lambda: iter(loader))

        def next_batch():
            b = next(stream)
            return b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True)

        return next_batch
    from nailseg.stacks.lightning.loaders.dataloader import build_loader

    raw = exp.to_dict()
    raw["data"].update(pipeline="kornia" if name == "kornia" else "albumentations", num_workers=workers)
    loader = build_loader(Experiment.model_validate(raw), pairs, train=True, drop_last=True)
    stream = _cycle(lambda: iter(loader))
    augment = None
    if name == "kornia":
        from nailseg.stacks.lightning.loaders.kornia import GpuAugment

        augment = GpuAugment(exp.augment.train, exp.data.size_hw).to(device)

    def next_batch():
        b = next(stream)
        image = b["image"].to(device, non_blocking=True)
        mask = b["mask"].to(device, non_blocking=True)
        if augment is not None:
            image, mask = augment(image, mask, train=True)
        return image, mask

    return next_batch


def bench_loaders(exp: Experiment, pipelines: list[str], *, workers: int, batches: int, repeats: int,
                  warmup: int = 3) -> list[dict]:
    pairs, _ = find_pairs(exp.data.root)
    if len(pairs) < exp.trainer.batch_size:  # repeat the files to fill at least one batch
        pairs = list(itertools.islice(itertools.cycle(pairs), exp.trainer.batch_size))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    env = environment()
    method = METHOD.format(warmup=warmup, repeats=repeats, batches=batches, device=device.type)
    results = []
    for name in pipelines:
        next_batch = _batch_source(name, exp, pairs, device, workers)

        def step():
            image, _ = next_batch()
            return image.shape[0]

        rates = time_repeats(step, warmup=warmup, batches=batches, repeats=repeats, sync=sync)
        results.append(summarize(name, rates, method=method, batch_size=exp.trainer.batch_size,
                                 image_size=list(exp.data.size_hw), cpu_threads=workers, files=len(pairs),
                                 data=str(exp.data.root), augment=[op.name for op in exp.augment.train], **env))
    return results
