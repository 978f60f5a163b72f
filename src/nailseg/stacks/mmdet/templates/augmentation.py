"""The two steps nailseg adds to MMDetection's augmentation: ``SeededAlbu`` and ``BoxesFromMasks``.

MMDetection's ``Albu`` runs albumentations on the picture and each instance's mask. Two gaps:

- albumentations' ``Compose`` keeps its own random state, which no global seed reaches, so the same
  seed augmented differently on every run, and forked loader workers inherited the same state and
  drew the same parameters. ``SeededAlbu`` seeds it once in each process from torch's seed, which
  mmengine's ``randomness.seed`` sets per worker (and the rank keeps DDP processes apart).
- A rotation or zoom moves the masks, and a box moved with them would be the rotated box's enclosing
  box, looser than the nail (albumentations' ``largest_box``). So the boxes stay out of Albu (its
  ``keymap`` maps the picture and the masks only, and Albu hands the masks back as a list of arrays),
  and ``BoxesFromMasks`` makes them ``BitmapMasks`` again, sets each box tight around its mask, as
  MMDetection's ``RandomCrop(recompute_bbox=True)`` does, and drops the instances whose mask left
  the picture; a picture left with none returns ``None``, so the dataset draws another.

Written by `nailseg eject` when the config augments beyond flips; nothing here imports nailseg. The
config imports this file through ``custom_imports``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import Albu
from mmdet.registry import TRANSFORMS
from mmdet.structures.bbox import autocast_box_type
from mmdet.structures.mask import BitmapMasks
from mmengine.dist import get_rank


@TRANSFORMS.register_module(force=True)  # force: importing this file again (a notebook, a test) replaces the entry
class SeededAlbu(Albu):
    """MMDetection's ``Albu`` with albumentations' random state seeded once per process."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._seeded_in: int | None = None

    def transform(self, results: dict) -> dict | None:
        if self._seeded_in != os.getpid():
            self.aug.set_random_seed((torch.initial_seed() + 7919 * get_rank()) % 2**32)
            self._seeded_in = os.getpid()
        return super().transform(results)


@TRANSFORMS.register_module(force=True)
class BoxesFromMasks(BaseTransform):
    """Each ``gt_bboxes`` row tight around its ``gt_masks`` instance; empty instances dropped."""

    @autocast_box_type()
    def transform(self, results: dict) -> dict | None:
        masks = results.get("gt_masks")
        if masks is None:
            return results
        if not isinstance(masks, BitmapMasks):  # Albu's list of (height, width) arrays
            height, width = results["img"].shape[:2]
            masks = BitmapMasks(np.stack(masks).astype(np.uint8) if len(masks) else
                                np.zeros((0, height, width), np.uint8), height, width)
            results["gt_masks"] = masks
        if len(masks) == 0:
            return results
        keep = np.flatnonzero(masks.areas > 0)
        if keep.size == 0:
            return None
        results["gt_masks"] = masks[keep]
        results["gt_bboxes"] = results["gt_masks"].get_bboxes(type(results["gt_bboxes"]))
        for key in ("gt_bboxes_labels", "gt_ignore_flags"):
            if key in results:
                results[key] = results[key][keep]
        return results
