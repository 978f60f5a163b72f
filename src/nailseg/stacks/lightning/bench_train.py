"""``nailseg bench train``: training throughput with the configured loader against the model's limit.

The limit is the same training step fed from one batch already in device memory; the ratio
says how much of the model's speed the input pipeline lets through, per precision.
"""

from __future__ import annotations

import contextlib
import itertools

import torch

from nailseg.core.benchmark import environment, summarize, time_repeats
from nailseg.core.data.discover import find_pairs
from nailseg.config import Experiment
from nailseg.stacks.lightning.hardware import torch_precision


def _precision_context(precision: str, device: torch.device):
    if precision in ("bf16-mixed", "bf16"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("16-mixed", "16"):
        return lambda: torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext


def _variant(exp: Experiment, pipeline: str, cache: str, cache_dir: str) -> Experiment:
    raw = exp.to_dict()
    raw["data"].update(pipeline=pipeline, cache=cache, cache_dir=cache_dir if cache == "disk" else None)
    return Experiment.model_validate(raw)


def bench_train(exp: Experiment, precisions: list[str], *, batches: int, repeats: int, warmup: int = 3,
                pipelines: list[str] | None = None, caches: list[str] | None = None) -> list[dict]:
    """Per precision: the model's limit, then one row per pipeline x cache mode with its ``ratio``
    to the limit (``percent_of_limit`` = 100 x ratio)."""
    import tempfile

    pipelines = pipelines or [exp.pipeline]
    caches = caches or [exp.data.cache]
    cache_dir = tempfile.mkdtemp(prefix="nailseg-bench-train-")
    from nailseg.stacks.lightning.models import build_loss, build_model, without_pretrained
    from nailseg.stacks.lightning.loaders import build_loaders
    from nailseg.stacks.lightning.loaders.kornia import device_augment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pairs, _ = find_pairs(exp.data.root)
    if len(pairs) < exp.trainer.batch_size:
        pairs = list(itertools.islice(itertools.cycle(pairs), exp.trainer.batch_size))
    env = environment(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    results = []
    for precision in precisions:
        torch.manual_seed(0)
        model = build_model(without_pretrained(exp.model)).to(device).train()
        channels_last = torch_precision(precision, "gpu" if device.type == "cuda" else "cpu").channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss_fn = build_loss(exp.loss, exp.model.classes, exp.data.ignore_index)
        opt = torch.optim.AdamW(model.parameters(), lr=exp.optim.lr)
        scaler = torch.amp.GradScaler(enabled=precision in ("16-mixed", "16"))
        autocast = _precision_context(precision, device)
        def train_step(image, mask):
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss = loss_fn(model(image), mask)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return image.shape[0]

        variants = [(p, c) for p in pipelines for c in (["none"] if p == "dali" else caches)]
        first_loader, _ = build_loaders(_variant(exp, variants[0][0], variants[0][1], cache_dir), pairs, pairs[:1])
        resident = next(iter(first_loader))
        image0, mask0 = resident["image"].to(device), resident["mask"].to(device)
        limit = time_repeats(lambda: train_step(image0, mask0), warmup=warmup, batches=batches, repeats=repeats,
                             sync=sync)
        d = exp.model.describe()
        common = dict(precision=precision, channels_last=channels_last,
                      model=f"{d['family']}:{d['arch']}/{d['encoder']}",
                      batch_size=exp.trainer.batch_size, image_size=list(exp.data.size_hw),
                      parameters=sum(p.numel() for p in model.parameters()),
                      method=f"training steps (forward, loss, backward, AdamW step); median of {repeats} repeats "
                             f"of {batches} steps after {warmup} warm-up step{'s' if warmup != 1 else ''}", **env)
        lim = summarize("model limit (batch in device memory)", limit, label=f"limit {precision}", **common)
        results.append(lim)
        for pipeline, cache in variants:
            variant = _variant(exp, pipeline, cache, cache_dir)
            train_loader, _ = build_loaders(variant, pairs, pairs[:1])
            stream = itertools.chain.from_iterable(iter(train_loader) for _ in itertools.count())
            gpu_augment = device_augment(variant)
            gpu_augment = gpu_augment.to(device) if gpu_augment is not None else None

            def from_loader():
                b = next(stream)
                image, mask = b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True)
                if gpu_augment is not None:
                    image, mask = gpu_augment(image, mask, train=True)
                return train_step(image, mask)

            fed = time_repeats(from_loader, warmup=warmup, batches=batches, repeats=repeats, sync=sync)
            res = summarize(f"{pipeline} pipeline, cache {cache}", fed, label=f"{pipeline}/{cache} {precision}",
                            data_pipeline=pipeline, cache=cache, **common)
            res["ratio"] = res["images_per_s"] / lim["images_per_s"]
            res["percent_of_limit"] = 100.0 * res["ratio"]
            results.append(res)
    import shutil

    shutil.rmtree(cache_dir, ignore_errors=True)
    return results


# What `nailseg bench` calls (nailseg.stacks.load_bench).
run = bench_train
