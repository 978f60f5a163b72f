"""Input pipelines of the Lightning stack, one module per ``data.pipeline`` value.

- ``dataloader``: DataLoader workers decode + albumentations (``albumentations``), or decode +
  resize only for ``kornia``;
- ``kornia``: the spec as a kornia ``AugmentationSequential`` on the batch's device;
- ``dali``: an NVIDIA DALI pipeline that reads, decodes and augments.
"""

from __future__ import annotations

from nailseg.core.runtime import drop_last as drop_rule


def build_loaders(exp, train_pairs, val_pairs, *, sampler=None, drop_last: bool | None = None, run_folder=None):
    """(train, val) iterables of ``{"image", "mask"}`` batches for ``exp.pipeline``; ``run_folder``
    holds a ``data.cache: disk`` cache unless ``data.cache_dir`` names another."""
    if drop_last is None:
        drop_last = drop_rule(len(train_pairs), exp.trainer.batch_size)
    if exp.pipeline == "dali":
        from nailseg.stacks.lightning.loaders.dali import DaliLoader

        labels = exp.data.label_spec  # many classes: index PNGs in the run folder (or a temporary one)
        folder = None
        if labels is not None:
            import tempfile
            from pathlib import Path

            folder = Path(run_folder) / "dali_labels" if run_folder is not None else Path(tempfile.mkdtemp()) / "labels"
        common = dict(ops=exp.augment.train, size=exp.data.size_hw, batch_size=exp.trainer.batch_size,
                      seed=exp.trainer.seed, norm=exp.normalization, labels=labels, label_folder=folder)
        return (DaliLoader(train_pairs, train=True, drop_last=drop_last, crop=exp.data.crop_hw, **common),
                DaliLoader(val_pairs, train=False, drop_last=False, **common))
    from nailseg.stacks.lightning.loaders.dataloader import build_loader

    return (build_loader(exp, train_pairs, train=True, sampler=sampler, drop_last=drop_last, run_folder=run_folder),
            build_loader(exp, val_pairs, train=False, run_folder=run_folder))
