"""NVIDIA DALI: reading, decoding and augmenting in one pipeline, on the GPU when there is one.

The pipeline and its Lightning iterable are DALI's own code in ``templates/dali_pipeline.py``
(no nailseg inside: ``nailseg eject`` copies that file beside an ejected script); this module feeds
it nailseg's pairs, normalisation, many-class masks and DDP rank.

Two file readers (images, masks) with identical seeds, sharding and shuffling stay aligned
sample for sample. Decoding runs on the GPU (``mixed``: nvJPEG, hardware-assisted for
baseline JPEGs) when a GPU is there, and on the CPU (``device_id=None``) when not. Every
geometric draw (flip, affine, random resized crop) is made once per sample and applied to
image and mask (nearest neighbour for masks); colour augmentations touch the image only.
The spec is the same one albumentations and kornia translate.

Many classes (``data.classes``): DALI's decoder would turn a palette or colour mask into grey
levels that are not class indices, so each mask is first read by nailseg's own label reader
(index, palette or colour table, values checked) and written once as an 8-bit index PNG in
the run folder (``dali_labels/``); DALI decodes those as they are, moves them with nearest
neighbour, and pads what an affine uncovers with the ignore value.

:class:`DaliLoader` plugs the pipeline into Lightning as a plain iterable with a correct
``__len__``; it drains an epoch that Lightning stopped early (DALI ignores a reset before the
end of an epoch), resets cleanly for the next one, keeps or drops the last partial batch as
configured, and shards by rank under DDP.
"""

from __future__ import annotations

from pathlib import Path

from nailseg.core.augment import IMAGENET, AugmentOp, Normalization
from nailseg.core.data.discover import Pair
from nailseg.stacks._torch.distributed import rank_world


def _pipeline_module():
    """``templates/dali_pipeline.py``: the DALI pipeline and its Lightning iterable, in DALI's own
    code and free of nailseg, which ``nailseg eject`` copies beside an ejected script."""
    from nailseg.core.optional import require

    require("nvidia.dali", "dali", "The DALI pipeline (data.pipeline: dali)")
    from nailseg.stacks.lightning.templates import dali_pipeline

    return dali_pipeline


def __getattr__(name: str):
    """``DALI_OPS`` (the translation of each op; its keys are the dali row's ``ops`` in
    nailseg.specs, tests/test_specs.py), read from the pipeline module when asked: importing this
    module needs no DALI."""
    if name == "DALI_OPS":
        return _pipeline_module().DALI_OPS
    raise AttributeError(name)


def index_masks(pairs: list[Pair], labels, folder: Path) -> list[str]:
    """Each pair's mask as an 8-bit index PNG in ``folder`` (written once, atomically; a file
    already there from an earlier epoch or a resume is kept), read by nailseg's label reader so
    palette and colour masks become class indices before DALI decodes them."""
    import numpy as np
    from PIL import Image

    from nailseg.core.io import atomic_path
    from nailseg.core.labels import read_labels

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for pair in pairs:
        out = folder / (pair.key.replace("/", "__") + ".png")  # keys are unique, so are these names
        if not out.is_file():
            with atomic_path(out) as tmp:
                Image.fromarray(np.ascontiguousarray(read_labels(pair.mask, labels))).save(tmp, format="PNG")
        files.append(str(out))
    return files


class DaliLoader:
    """A DALI pipeline as an iterable of ``{"image", "mask"}`` batches for Lightning: the pairs' files,
    many-class masks as index PNGs, this process's shard (its DDP rank), around
    ``dali_pipeline.DaliLoader``, which drains early-stopped epochs and sizes ``__len__``."""

    def __init__(self, pairs: list[Pair], ops: list[AugmentOp], size: tuple[int, int], *, batch_size: int,
                 train: bool, seed: int, drop_last: bool, num_threads: int | None = None,
                 device: str | None = None, norm: Normalization = IMAGENET,
                 crop: tuple[int, int] | None = None, labels=None, label_folder: Path | None = None):
        """``labels``: the :class:`~nailseg.core.labels.LabelSpec` of many-class data; its masks are
        rewritten as index PNGs into ``label_folder`` (:func:`index_masks`)."""
        image_files = [str(p.image) for p in pairs]
        if labels is not None:
            if label_folder is None:
                raise ValueError("DaliLoader: many classes need a label_folder for their index masks")
            mask_files = index_masks(pairs, labels, label_folder)
        else:
            mask_files = [str(p.mask) for p in pairs]
        self._args = (image_files, mask_files, ops, size)
        self._kwargs = dict(batch_size=batch_size, train=train, seed=seed, drop_last=drop_last,
                            mean=tuple(norm.mean), std=tuple(norm.std), num_threads=num_threads, device=device,
                            crop=crop, ignore_index=None if labels is None else labels.ignore_index)
        self._loader = None

    def _inner(self):
        """Built at first use, when the DDP rank is known."""
        if self._loader is None:
            rank, world = rank_world()
            self._loader = _pipeline_module().DaliLoader(*self._args, **self._kwargs, shard_id=rank, num_shards=world)
        return self._loader

    def __len__(self) -> int:
        return len(self._inner())

    def __iter__(self):
        return iter(self._inner())
