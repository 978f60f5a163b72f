"""The same augmentation spec means the same augmentation in albumentations, kornia and DALI."""

import numpy as np
import pytest

from nailseg.core.augment import Affine, HFlip, RandomResizedCrop, VFlip
from tests.pipelines import albumentations_apply, coded_pair, dali_apply, kornia_apply

pytest.importorskip("torch")


def _iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / max(1, (a | b).sum())


def _pipelines(tmp_path):
    pipelines = {"albumentations": lambda ops, im, m, size: albumentations_apply(ops, im, m, size)}
    try:
        import kornia  # noqa: F401

        pipelines["kornia"] = kornia_apply
    except ImportError:
        pass
    try:
        import nvidia.dali  # noqa: F401

        pipelines["dali"] = lambda ops, im, m, size: dali_apply(ops, im, m, size, tmp_path)[0]
    except ImportError:
        pass
    return pipelines


FIXED = {
    "hflip": [HFlip(name="hflip", p=1.0)],
    "vflip": [VFlip(name="vflip", p=1.0)],
    "zoom": [Affine(name="affine", rotate=0, scale=(1.25, 1.25), translate=0.0, p=1.0)],
}


@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_ops_agree_across_pipelines(name, tmp_path):
    image, mask = coded_pair()
    results = {pipeline: fn(FIXED[name], image, mask, (64, 64)) for pipeline, fn in _pipelines(tmp_path).items()}
    if len(results) < 3:
        pytest.skip(f"kornia and DALI both needed (installed: {sorted(results)}; nailseg[gpuaug,dali])")
    ref_image, ref_mask = results["albumentations"]
    if name == "hflip":
        assert np.array_equal(ref_mask, mask[:, ::-1])
    for pipeline, (img, m) in results.items():
        assert _iou(m, ref_mask) > 0.93, pipeline
        assert np.abs(img - ref_image).mean() < 6.0, pipeline  # 0-255 scale; edges resample differently


GEOMETRIC = [
    [Affine(name="affine", rotate=40, scale=(0.7, 1.3), translate=0.1, p=1.0)],
    [RandomResizedCrop(name="random_resized_crop", scale=(0.3, 1.0))],
    [HFlip(name="hflip"), VFlip(name="vflip"), Affine(name="affine", p=0.7)],
]


@pytest.mark.parametrize("ops", GEOMETRIC, ids=["affine", "rrc", "mixed"])
def test_random_geometry_keeps_masks_binary_and_aligned(ops, tmp_path):
    pytest.importorskip("kornia")
    pytest.importorskip("nvidia.dali")
    image, mask = coded_pair()
    outputs = []
    for seed in range(4):
        outputs.append(kornia_apply(ops, image, mask, (64, 64), seed=seed))
    outputs += dali_apply(ops, image, mask, (64, 64), tmp_path, n=4, seed=3)
    for img, m in outputs:
        assert set(np.unique(m)) <= {0, 1}
        agree = (img[..., 0] > 127) == (m == 1)
        assert agree.mean() > 0.95  # the red channel (the image) says where the mask is
    assert any(not np.array_equal(m, mask) for _, m in outputs)  # the draws really moved things
