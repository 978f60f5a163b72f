"""An exported ONNX segmenter on onnxruntime alone: the same predictor contract as a run
(RGB ``uint8`` image in, foreground probability at the image's size out), so the shared
evaluation and ``predict`` code use it unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nailseg.errors import ConfigError, MissingDependencyError, quote_name

METADATA_PREFIX = "nailseg."


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "Inference on an .onnx model") from None
    return onnxruntime


class OnnxSegmenter:
    """``nailseg export --format onnx`` output, run by onnxruntime.

    The graph itself resizes a photo to the size the model was trained at and the probability map
    back (``nailseg.resize_in_graph``), so the photo goes in as it is and scores match the run's.
    An export made before the resize moved into the graph is resized here instead, with the same
    OpenCV calls as the run's predictor; ``native=True`` feeds such a model the photo at its own
    size (its graph pads it to a multiple of 32).
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None, native: bool = False):
        ort = _onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"{quote_name(self.path)}: no such ONNX model file")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_providers(ort))
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ConfigError(f"{quote_name(self.path)}: not an ONNX model onnxruntime can load "
                              f"({str(err).splitlines()[0][:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k.removeprefix(METADATA_PREFIX): _value(v) for k, v in meta.items()
                         if k.startswith(METADATA_PREFIX)}
        if "image_size" not in self.metadata:
            raise ConfigError(f"{quote_name(self.path)}: not a nailseg export (no nailseg.image_size metadata); "
                              "export it with `nailseg export RUN --format onnx`")
        self.size_hw = _image_size(self.metadata["image_size"], self.path)
        self.threshold = _threshold(self.metadata.get("threshold", 0.5), self.path)
        self.native = native
        self.resize_in_graph = self.metadata.get("resize_in_graph") is True
        self.input_name = self.session.get_inputs()[0].name
        self.labels = _labels(self.metadata, self.path)  # many classes: their names, from the export

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) ``uint8`` -> (N, H, W) ``float32`` probabilities, at the given size."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.uint8)})[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        from nailseg.core.evaluate import at_image_size

        if self.native or self.resize_in_graph:
            return self.run(image[None])[0]
        h, w = self.size_hw
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return at_image_size(self.run(resized[None])[0], image)

    def describe(self) -> dict:
        return {**self.metadata, "file": str(self.path), "providers": self.session.get_providers()}


def _image_size(value, path: Path) -> tuple[int, int]:
    """``nailseg.image_size`` as (h, w): two whole numbers from 32 to 4096, else one line naming the file."""
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= 4096 for v in value))
    if not ok:
        raise ConfigError(f"{quote_name(path)}: metadata nailseg.image_size={str(value)[:60]!r} is not [height, "
                          "width] with sides from 32 to 4096; re-export the model")
    return int(value[0]), int(value[1])


def _threshold(value, path: Path) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"{quote_name(path)}: metadata nailseg.threshold={str(value)[:60]!r} is not a "
                          "probability from 0 to 1; re-export the model")
    return threshold


def _labels(metadata: dict, path: Path):
    """A many-class export's :class:`~nailseg.core.labels.LabelSpec` (``nailseg.classes``), or None."""
    names = metadata.get("classes")
    if names is None:
        return None
    ignore = metadata.get("ignore_index", 255)
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
            and isinstance(ignore, int) and len(names) <= ignore <= 255):
        raise ConfigError(f"{quote_name(path)}: metadata nailseg.classes/ignore_index are not a list of names and "
                          "a value above them; re-export the model")
    from nailseg.core.labels import LabelSpec

    return LabelSpec(tuple(names), ignore)


def _providers(ort) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
