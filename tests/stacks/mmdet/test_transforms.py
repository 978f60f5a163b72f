"""The augmentation spec through MMDetection's own pipeline: RandomFlip, SeededAlbu and BoxesFromMasks
(``templates/augmentation.py``) run on instances whose pixels are known."""

import numpy as np
import pytest
from pydantic import TypeAdapter

from nailseg.core.augment import AugmentOp

pytest.importorskip("mmdet")


def _op(**fields):
    return TypeAdapter(AugmentOp).validate_python({"p": 1.0, **fields})


def _instances():
    """A 96x96 picture with two red squares (BGR, as MMDetection loads it), each an instance."""
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks

    img = np.full((96, 96, 3), 40, np.uint8)
    masks = np.zeros((2, 96, 96), np.uint8)
    masks[0, 20:40, 30:50] = masks[1, 60:75, 10:25] = 1
    img[masks.any(0).astype(bool)] = (0, 0, 255)
    boxes = HorizontalBoxes(np.array([[30, 20, 50, 40], [10, 60, 25, 75]], np.float32))
    return dict(img=img, img_shape=(96, 96), gt_bboxes=boxes, gt_bboxes_labels=np.array([0, 1]),
                gt_ignore_flags=np.array([False, True]), gt_masks=BitmapMasks(masks, 96, 96))


def _pipeline(ops):
    from mmcv.transforms import Compose
    from mmdet.utils import register_all_modules

    import nailseg.stacks.mmdet.templates.augmentation  # noqa: F401 - registers SeededAlbu, BoxesFromMasks
    from nailseg.stacks.mmdet.config import train_augmentation

    register_all_modules()
    return Compose(train_augmentation(ops))


def _tight(masks) -> np.ndarray:
    rows = []
    for m in masks.masks:
        ys, xs = np.nonzero(m)
        rows.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(rows, np.float32)


def test_a_rotation_moves_image_and_masks_together_and_the_boxes_stay_tight():
    import torch

    torch.manual_seed(0)  # SeededAlbu seeds albumentations from torch's seed
    pipeline = _pipeline([_op(name="affine", rotate=25, scale=(0.9, 1.1), translate=0.05),
                          _op(name="brightness_contrast")])
    assert [type(t).__name__ for t in pipeline.transforms] == ["SeededAlbu", "BoxesFromMasks"]
    start = _instances()
    draws = []
    for _ in range(5):
        out = pipeline(_instances())
        masks, boxes = out["gt_masks"], out["gt_bboxes"].numpy()
        red = (out["img"][..., 2] > 150) & (out["img"][..., 0] < 100)
        assert (red == masks.masks.any(0)).mean() > 0.98  # the masks still cover the red pixels, and only them
        assert not np.array_equal(masks.masks, start["gt_masks"].masks)  # the affine moved them
        assert np.array_equal(boxes, _tight(masks))  # not the rotated box's enclosing box, nor the old box
        assert out["gt_bboxes_labels"].tolist() == [0, 1] and out["gt_ignore_flags"].tolist() == [False, True]
        draws.append(boxes)
    torch.manual_seed(0)
    again = _pipeline([_op(name="affine", rotate=25, scale=(0.9, 1.1), translate=0.05),
                       _op(name="brightness_contrast")])
    assert np.array_equal(again(_instances())["gt_bboxes"].numpy(), draws[0])  # the same seed, the same draw


def test_an_instance_moved_out_is_dropped_and_a_picture_left_empty_is_drawn_again():
    from nailseg.stacks.mmdet.templates.augmentation import BoxesFromMasks

    results = _instances()
    results["gt_masks"] = list(results["gt_masks"].masks)  # as Albu hands them back
    results["gt_masks"][0] = np.zeros_like(results["gt_masks"][0])  # as if a shift had moved it off the picture
    out = BoxesFromMasks()(results)
    assert len(out["gt_masks"]) == 1 and out["gt_bboxes"].numpy().tolist() == [[10, 60, 25, 75]]
    assert out["gt_bboxes_labels"].tolist() == [1] and out["gt_ignore_flags"].tolist() == [True]
    results = _instances()
    results["gt_masks"].masks[:] = 0
    assert BoxesFromMasks()(results) is None  # mmengine's dataset then draws another picture
    results = _instances()
    results["gt_masks"] = []  # a picture without instances: still BitmapMasks for PackDetInputs
    assert BoxesFromMasks()(results)["gt_masks"].masks.shape == (0, 96, 96)


def test_colour_ops_leave_the_instances_alone():
    pipeline = _pipeline([_op(name="hue_saturation"), _op(name="gauss_noise"), _op(name="blur")])
    assert [type(t).__name__ for t in pipeline.transforms] == ["SeededAlbu"]  # no geometry: the boxes stand
    before = _instances()
    out = pipeline(_instances())
    assert np.array_equal(out["gt_masks"].masks, before["gt_masks"].masks)
    assert np.array_equal(out["gt_bboxes"].numpy(), before["gt_bboxes"].numpy())
    assert not np.array_equal(out["img"], before["img"])
