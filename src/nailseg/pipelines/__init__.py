"""Input pipelines: batches from data pairs and an augmentation spec, one module per engine.

- ``torch_cpu``: DataLoader workers decode + albumentations (``augment.device: cpu``), or
  decode + resize only when ``augment.device: gpu``;
- ``kornia_gpu``: the spec as a kornia ``AugmentationSequential`` on the batch's device;
- ``dali``: an NVIDIA DALI pipeline that reads, decodes and augments (``loader: dali``).
"""

from __future__ import annotations


def build_loaders(exp, train_pairs, val_pairs, *, sampler=None):
    """(train, val) iterables of ``{"image", "mask"}`` batches for the configured loader."""
    if exp.loader == "dali":
        from nailseg.pipelines.dali import DaliLoader

        common = dict(ops=exp.augment.train, size=exp.data.size_hw, batch_size=exp.trainer.batch_size,
                      seed=exp.trainer.seed)
        return (DaliLoader(train_pairs, train=True, drop_last=len(train_pairs) >= 4 * exp.trainer.batch_size,
                           **common),
                DaliLoader(val_pairs, train=False, drop_last=False, **common))
    from nailseg.pipelines.torch_cpu import build_loader

    return build_loader(exp, train_pairs, train=True, sampler=sampler), build_loader(exp, val_pairs, train=False)
