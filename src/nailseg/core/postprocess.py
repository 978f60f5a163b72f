"""Evaluation-time options shared by eval, predict and the run: test-time augmentation, the
threshold, and removal of specks. Each is recorded in ``eval.json``; a threshold (and the other
options) chosen on validation is stored in ``RUN/inference.json`` and used by default after."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nailseg.errors import ConfigError

Predictor = Callable[[np.ndarray], np.ndarray]
TTA_MODES = ("none", "hflip")
INFERENCE_FILE = "inference.json"


@dataclass
class InferenceOptions:
    threshold: float = 0.5
    tta: str = "none"          # hflip: average the prediction with that of the mirrored image
    min_area: float = 0.0      # connected regions smaller than this share of the image are removed
    tile: list[int] | None = None  # sliding windows of (h, w) photo pixels (core/tiling.py); None: the whole photo
    overlap: float = 0.25      # the share of a window that its neighbour also covers

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold {self.threshold}: must be between 0 and 1")
        if self.tta not in TTA_MODES:
            raise ConfigError(f"tta {self.tta!r}: use one of {', '.join(TTA_MODES)}")
        if not 0.0 <= self.min_area < 0.5:
            raise ConfigError(f"min_area {self.min_area}: a share of the image's pixels, from 0 to 0.5")
        from nailseg.core.tiling import check_overlap

        check_overlap(self.overlap)
        if self.tile is not None:
            self.tile = [int(v) for v in self.tile]

    def wrap(self, predict: Predictor) -> Predictor:
        """``predict`` with test-time augmentation (probabilities averaged), then tiling, applied."""
        if self.tta != "none":
            plain = predict

            def predict(image: np.ndarray) -> np.ndarray:
                mirrored = np.ascontiguousarray(image[:, ::-1])
                return 0.5 * (plain(image) + plain(mirrored)[:, ::-1])

        if self.tile is not None:  # each window gets the TTA above; the answer is blended
            from nailseg.core.tiling import tile_predictor

            predict = tile_predictor(predict, (self.tile[0], self.tile[1]), self.overlap)
        return predict

    def mask(self, prob: np.ndarray) -> np.ndarray:
        """Threshold, then drop connected regions below ``min_area`` of the image."""
        mask = prob > self.threshold
        if self.min_area > 0 and mask.any():
            import cv2

            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
            small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < self.min_area * mask.size)
            small = small[small > 0]
            if len(small):
                mask &= ~np.isin(labels, small)
        return mask

    def as_dict(self) -> dict:
        """What a result records: tiling (a per-photo-size choice, never stored in a run) only when used."""
        record = asdict(self)
        if self.tile is None:
            del record["tile"], record["overlap"]
        return record


def load_run_options(run_path: Path) -> InferenceOptions:
    """The options stored in a run by ``eval --choose-threshold`` (defaults when none are)."""
    path = Path(run_path) / INFERENCE_FILE
    if not path.exists():
        return InferenceOptions()
    try:
        raw = json.loads(path.read_text())
        return InferenceOptions(**{k: raw[k] for k in ("threshold", "tta", "min_area") if k in raw})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: unreadable inference options ({err})") from None


def with_overrides(base: InferenceOptions, threshold=None, tta=None, min_area=None, tile=None,
                   overlap=None) -> InferenceOptions:
    return InferenceOptions(threshold=base.threshold if threshold is None else threshold,
                            tta=base.tta if tta is None else tta,
                            min_area=base.min_area if min_area is None else min_area,
                            tile=base.tile if tile is None else list(tile),
                            overlap=base.overlap if overlap is None else overlap)
