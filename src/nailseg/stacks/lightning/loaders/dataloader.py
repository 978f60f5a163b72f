"""The default torch pipeline: decode (or read the decode cache) + albumentations in DataLoader workers.

With ``data.pipeline: kornia`` the workers only decode and resize and hand over ``uint8``
images; the augmentation and normalisation then run on the device (``data.pipeline: kornia``, ``loaders/kornia.py``).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nailseg.core.augment import to_albumentations
from nailseg.core.data.cache import DecodeCache, FileSource, open_source
from nailseg.core.data.discover import Pair
from nailseg.config import Experiment
from nailseg.core.runtime import resolve_workers
from nailseg.stacks._torch.distributed import rank_world


class SegmentationDataset(Dataset):
    """(image, mask) pairs as float tensors: image (3, H, W) normalised, mask (1, H, W) in {0, 1}
    (or class indices, with ``data.classes``: exact in float32, ``MulticlassLoss`` takes them as ints).

    ``source`` gives decoded ``uint8`` pairs: the decode cache (one memory map shared by all
    workers) or the files themselves."""

    def __init__(self, source: DecodeCache | FileSource, transform):
        self.source = source
        self.transform = transform
        self._seeded_in: int | None = None  # the process whose seed the transform's random state took

    def _seed_transform(self) -> None:
        """albumentations' ``Compose`` keeps its own random state, which no global seed reaches: an
        unseeded one augments differently on every run, so the same config and ``trainer.seed``
        trained to different scores. Seeded here from torch's seed for this process (a DataLoader
        worker's is its base seed + worker id, drawn from the seeded main process; the rank keeps
        DDP ranks apart), so each worker draws its own stream and a rerun draws the same ones."""
        if self._seeded_in == os.getpid() or not hasattr(self.transform, "set_random_seed"):
            return
        rank, _ = rank_world()
        self.transform.set_random_seed((torch.initial_seed() + 7919 * rank) % 2**32)
        self._seeded_in = os.getpid()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        self._seed_transform()
        image, mask = self.source[index]
        out = self.transform(image=image, mask=mask)
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        mask = torch.from_numpy(np.ascontiguousarray(out["mask"]))[None].float()
        return {"image": image, "mask": mask, "index": index}


def build_loader(exp: Experiment, pairs: list[Pair], *, train: bool, sampler=None,
                 drop_last: bool = False, run_folder=None) -> DataLoader:
    if exp.pipeline_spec.augments_on_device:  # resize only; kornia augments and normalises on the device
        transform = to_albumentations([], exp.data.size_hw, train=False, normalize=False)
    else:
        labels = exp.data.label_spec
        transform = to_albumentations(exp.augment.train, exp.data.size_hw, train=train, norm=exp.normalization,
                                      crop=exp.data.crop_hw, mask_fill=0 if labels is None else labels.ignore_index)
    workers = resolve_workers(exp.data.num_workers)
    return DataLoader(
        SegmentationDataset(open_source(exp.data, pairs, "train" if train else "val", run_folder,
                                        pipeline=exp.pipeline), transform),
        batch_size=exp.trainer.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=train and drop_last,
    )


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Draws ``epoch_size`` indices per epoch with replacement, in the grouping's target shares.

    All ranks draw the same seeded stream (see :func:`nailseg.core.data.balance.draw_epoch`) and
    each takes a disjoint part of it, so the sampler works unchanged under DDP (Lightning
    must not wrap it: the stack sets ``use_distributed_sampler=False``).
    """

    def __init__(self, probabilities: np.ndarray, epoch_size: int, seed: int):
        self.probabilities = probabilities
        self.epoch_size = epoch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        _, world = rank_world()
        return -(-self.epoch_size // world)

    def __iter__(self):
        from nailseg.core.data.balance import draw_epoch

        rank, world = rank_world()
        yield from draw_epoch(self.probabilities, self.epoch_size, self.seed, self.epoch, rank, world).tolist()

    def full_stream(self, epoch: int) -> np.ndarray:
        """What all ranks together draw in ``epoch`` (for logging the observed shares)."""
        from nailseg.core.data.balance import draw_epoch

        return draw_epoch(self.probabilities, self.epoch_size, self.seed, epoch)
