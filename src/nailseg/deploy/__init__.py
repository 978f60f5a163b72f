"""Deployment without the training stack: ONNX models on onnxruntime (``nailseg[onnx]``), their
verification against the framework model, and the HTTP service (``nailseg serve``).

Nothing here imports torch or TensorFlow: a served or embedded model needs only onnxruntime,
numpy, OpenCV and Pillow.
"""


def is_onnx(target) -> bool:
    """A model file exported with ``--format onnx`` rather than a run folder (``predict``, ``eval``,
    ``bench predict`` take either)."""
    return str(target).lower().endswith(".onnx")
