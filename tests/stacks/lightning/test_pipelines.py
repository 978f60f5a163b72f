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


def _window_at(big: np.ndarray, small: np.ndarray) -> tuple[int, int] | None:
    """Where ``small`` sits inside ``big`` exactly, or None."""
    h, w = small.shape
    for y in range(big.shape[0] - h + 1):
        for x in range(big.shape[1] - w + 1):
            if np.array_equal(big[y:y + h, x:x + w], small):
                return y, x
    return None


def test_crop_size_cuts_random_windows_of_the_picture(tmp_path):
    """data.crop_size in every Lightning pipeline: a (48, 32) window of the 64 x 64 picture, cut in
    the same place for image and mask, in different places from draw to draw."""
    image, mask = coded_pair()  # already 64 x 64: the resize is the identity
    stripes = np.random.default_rng(0).integers(0, 2, mask.shape).astype(np.uint8)  # no two windows alike
    coded = image.copy()
    coded[..., 2] = stripes * 255
    draws = {}
    for pipeline in _pipelines(tmp_path):
        if pipeline == "dali":
            outputs = dali_apply([], coded, stripes, (64, 64), tmp_path, n=6, seed=1, crop=(48, 32))
        elif pipeline == "kornia":
            outputs = [kornia_apply([], coded, stripes, (64, 64), seed=s, crop=(48, 32)) for s in range(6)]
        else:
            np.random.seed(0)
            outputs = [albumentations_apply([], coded, stripes, (64, 64), crop=(48, 32)) for _ in range(6)]
        places = set()
        for img, m in outputs:
            assert img.shape == (48, 32, 3) and m.shape == (48, 32), pipeline
            at = _window_at(stripes, m)
            assert at is not None, f"{pipeline}: the mask is not a window of the picture's mask"
            y, x = at
            assert np.abs(img - coded[y:y + 48, x:x + 32]).max() < 2, f"{pipeline}: image and mask moved apart"
            places.add(at)
        draws[pipeline] = places
        assert len(places) >= 3, f"{pipeline}: the window hardly moves ({places})"
    assert "albumentations" in draws and len(draws) == len(_pipelines(tmp_path))


def test_crop_size_runs_before_the_ops_and_leaves_evaluation_whole():
    from nailseg.core.augment import to_albumentations

    image, mask = coded_pair()
    flipped = to_albumentations([HFlip(name="hflip", p=1.0)], (64, 64), normalize=False, crop=(32, 64))(
        image=image, mask=mask)
    assert flipped["mask"].shape == (32, 64)
    assert _window_at(mask[:, ::-1], flipped["mask"]) is not None  # a window, then flipped: still a window
    whole = to_albumentations([HFlip(name="hflip", p=1.0)], (64, 64), normalize=False, train=False,
                              crop=(32, 64))(image=image, mask=mask)
    assert whole["mask"].shape == (64, 64) and np.array_equal(whole["mask"], mask)
