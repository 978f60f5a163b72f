"""Many-class masks and scores (core/labels.py): the three mask layouts, refusals by file and
value, and MMSegmentation's scoring rule checked against counts worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nailseg.core.labels import (LabelSpec, class_pixels, class_scores, color_labels, confusion_matrix, palette,
                                 read_class_names, read_labels)
from nailseg.errors import DataError

SPEC = LabelSpec(("sky", "road", "car"), ignore_index=255)
LABELS = np.array([[0, 0, 1, 1], [2, 2, 1, 255]], np.uint8)


def _palette_png(path, labels, colours):
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    flat = [c for rgb in colours for c in rgb]
    img.putpalette(flat + [0] * (768 - len(flat)))
    img.save(path)
    return path


def test_index_palette_and_rgb_masks_read_as_the_same_classes(tmp_path):
    Image.fromarray(LABELS).save(tmp_path / "index.png")
    colours = [(10, 20, 30), (128, 64, 128), (64, 0, 128)]
    _palette_png(tmp_path / "palette.png", LABELS, colours)
    rgb = np.zeros((*LABELS.shape, 3), np.uint8)
    for i, c in enumerate(colours):
        rgb[LABELS == i] = c
    rgb[LABELS == 255] = (0, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    coloured = LabelSpec(SPEC.names, 255, tuple(colours) + ())
    assert np.array_equal(read_labels(tmp_path / "index.png", SPEC), LABELS)
    assert np.array_equal(read_labels(tmp_path / "palette.png", coloured), LABELS)
    with pytest.raises(DataError, match=r"rgb\.png: colour \(0, 0, 0\) is not in data\.colors"):
        read_labels(tmp_path / "rgb.png", coloured)  # the unlabelled black is not in the table
    with_black = LabelSpec(("void", *SPEC.names), 255, ((0, 0, 0), *colours))
    assert np.array_equal(read_labels(tmp_path / "rgb.png", with_black), np.where(LABELS == 255, 0, LABELS + 1))


def test_a_value_outside_the_classes_is_refused_naming_file_and_value(tmp_path):
    bad = LABELS.copy()
    bad[0, 0] = 7
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png: value 7 is not a class \(0-2\) nor the ignore value 255"):
        read_labels(tmp_path / "bad.png", SPEC)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png: an RGB colour mask, but data\.colors"):
        read_labels(tmp_path / "colour.png", SPEC)


def test_a_palette_that_contradicts_the_colour_table_is_refused(tmp_path):
    colours = [(10, 20, 30), (128, 64, 128), (64, 0, 128)]
    _palette_png(tmp_path / "p.png", LABELS, [colours[1], colours[0], colours[2]])  # sky and road swapped
    with pytest.raises(DataError, match=r"p\.png: palette index 0 is coloured \(128, 64, 128\) but data\.colors "
                                        r"gives 'sky' \(10, 20, 30\)"):
        read_labels(tmp_path / "p.png", LabelSpec(SPEC.names, 255, tuple(colours)))


def test_class_names_file(tmp_path):
    (tmp_path / "classes.txt").write_text("# CamVid\nsky\n\nroad\ncar\n")
    assert read_class_names(tmp_path / "classes.txt") == ["sky", "road", "car"]
    (tmp_path / "one.txt").write_text("sky\n")
    with pytest.raises(DataError, match=r"one\.txt: names 1 class"):
        read_class_names(tmp_path / "one.txt")
    # two indices sharing a name would share (and lose) their counts: refused, naming the lines
    (tmp_path / "twice.txt").write_text("sky\nroad\n# a comment\nsky\n")
    with pytest.raises(DataError, match=r"twice\.txt: class 'sky' is named twice \(lines 1 and 4\)"):
        read_class_names(tmp_path / "twice.txt")


def test_confusion_and_scores_follow_mmsegmentation():
    truth = LABELS
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 2]], np.uint8)  # the ignored pixel's prediction never counts
    m = confusion_matrix(pred, truth, 3, 255)
    assert m.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    s = class_scores(m, SPEC.names)
    # sky: tp 1, fp 1, fn 1 -> 1/3; road: tp 3, fp 1 -> 3/4; car: tp 1, fn 1 -> 1/2
    assert s["per_class_iou"] == pytest.approx({"sky": 1 / 3, "road": 3 / 4, "car": 1 / 2})
    assert s["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert s["per_class_dice"]["road"] == pytest.approx(6 / 7)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert s["mprecision"] == pytest.approx((1 / 2 + 3 / 4 + 1) / 3) and s["mrecall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    # a class in neither truth nor prediction is left out of the mean, not scored 0 or 1
    four = class_scores(np.pad(m, ((0, 1), (0, 1))), (*SPEC.names, "bicyclist"))
    assert four["per_class_iou"]["bicyclist"] is None and four["miou"] == pytest.approx(s["miou"])
    assert four["classes_scored"] == 3
    assert class_pixels(truth, SPEC) == [2, 3, 2]


def test_class_colours_are_fixed_and_distinct():
    colours = palette(30)
    assert len({tuple(c) for c in colours}) == 30 and np.array_equal(palette(30), colours)
    picture = color_labels(LABELS, 3, 255)
    assert picture[1, 3].tolist() == [0, 0, 0] and picture[0, 0].tolist() == colours[0].tolist()


def test_class_weights_follow_the_median_frequency_rule_worked_by_hand():
    """Shares 100/1110, 10/1110, 1000/1110 (median 100/1110): median frequency weighs the median
    class 1, the ten-times rarer one 10 and the ten-times commoner one 0.1; inverse_sqrt takes the
    square roots. A class with no pixel is never a target and weighs 1."""
    from nailseg.core.labels import class_weights

    assert class_weights("median_frequency", [100, 10, 1000, 0]) == pytest.approx([1.0, 10.0, 0.1, 1.0])
    assert class_weights("inverse_sqrt", [100, 10, 1000, 0]) == pytest.approx([1.0, 10 ** 0.5, 0.1 ** 0.5, 1.0],
                                                                             abs=1e-6)
    assert class_weights("median_frequency", [0, 0]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown rule"):
        class_weights("balanced", [1, 2])


def test_a_runs_class_weights_are_computed_once_and_kept(tmp_path):
    """``loss.class_weights: median_frequency`` is resolved from the training pixels into
    ``class_weights.json``; a resume (or a DDP rank, which has no pixel counts) reads that file, so
    the weights never change under a run, and a rank that finds no file says so."""
    from nailseg.config import load_experiment
    from nailseg.errors import ConfigError
    from nailseg.runs import RunDir, resolve_class_weights
    from tests.conftest import REPO

    exp = load_experiment(REPO / "configs" / "camvid-pretrained-cpu.yaml", ["loss.class_weights=median_frequency"])
    run = RunDir(tmp_path)
    with pytest.raises(ConfigError, match="class_weights.json: missing"):
        resolve_class_weights(exp, run, None)
    pixels = dict(zip(exp.data.classes, [100, 10, 1000, 100, 100, 100, 100, 100, 100, 100, 0]))
    weights = resolve_class_weights(exp, run, pixels)
    assert weights[:3] == pytest.approx([1.0, 10.0, 0.1]) and weights[-1] == 1.0
    assert resolve_class_weights(exp, run, None) == weights  # read back, not computed
    assert resolve_class_weights(exp, run, {**pixels, "sky": 5}) == weights  # the resume keeps the first answer
