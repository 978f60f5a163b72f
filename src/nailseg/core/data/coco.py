"""Masks -> COCO instance annotations that a user can trust.

Each 4-connected foreground region of a binary mask is one nail instance. With many classes
(a :class:`~nailseg.core.labels.LabelSpec`), the first class is the background, as for Mask R-CNN,
and each 4-connected region of every other class is one instance of that class's category (id =
the class index); unlabelled pixels belong to no instance. Its segmentation is the
region's exact run-length encoding (RLE), so holes inside a region stay holes (contour-based
converters turn a hole into an extra nail); ``--format polygon`` writes outer contours as
polygons and falls back to RLE for a region with holes. Bounding box and area come from the
region's pixels. Regions smaller than ``min_area`` pixels are dropped and counted. Image ids
follow the sorted pair keys of the whole data folder, so they are the same in every split file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from nailseg.core.data.decode import read_mask
from nailseg.core.data.discover import Pair
from nailseg.core.io import write_json
from nailseg.core.labels import LabelSpec, read_labels

CATEGORIES = [{"id": 1, "name": "nail", "supercategory": "hand"}]


def categories(labels: LabelSpec | None) -> list[dict]:
    """COCO categories: ``nail`` for binary masks; with classes, every class but the first (the
    background, which instance models do not predict), id = class index."""
    if labels is None:
        return CATEGORIES
    return [{"id": i, "name": name, "supercategory": "thing"} for i, name in enumerate(labels.names) if i]


# Plain field declarations: their likeness to SynthConfig and metrics.Counts is shape alone, nothing to share.
@dataclass
class ConversionReport:
    """What a conversion wrote and what it left out, for the summary line and coco_report.json."""

    images: int = 0
    instances: int = 0
    dropped_small: int = 0
    with_holes: int = 0
    per_image: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Region:
    """One connected region, kept as a crop of its bounding box (not a full-size mask), so a mask
    of many specks needs memory for its labels and the crops only, never regions x image size."""

    crop: np.ndarray      # bool (h, w): the region inside its bounding box
    x0: int
    y0: int
    height: int           # the full image's size
    width: int

    def sum(self) -> int:
        return int(self.crop.sum())

    def full(self) -> np.ndarray:
        """The region as a full-size boolean mask (for checks and small images only)."""
        out = np.zeros((self.height, self.width), bool)
        out[self.y0:self.y0 + self.crop.shape[0], self.x0:self.x0 + self.crop.shape[1]] = self.crop
        return out


def mask_instances(mask: np.ndarray, min_area: int = 0) -> tuple[list[Region], int]:
    """Split a binary mask into its 4-connected regions (as crops); returns (regions, dropped).

    4-connectivity: two nails whose masks meet only at a corner stay two nails.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    regions, dropped = [], 0
    h, w = mask.shape[:2]
    for label in range(1, count):
        x, y, bw, bh, area = (int(v) for v in stats[label])
        if area < min_area:
            dropped += 1
            continue
        regions.append(Region(labels[y:y + bh, x:x + bw] == label, x, y, h, w))
    return regions, dropped


def as_region(region: Region | np.ndarray) -> Region:
    if isinstance(region, Region):
        return region
    ys, xs = np.nonzero(region)
    if not len(ys):
        return Region(np.zeros((0, 0), bool), 0, 0, *region.shape[:2])
    y0, x0 = int(ys.min()), int(xs.min())
    return Region(np.asarray(region, bool)[y0:ys.max() + 1, x0:xs.max() + 1], x0, y0, *region.shape[:2])


def encode_rle(region: Region | np.ndarray) -> dict:
    """The exact COCO RLE of a region in its full image, computed from the crop: the runs of the
    column-major pixel order, then pycocotools' own compression."""
    from nailseg.core.optional import require

    mask_utils = require("pycocotools.mask", "train", "COCO run-length encoding")

    if not isinstance(region, Region):  # a full-size mask (small: predictions, tests)
        rle = mask_utils.encode(np.asfortranarray(np.asarray(region).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        return rle
    cols, rows = np.nonzero(region.crop.T)  # column-major order: by x, then y
    index = (cols.astype(np.int64) + region.x0) * region.height + rows + region.y0
    total = region.height * region.width
    counts: list[int] = []
    if len(index):
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        starts = np.concatenate([[index[0]], index[breaks]])
        ends = np.concatenate([index[breaks - 1], [index[-1]]]) + 1
        position = 0
        for start, end in zip(starts.tolist(), ends.tolist()):
            counts += [start - position, end - start]
            position = end
        counts.append(total - position)
    else:
        counts = [total]
    rle = mask_utils.frPyObjects({"size": [region.height, region.width], "counts": counts},
                                 region.height, region.width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _padded(region: Region) -> np.ndarray:
    return np.pad(region.crop.astype(np.uint8), 1)


def _has_hole(region: Region) -> bool:
    _, hierarchy = cv2.findContours(_padded(region), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _polygons(region: Region) -> list[list[float]]:
    contours, _ = cv2.findContours(_padded(region), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    offset = np.array([region.x0 - 1, region.y0 - 1], float)  # the crop's origin, less the padding
    # pixel-corner outline of the region (+0.5 keeps the polygon around the pixel centres)
    return [(c.reshape(-1, 2).astype(float) + offset + 0.5).ravel().tolist() for c in contours if len(c) >= 3]


def region_annotation(region: Region | np.ndarray, *, ann_id: int, image_id: int, fmt: str = "rle",
                      category_id: int = 1) -> tuple[dict, bool]:
    region = as_region(region)
    ys, xs = np.nonzero(region.crop)
    x0, y0 = int(xs.min()) + region.x0, int(ys.min()) + region.y0
    bbox = [float(x0), float(y0), float(xs.max() + region.x0 - x0 + 1), float(ys.max() + region.y0 - y0 + 1)]
    holes = _has_hole(region)
    polys = _polygons(region) if fmt == "polygon" and not holes else []
    segmentation = polys if polys else encode_rle(region)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "area": float(region.sum()), "bbox": bbox, "iscrowd": 0}, holes


def image_ids(pairs: list[Pair]) -> dict[str, int]:
    """Stable ids: 1 + the index of each key in the sorted keys of the whole data folder."""
    return {key: i + 1 for i, key in enumerate(sorted(p.key for p in pairs))}


def class_instances(mask: np.ndarray, labels: LabelSpec | None, min_area: int = 0
                    ) -> tuple[list[tuple[int, Region]], int]:
    """(category id, region) of every instance in a mask, and how many regions were too small."""
    if labels is None:
        regions, dropped = mask_instances(mask, min_area)
        return [(1, r) for r in regions], dropped
    found, dropped = [], 0
    for index in range(1, labels.n):
        if not (mask == index).any():
            continue
        regions, small = mask_instances(mask == index, min_area)
        found += [(index, r) for r in regions]
        dropped += small
    return found, dropped


def to_coco(pairs: list[Pair], ids: dict[str, int], *, min_area: int = 0, fmt: str = "rle",
            progress: bool = False, labels: LabelSpec | None = None) -> tuple[dict, ConversionReport]:
    report = ConversionReport()
    images, annotations = [], []
    iterator = sorted(pairs, key=lambda p: p.key)
    from nailseg.core.progress import progress as bar

    iterator = bar(iterator, "converting masks", enabled=progress)
    for pair in iterator:
        mask = read_mask(pair.mask) if labels is None else read_labels(pair.mask, labels)
        image_id = ids[pair.key]
        images.append({"id": image_id, "file_name": pair.key, "height": int(mask.shape[0]),
                       "width": int(mask.shape[1])})
        found, dropped = class_instances(mask, labels, min_area)
        report.dropped_small += dropped
        for category, region in found:
            ann, holes = region_annotation(region, ann_id=len(annotations) + 1, image_id=image_id, fmt=fmt,
                                           category_id=category)
            annotations.append(ann)
            report.with_holes += holes
        report.per_image[pair.key] = len(found)
    report.images, report.instances = len(images), len(annotations)
    what = "nail instances made by nailseg from binary masks" if labels is None else \
        "instances made by nailseg from class masks (one per connected region of a class)"
    return {"info": {"description": what, "version": "1"},
            "images": images, "annotations": annotations, "categories": categories(labels)}, report


def write_coco(path: str | os.PathLike[str], coco: dict) -> None:
    write_json(path, coco)
