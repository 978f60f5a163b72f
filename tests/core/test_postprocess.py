import json

import numpy as np
import pytest

from nailseg.core.data.discover import find_pairs
from nailseg.core.evaluate import choose_threshold, evaluate_pairs
from nailseg.core.postprocess import InferenceOptions, load_run_options
from nailseg.errors import ConfigError
from tests.conftest import make_pair_folder


def test_hflip_tta_averages_with_the_mirrored_prediction():
    def left_bias(image):  # probability 1 on the left half, 0 on the right
        prob = np.zeros(image.shape[:2], np.float32)
        prob[:, : image.shape[1] // 2] = 1.0
        return prob

    out = InferenceOptions(tta="hflip").wrap(left_bias)(np.zeros((4, 6, 3), np.uint8))
    np.testing.assert_allclose(out, 0.5)


def test_min_area_removes_specks_only():
    prob = np.zeros((100, 100), np.float32)
    prob[10:40, 10:40] = 0.9   # 900 px: a nail
    prob[70:72, 70:72] = 0.9   # 4 px: a speck
    mask = InferenceOptions(min_area=0.001).mask(prob)  # 10 px
    assert mask[20, 20] and not mask[70, 70] and mask.sum() == 900
    assert InferenceOptions().mask(prob).sum() == 904


def test_threshold_is_chosen_on_the_given_pairs(tmp_path):
    root = make_pair_folder(tmp_path / "d", n=3, size=(40, 30))
    pairs, _ = find_pairs(root)
    from nailseg.core.data.decode import read_mask

    truths = {p.image.name: read_mask(p.mask) for p in pairs}
    order = iter(p.image.name for p in pairs)

    def predict(image):  # truth at 0.72, background at 0.62: thresholds 0.65 and 0.70 are perfect, 0.65 is nearer 0.5
        truth = truths[next(order)]
        return np.where(truth, 0.72, 0.62).astype(np.float32)

    best, ious = choose_threshold(predict, pairs, InferenceOptions(), progress=False)
    assert best == pytest.approx(0.65) and ious["0.65"] == 1.0 and ious["0.50"] < 1.0
    order = iter(p.image.name for p in pairs)
    result = evaluate_pairs(predict, pairs, progress=False, options=InferenceOptions(threshold=best))
    assert result["iou"] == 1.0 and result["inference"] == {"threshold": 0.65, "tta": "none", "min_area": 0.0}


def test_bad_options_and_stored_options(tmp_path):
    with pytest.raises(ConfigError, match="threshold 1.5"):
        InferenceOptions(threshold=1.5)
    with pytest.raises(ConfigError, match="tta 'vflip'"):
        InferenceOptions(tta="vflip")
    assert load_run_options(tmp_path) == InferenceOptions()
    (tmp_path / "inference.json").write_text(json.dumps({"threshold": 0.4, "tta": "hflip", "min_area": 0.0}))
    assert load_run_options(tmp_path) == InferenceOptions(threshold=0.4, tta="hflip")
