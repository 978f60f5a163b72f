"""The Keras stack: tf.keras (tf-keras) + segmentation_models, fed by tf.data. Only this folder
imports TensorFlow, and it never imports torch: the two must not share a process."""

import os
import re
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # CUDA probing on CPU-only machines is not an error

# TensorFlow 2.21 logs through Abseil before Abseil's logging is initialised, and those lines ignore
# TF_CPP_MIN_LOG_LEVEL (abseil/abseil-cpp#1718): "WARNING: All log messages before
# absl::InitializeLog() ...", then INFO lines about oneDNN and missing CUDA drivers. They come from
# C++ straight to file descriptor 2, so the first import runs with fd 2 in a temporary file, and
# every line but those INFO lines (an import error, a real warning) is written back to stderr.
_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} \d\d:\d\d:\d\d)")


def _import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not _NOISE.match(line)]
            sys.stderr.write("".join(kept))


def _import_segmentation_models_quietly() -> None:
    """segmentation_models prints a banner to stdout on import; stdout is for results (a run folder)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import segmentation_models  # noqa: F401


try:
    _import_tensorflow_quietly()
    _import_segmentation_models_quietly()
except ImportError:  # the stack's own import reports the missing extra (nailseg.registry checks it first)
    pass
