"""The export checks: each format's tolerance, and the pipeline check's either-bound."""

import numpy as np
import pytest

from nailseg.deploy.verify import compare_predictors, require_agreement
from nailseg.errors import ConfigError


def test_compare_predictors_counts_the_largest_difference_and_the_agreeing_pixels():
    a = lambda im: np.full(im.shape[:2], 0.6, np.float32)  # noqa: E731
    b = lambda im: np.where(np.arange(im.shape[1]) < 5, 0.4, 0.6).astype(np.float32) * np.ones(im.shape[:2])  # noqa: E731
    check = compare_predictors(a, b, [np.zeros((4, 10, 3), np.uint8)])
    assert check["max_abs_diff"] == pytest.approx(0.2) and check["mask_agreement"] == 0.5 and check["images"] == 1


@pytest.mark.parametrize("check, ok", [
    ({"max_abs_diff": 0.15, "mask_agreement": 0.9994}, True),    # an edge moved, the masks agree
    ({"max_abs_diff": 0.0016, "mask_agreement": 0.9979}, True),  # the same numbers, pixels at the threshold
    ({"max_abs_diff": 0.3, "mask_agreement": 0.9}, False),       # a wrong export: both bounds missed
])
def test_the_pipeline_check_passes_on_either_bound(check, ok):
    if ok:
        assert require_agreement(check, "onnx-pipeline", "nailseg predict", "x")["either"] is True
    else:
        with pytest.raises(ConfigError, match="--format onnx: the exported model strays from the nailseg predict"):
            require_agreement(check, "onnx-pipeline", "nailseg predict", "x")


def test_the_graph_check_needs_both_bounds():
    with pytest.raises(ConfigError, match="max \\|diff\\| 2.00e-03"):
        require_agreement({"max_abs_diff": 2e-3, "mask_agreement": 1.0}, "onnx", "torch", "x")
