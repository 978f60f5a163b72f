"""One palette and one legend for every overlay, and a run's curves.png."""

import numpy as np

from nailseg.core.visualize import PALETTE, error_overlay, overlay, plot_run_curves


def test_error_overlay_colours_each_kind_of_pixel_and_adds_a_legend():
    image = np.full((60, 80, 3), 128, np.uint8)
    truth = np.zeros((60, 80), bool)
    pred = np.zeros((60, 80), bool)
    truth[10:30, 10:30] = True
    pred[20:40, 20:40] = True
    out = error_overlay(image, pred, truth, iou=0.14, alpha=1.0)
    assert out.shape[1] == 80 and out.shape[0] > 60  # the legend strip underneath
    assert tuple(out[35, 35]) == PALETTE["fp"] and tuple(out[12, 12]) == PALETTE["fn"]
    assert tuple(out[25, 25]) == PALETTE["tp"] and tuple(out[50, 5]) == (128, 128, 128)
    legend = out[60:]
    for key in ("tp", "fp", "fn"):  # each colour has its square in the legend
        assert (legend == np.array(PALETTE[key], np.uint8)).all(axis=-1).any()
    assert error_overlay(image, pred, truth, with_legend=False).shape == image.shape


def test_prediction_overlay_keeps_the_photo_grid_without_legend():
    image = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:15, 5:15] = True
    plain = overlay(image, mask, alpha=1.0, with_legend=False)
    assert plain.shape == image.shape and tuple(plain[10, 10]) == PALETTE["tp"] and not plain[30, 40].any()
    assert overlay(image, mask).shape[0] > 40


def test_run_curves_png(tmp_path):
    records = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_iou": 0.1 * e} for e in range(4)]
    path = plot_run_curves(records, tmp_path / "curves.png", "a run")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert plot_run_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_overlays_of_a_large_photo_need_no_float_copy_of_it():
    """A 24-megapixel photo's float copy is 288 MB (its float64 intermediates twice that); the overlays
    blend a band of rows at a time, so what they allocate stays near the photo's own uint8 size."""
    import tracemalloc

    from nailseg.core.visualize import class_overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:1500, :2000]
    mask = (yy - 700) ** 2 + (xx - 900) ** 2 < 500**2  # one large nail, say: its outline is drawn too
    labels = (yy // 400 + xx // 600).astype(np.uint8) % 4
    for draw in (lambda: overlay(image, mask), lambda: error_overlay(image, mask, ~mask, 0.5),
                 lambda: class_overlay(image, labels, ["a", "b", "c", "d"])):
        tracemalloc.start()
        out = draw()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert out.shape[1] == 2000 and out.dtype == np.uint8
        # the picture and its copy with the legend are 2x; the whole-photo float blend was 8-20x
        assert peak < 4.5 * image.nbytes, (peak / image.nbytes)


def test_overlays_take_a_transposed_array_as_a_picture():
    """A CHW tensor's ``transpose(1, 2, 0)`` (as the kornia and DALI tutorials draw their batches) is
    not C-contiguous: OpenCV draws the outline on a copy that must be."""
    from nailseg.core.visualize import class_overlay, instance_overlay

    image = np.zeros((3, 40, 50), np.uint8).transpose(1, 2, 0)
    mask = np.zeros((40, 50), bool)
    mask[5:15, 5:15] = True
    assert not image.flags.c_contiguous
    assert tuple(overlay(image, mask, alpha=1.0, with_legend=False)[10, 10]) == PALETTE["tp"]
    assert error_overlay(image, mask, ~mask, 0.5).shape[1] == 50
    assert class_overlay(image, mask.astype(np.uint8), ["background", "nail"]).shape[1] == 50
    assert instance_overlay(image, mask[None]).shape == image.shape
