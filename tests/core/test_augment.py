import numpy as np
import pytest

from nailseg.core.augment import Affine, BrightnessContrast, GaussNoise, HFlip, RandomResizedCrop, VFlip, to_albumentations


def _coded(h=64, w=64):
    """An image whose red channel encodes the mask: 255 on the mask, 0 elsewhere."""
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 20:50] = 1
    mask[40:60, 5:15] = 1
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = mask * 255
    image[..., 1] = 128
    return image, mask


def test_flip_matches_numpy():
    image, mask = _coded()
    out = to_albumentations([HFlip(name="hflip", p=1.0)], (64, 64), normalize=False)(image=image, mask=mask)
    assert np.array_equal(out["image"], image[:, ::-1]) and np.array_equal(out["mask"], mask[:, ::-1])
    out = to_albumentations([VFlip(name="vflip", p=1.0)], (64, 64), normalize=False)(image=image, mask=mask)
    assert np.array_equal(out["mask"], mask[::-1])


@pytest.mark.parametrize("ops", [
    [Affine(name="affine", rotate=30, scale=(0.8, 1.2), translate=0.1, p=1.0)],
    [RandomResizedCrop(name="random_resized_crop", scale=(0.3, 1.0))],
    [HFlip(name="hflip"), Affine(name="affine", p=1.0), VFlip(name="vflip")],
])
def test_geometry_keeps_mask_binary_and_aligned(ops):
    image, mask = _coded()
    transform = to_albumentations(ops, (48, 48), normalize=False)
    for _ in range(10):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (48, 48, 3) and out["mask"].shape == (48, 48)
        assert set(np.unique(out["mask"])) <= {0, 1}
        # away from the edges (bilinear image vs nearest mask), the red channel says where the mask is
        red = out["image"][..., 0]
        assert np.mean((red > 200) == (out["mask"] == 1)) > 0.95


def test_colour_ops_leave_mask_alone():
    image, mask = _coded()
    ops = [BrightnessContrast(name="brightness_contrast", p=1.0), GaussNoise(name="gauss_noise", p=1.0)]
    out = to_albumentations(ops, (64, 64), normalize=False)(image=image, mask=mask)
    assert np.array_equal(out["mask"], mask)
    assert not np.array_equal(out["image"], image)


def test_eval_transform_is_resize_and_normalize_only():
    image, mask = _coded()
    out = to_albumentations([HFlip(name="hflip", p=1.0)], (32, 32), train=False)(image=image, mask=mask)
    assert out["image"].dtype == np.float32 and out["image"].shape == (32, 32, 3)
    assert np.array_equal(out["mask"], mask[::2, ::2])
