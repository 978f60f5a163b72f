import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from nailseg.cli import main
from nailseg.core.data.coco import encode_rle, image_ids, mask_instances, region_annotation, to_coco
from nailseg.core.data.discover import find_pairs
from tests.conftest import write_image


def _hand_made() -> np.ndarray:
    m = np.zeros((40, 60), np.uint8)
    m[5:15, 5:12] = 1          # nail A
    m[5:15, 13:20] = 1         # nail B: one pixel column away from A
    m[15:20, 20:25] = 1        # nail C: meets B only at a corner
    m[22:36, 30:50] = 1        # a nail with a hole
    m[27:31, 37:42] = 0
    m[2, 55] = 1               # a one-pixel speck
    return m


def test_regions_holes_and_specks():
    m = _hand_made()
    regions, dropped = mask_instances(m, min_area=2)
    assert len(regions) == 4 and dropped == 1
    n4, _ = cv2.connectedComponents(m, connectivity=4)
    assert len(mask_instances(m)[0]) == n4 - 1  # counts agree with OpenCV (background excluded)
    holed = max(regions, key=lambda r: r.sum())
    ann, holes = region_annotation(holed, ann_id=1, image_id=1, fmt="polygon")
    assert holes and isinstance(ann["segmentation"], dict)  # a hole forces RLE
    decoded = mask_utils.decode(ann["segmentation"]).astype(bool)
    assert np.array_equal(decoded, holed.full())
    assert not decoded[28, 39]  # the hole is still a hole, not an extra nail
    assert ann["bbox"] == [30.0, 22.0, 20.0, 14.0] and ann["area"] == float(holed.sum())
    for region in regions:  # the RLE made from a crop is pycocotools' own for the full mask
        ann, _ = region_annotation(region, ann_id=1, image_id=1)
        assert ann["segmentation"] == encode_rle(region.full())


def test_a_mask_of_many_specks_needs_little_memory():
    """450 x 450 of 2 x 2 specks (about 12,600 regions): crops, not one full-size mask per region."""
    import resource
    import time

    m = np.zeros((450, 450), np.uint8)
    m[::4, ::4] = m[1::4, ::4] = m[::4, 1::4] = m[1::4, 1::4] = 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    regions, _ = mask_instances(m)
    anns = [region_annotation(r, ann_id=i, image_id=1)[0] for i, r in enumerate(regions[:3000])]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(regions) == 113 * 113
    assert grown_mb < 300, grown_mb
    assert all(a["area"] == 4.0 for a in anns)
    assert time.monotonic() - started < 60


def test_empty_mask_has_no_instances():
    assert mask_instances(np.zeros((10, 10), np.uint8)) == ([], 0)


def test_round_trip_through_pycocotools(tmp_path):
    write_image(tmp_path / "images" / "b.jpg", np.zeros((40, 60, 3), np.uint8))
    write_image(tmp_path / "labels" / "b.png", _hand_made() * 255)
    write_image(tmp_path / "images" / "a.jpg", np.zeros((40, 60, 3), np.uint8))
    write_image(tmp_path / "labels" / "a.png", np.zeros((40, 60), np.uint8))
    pairs, _ = find_pairs(tmp_path)
    coco, report = to_coco(pairs, image_ids(pairs), min_area=2)
    assert report.instances == 4 and report.dropped_small == 1 and report.with_holes == 1
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    api = COCO(str(tmp_path / "coco.json"))
    assert [img["file_name"] for img in api.loadImgs([1, 2])] == ["a.jpg", "b.jpg"]  # stable ids
    union = np.zeros((40, 60), bool)
    for ann in api.loadAnns(api.getAnnIds(imgIds=[2])):
        union |= api.annToMask(ann).astype(bool)
    expected = _hand_made().astype(bool)
    expected[2, 55] = False  # the dropped speck
    assert np.array_equal(union, expected)


def test_polygon_format_round_trip():
    m = np.zeros((30, 30), np.uint8)
    cv2.circle(m, (15, 15), 9, 1, -1)
    ann, holes = region_annotation(m.astype(bool), ann_id=1, image_id=1, fmt="polygon")
    assert not holes and isinstance(ann["segmentation"], list)
    rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 30, 30))
    decoded = mask_utils.decode(rle).astype(bool)
    iou = (decoded & m.astype(bool)).sum() / (decoded | m.astype(bool)).sum()
    assert iou > 0.9


def test_cli_per_split(tmp_path, synth_data, capsys):
    from nailseg.core.data.split import make_split, save_split

    keys = [p.key for p in find_pairs(synth_data)[0]]
    save_split(tmp_path / "split.json", make_split(keys, 0.2, 0.2, seed=0))
    assert main(["data", "coco", str(synth_data), "--split", str(tmp_path / "split.json"), "--out",
                 str(tmp_path / "coco.json"), "--quiet"]) == 0
    files = {p.name for p in tmp_path.glob("coco_*.json")}
    assert files == {"coco_train.json", "coco_val.json", "coco_test.json"}
    ids = set()
    for name in files:
        data = json.loads((tmp_path / name).read_text())
        ids |= {img["id"] for img in data["images"]}
    assert ids == set(range(1, len(keys) + 1))


@pytest.mark.realdata
def test_real_nails_instances(real_data, tmp_path, capsys):
    assert main(["data", "coco", str(real_data), "--out", str(tmp_path / "c.json"), "--quiet"]) == 0
    data = json.loads((tmp_path / "c.json").read_text())
    assert len(data["images"]) == 40 and len(data["annotations"]) > 100


def test_class_masks_give_one_category_per_class_but_the_background(tmp_path, capsys):
    """Index masks of (skin, nail, ring) with an unlabelled band: the first class is the background,
    each 4-connected region of another class one instance of its category (id = class index), and
    unlabelled pixels belong to no instance; pycocotools decodes each back to its class's pixels."""
    root = tmp_path / "data"
    labels = np.zeros((30, 40), np.uint8)
    labels[2:8, 2:8] = 1           # a nail
    labels[2:8, 10:14] = 1         # another nail
    labels[12:20, 5:15] = 2        # a ring
    labels[12:20, 15:18] = 1       # a nail touching the ring: still its own instance
    labels[:, 36:] = 255           # nobody labelled this band
    write_image(root / "images" / "a.png", np.zeros((30, 40, 3), np.uint8))
    write_image(root / "masks" / "a.png", labels)
    (root / "classes.txt").write_text("skin\nnail\nring\n")
    out = tmp_path / "coco.json"
    assert main(["data", "coco", str(root), "--out", str(out), "--quiet"]) == 0
    assert "4 instances of 2 categories" in capsys.readouterr().out
    coco = COCO(str(out))
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == [(1, "nail"), (2, "ring")]
    by_category = {1: np.zeros((30, 40), bool), 2: np.zeros((30, 40), bool)}
    for ann in coco.dataset["annotations"]:
        by_category[ann["category_id"]] |= coco.annToMask(ann).astype(bool)
    assert np.array_equal(by_category[1], labels == 1) and np.array_equal(by_category[2], labels == 2)
    assert sorted(a["category_id"] for a in coco.dataset["annotations"]) == [1, 1, 1, 2]
    # a value outside the classes is refused by file, as every many-class reader does
    labels[0, 0] = 7
    write_image(root / "masks" / "a.png", labels)
    assert main(["data", "coco", str(root), "--out", str(tmp_path / "bad.json"), "--quiet"]) == 2
    assert "a.png" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
