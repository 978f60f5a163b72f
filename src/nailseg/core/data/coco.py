"""Binary nail masks -> COCO instance annotations that a user can trust.

Each 4-connected foreground region of a mask is one nail instance. Its segmentation is the
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

CATEGORIES = [{"id": 1, "name": "nail", "supercategory": "hand"}]


@dataclass
class ConversionReport:
    images: int = 0
    instances: int = 0
    dropped_small: int = 0
    with_holes: int = 0
    per_image: dict[str, int] = field(default_factory=dict)


def mask_instances(mask: np.ndarray, min_area: int = 0) -> tuple[list[np.ndarray], int]:
    """Split a binary mask into one boolean mask per 4-connected region; returns (regions, dropped).

    4-connectivity: two nails whose masks meet only at a corner stay two nails.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    regions, dropped = [], 0
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < min_area:
            dropped += 1
            continue
        regions.append(labels == label)
    return regions, dropped


def encode_rle(region: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _has_hole(region: np.ndarray) -> bool:
    _, hierarchy = cv2.findContours(region.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _polygons(region: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    # pixel-corner outline of the region (+0.5 keeps the polygon around the pixel centres)
    return [(c.reshape(-1, 2).astype(float) + 0.5).ravel().tolist() for c in contours if len(c) >= 3]


def region_annotation(region: np.ndarray, *, ann_id: int, image_id: int, fmt: str = "rle") -> tuple[dict, bool]:
    ys, xs = np.nonzero(region)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    holes = _has_hole(region)
    polys = _polygons(region) if fmt == "polygon" and not holes else []
    segmentation = polys if polys else encode_rle(region)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": segmentation,
            "area": float(region.sum()), "bbox": bbox, "iscrowd": 0}, holes


def image_ids(pairs: list[Pair]) -> dict[str, int]:
    """Stable ids: 1 + the index of each key in the sorted keys of the whole data folder."""
    return {key: i + 1 for i, key in enumerate(sorted(p.key for p in pairs))}


def to_coco(pairs: list[Pair], ids: dict[str, int], *, min_area: int = 0, fmt: str = "rle",
            progress: bool = False) -> tuple[dict, ConversionReport]:
    report = ConversionReport()
    images, annotations = [], []
    iterator = sorted(pairs, key=lambda p: p.key)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="converting masks", unit="img")
    for pair in iterator:
        mask = read_mask(pair.mask)
        image_id = ids[pair.key]
        images.append({"id": image_id, "file_name": pair.key, "height": int(mask.shape[0]),
                       "width": int(mask.shape[1])})
        regions, dropped = mask_instances(mask, min_area)
        report.dropped_small += dropped
        for region in regions:
            ann, holes = region_annotation(region, ann_id=len(annotations) + 1, image_id=image_id, fmt=fmt)
            annotations.append(ann)
            report.with_holes += holes
        report.per_image[pair.key] = len(regions)
    report.images, report.instances = len(images), len(annotations)
    return {"info": {"description": "nail instances made by nailseg from binary masks", "version": "1"},
            "images": images, "annotations": annotations, "categories": CATEGORIES}, report


def write_coco(path: str | os.PathLike[str], coco: dict) -> None:
    write_json(path, coco)
