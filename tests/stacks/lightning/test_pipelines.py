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


def test_kornia_keeps_class_indices_and_fills_uncovered_pixels_with_the_ignore_value():
    """Many classes on the device: four classes, each its own red level, and an unlabelled band
    (255). After strong affines every mask value is a class or the ignore value, the red level
    under each class is still that class's (the draw moved image and mask together, nearest
    neighbour), and the pixels the affine uncovered are ignored, never class 0."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("kornia")
    from nailseg.stacks.lightning.loaders.kornia import GpuAugment
    from tests.pipelines import denormalize

    labels = np.zeros((64, 64), np.uint8)
    labels[8:30, 8:40], labels[34:60, 10:30], labels[36:60, 36:60] = 1, 2, 3
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 60 + 60 * labels  # class k: red 60 + 60k, so uncovered black pixels are told apart
    image[..., 1:] = 100
    labels[:, 58:] = 255
    aug = GpuAugment([Affine(name="affine", rotate=30, scale=(0.7, 0.9), translate=0.2, p=1.0)], (64, 64),
                     ignore_index=255)
    torch.manual_seed(0)
    x, m = aug(torch.from_numpy(image.transpose(2, 0, 1))[None].repeat(6, 1, 1, 1),
               torch.from_numpy(labels)[None, None].repeat(6, 1, 1, 1), train=True)
    masks = m[:, 0].numpy()
    assert set(np.unique(masks)) <= {0, 1, 2, 3, 255} and (masks == 255).mean() > 0.1
    reds = np.stack([denormalize(x[i].numpy())[..., 0] for i in range(6)])
    uncovered = reds < 20
    assert uncovered.mean() > 0.05 and (masks[uncovered] == 255).mean() > 0.97  # filled: ignored, not class 0
    for k in range(4):
        at_k = masks == k
        # edge pixels blend two reds (bilinear image, nearest mask); a misaligned draw scores ~0.3
        assert at_k.sum() > 100 and (np.abs(reds[at_k] - (60 + 60 * k)) < 30).mean() > 0.9, k


@pytest.mark.slow
def test_a_many_class_run_trains_with_kornia_augmenting_the_batch(class_data, tmp_path):
    """The three colour classes trained end to end with data.pipeline=kornia (on this CPU):
    well past the 0.3 mIoU of a model that predicts skin everywhere."""
    pytest.importorskip("kornia")
    import json

    from tests.conftest import REPO, TINY_TRAIN, run_cli

    proc = run_cli("train", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={class_data}", *TINY_TRAIN,
                   "data.pipeline=kornia", "data.classes=classes.txt", "data.split.val=0.25", "data.split.test=0.0",
                   "trainer.max_epochs=6", "optim.lr=0.003", f"run.dir={tmp_path}", "run.name=kornia-classes",
                   "logging.tensorboard=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "kornia-classes" / "summary.json").read_text())
    assert summary["val_miou"] > 0.5, summary
