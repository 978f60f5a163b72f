"""Tiled inference (core/tiling.py): windows that cover the photo, blending that hides window
edges, class maps without a photo-sized (H, W, C) array, and the flags' refusals."""

import tracemalloc

import numpy as np
import pytest

from nailseg.core.postprocess import InferenceOptions
from nailseg.core.tiling import blend_weights, parse_tile, tile_predictor, window_shape, window_starts
from nailseg.errors import ConfigError


def red_share(image: np.ndarray) -> np.ndarray:
    """A pointwise 'model': the foreground probability is the red channel, so any tiling of it
    must give back exactly the untiled answer."""
    return image[..., 0].astype(np.float32) / 255


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("tile", "overlap"), [((64, 64), 0.25), ((64, 96), 0.5), ((50, 70), 0.0), ((33, 200), 0.9)])
def test_a_pointwise_model_tiled_gives_the_untiled_answer(tile, overlap):
    image = photo(150, 230)
    tiled = tile_predictor(red_share, tile, overlap)(image)
    assert tiled.shape == (150, 230) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, red_share(image), atol=1e-5)


def test_windows_cover_every_pixel_and_never_overhang():
    seen = []

    def recording(image):
        seen.append(image.shape[:2])
        return np.ones(image.shape[:2], np.float32)

    tile_predictor(recording, (64, 80), 0.25)(photo(200, 300))
    assert set(seen) == {(64, 80)}  # every window whole, none cut at the photo's edge
    # rows: 0, 48, 96, 136 (flush); columns: 0, 60, 120, 180, 220 (flush)
    assert len(seen) == len(window_starts(200, 64, 48)) * len(window_starts(300, 80, 60)) == 4 * 5
    assert window_starts(200, 64, 48) == [0, 48, 96, 136]


def test_a_window_larger_than_the_photo_is_the_whole_photo():
    image = photo(90, 120, seed=3)

    def context(img):  # depends on the whole window: any cut would change it
        return np.full(img.shape[:2], img.mean() / 255, np.float32)

    np.testing.assert_array_equal(tile_predictor(context, (512, 512), 0.25)(image), context(image))


def test_nails_across_window_borders_survive_a_model_blind_at_its_window_edges():
    """A model short of context at a window's edge misses what is there (here: everything within
    6 px of the edge). With overlap, the blend takes those pixels from the neighbour that sees
    them in its middle, so nails straddling window borders are kept whole; without the blend
    weights (plain averaging) they would be cut in half."""
    h, w = 256, 256
    yy, xx = np.mgrid[:h, :w]
    nails = np.zeros((h, w), bool)
    for cy, cx in [(64, 64), (64, 128), (128, 96), (192, 192), (100, 190)]:  # centres on window borders
        nails |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 7 ** 2
    image = np.zeros((h, w, 3), np.uint8)
    image[nails] = 255

    def blind_edges(img):
        prob = red_share(img)
        prob[:6], prob[-6:], prob[:, :6], prob[:, -6:] = 0, 0, 0, 0
        return prob

    found = tile_predictor(blind_edges, (128, 128), 0.5)(image) > 0.5
    inner = np.zeros((h, w), bool)
    inner[6:-6, 6:-6] = True  # the photo's own border has no neighbour to help
    assert (found[nails & inner]).all()
    assert not found[~nails].any()
    untiled_windows = tile_predictor(blind_edges, (128, 128), 0.0)(image) > 0.5
    assert (~untiled_windows[nails & inner]).sum() > 50  # without overlap the same model cuts them


def test_many_classes_come_back_as_a_uint8_class_map():
    image = photo(120, 160, seed=1)

    def three_classes(img):
        rgb = img.astype(np.float32) / 255
        return rgb / rgb.sum(-1, keepdims=True).clip(1e-6)

    classes = tile_predictor(three_classes, (48, 48), 0.25)(image)
    assert classes.dtype == np.uint8 and classes.shape == (120, 160)
    np.testing.assert_array_equal(classes, three_classes(image).argmax(-1))


def test_memory_is_bounded_by_a_strip_of_windows_not_the_photo():
    """6000x4000 with 11 classes: the (H, W, C) float32 answer alone would be 1.06 GB."""
    h, w, n = 4000, 6000, 11
    image = np.zeros((h, w, 3), np.uint8)
    image[1000:3000, 2000:4000, 0] = 200

    def classes(img):
        prob = np.zeros((*img.shape[:2], n), np.float32)
        prob[..., 3] = img[..., 0] / 255
        prob[..., 0] = 0.5
        return prob

    tracemalloc.start()
    try:
        out = tile_predictor(classes, (512, 512), 0.25)(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out[2000, 3000] == 3 and out[10, 10] == 0 and out[999, 3000] == 0 and out[1000, 3000] == 3
    strip = 512 * w * n * 4  # one strip of blending sums: 135 MB
    assert peak < h * w + 3 * strip, f"peak {peak / 1e6:.0f} MB"  # the answer + strips, far below 1.06 GB


def test_blend_weights_fall_to_the_edges_and_stay_positive():
    weights = blend_weights(40, 60, 10, 20)
    assert weights[20, 30] == 1.0 and 0 < weights[0, 0] < 0.01
    assert weights[0, 30] < weights[5, 30] < weights[10, 30] == 1.0


def test_tile_sizes_follow_the_model_aspect_and_refuse_nonsense():
    assert parse_tile("512") == 512 and parse_tile("360x480") == (360, 480)
    assert parse_tile("model") == "model"  # `--tile` alone: argparse runs its const through the parser
    assert window_shape(480, (352, 480)) == (352, 480)
    assert window_shape(512, (256, 256)) == (512, 512)
    assert window_shape((100, 200), (256, 256)) == (100, 200)
    assert window_shape("model", (352, 480)) == (352, 480)  # --tile alone
    for bad in ("big", "0", "12x", "16", "-5"):
        with pytest.raises(ConfigError, match="--tile"):
            parse_tile(bad)
    with pytest.raises(ConfigError, match="--overlap"):
        InferenceOptions(tile=[64, 64], overlap=0.95)


def test_tta_runs_inside_each_window():
    """Inference options apply TTA to each window, then blend: still the pointwise answer."""
    image = photo(100, 140, seed=2)
    options = InferenceOptions(tta="hflip", tile=[40, 50], overlap=0.3)
    np.testing.assert_allclose(options.wrap(red_share)(image), red_share(image), atol=1e-5)
    assert options.as_dict()["tile"] == [40, 50]
