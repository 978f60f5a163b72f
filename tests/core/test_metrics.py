import numpy as np
import pytest

from nailseg.core.metrics import Counts, aggregate, confusion, counts_scores, scores


def test_hand_worked_case():
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[:2, 1:3] = True  # 4 pixels, 2 overlap
    c = confusion(pred, truth)
    assert c == Counts(tp=2, fp=2, fn=2, tn=10)
    s = counts_scores(c)
    assert s["iou"] == pytest.approx(2 / 6)
    assert s["dice"] == pytest.approx(4 / 8)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["pixel_accuracy"] == pytest.approx(12 / 16)


def test_empty_cases():
    empty = np.zeros((3, 3), bool)
    assert counts_scores(confusion(empty, empty))["iou"] == 1.0
    full = np.ones((3, 3), bool)
    assert counts_scores(confusion(full, empty))["iou"] == 0.0
    assert counts_scores(confusion(empty, full))["recall"] == 0.0


def test_micro_versus_mean():
    a = Counts(tp=1, fp=0, fn=1, tn=0)  # iou 0.5
    b = Counts(tp=9, fp=1, fn=0, tn=0)  # iou 0.9
    agg = aggregate([a, b])
    assert agg["micro"]["iou"] == pytest.approx(10 / 12)
    assert agg["mean_per_image"]["iou"] == pytest.approx(0.7)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)))


def test_against_torchmetrics():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    rng = np.random.default_rng(0)
    pred = rng.random((5, 32, 32)) > 0.6
    truth = rng.random((5, 32, 32)) > 0.7
    c = confusion(pred, truth)
    ours = scores(c.tp, c.fp, c.fn, c.tn)
    p, t = torch.from_numpy(pred).long(), torch.from_numpy(truth).long()
    assert ours["iou"] == pytest.approx(tm.BinaryJaccardIndex()(p, t).item(), abs=1e-6)
    assert ours["dice"] == pytest.approx(tm.BinaryF1Score()(p, t).item(), abs=1e-6)
    assert ours["precision"] == pytest.approx(tm.BinaryPrecision()(p, t).item(), abs=1e-6)
    assert ours["recall"] == pytest.approx(tm.BinaryRecall()(p, t).item(), abs=1e-6)
