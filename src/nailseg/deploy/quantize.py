"""``nailseg export RUN --format onnx --int8`` / ``--half``: smaller copies of a verified ONNX
export, made with ONNX Runtime's own tools and checked against the float32 model on the run's
validation photos. int8: static quantisation calibrated on the run's training photos. half: the
weights and activations in float16 (half the file; input uint8 and output float32 unchanged).

QDQ format with per-channel weights is what ONNX Runtime's CPU kernels (VNNI / AMX-INT8) run
fastest. The graph's own pre- and post-processing (the uint8 resize, the normalisation, the
sigmoid and the resize back) stays float: only the network's Conv/MatMul/Gemm layers and what sits
between them are quantised. The int8 file is refused, with its figures, when its masks stray from
the float32 model's. Framework-free: onnxruntime only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from nailseg.errors import ConfigError, MissingDependencyError

# An int8 model is allowed to move probabilities (that is the point), not the masks.
INT8_TOLERANCE = {"mask_agreement": 0.99, "mask_iou": 0.90}
# float16 keeps 11 bits of mantissa: the probabilities move by ~1e-3, so the masks should hardly
# move either. Either passes (as for the in-graph resize in deploy/verify.py): the same masks, or
# the same numbers. A barely trained model whose probabilities sit at the threshold flips pixels at
# a 1e-3 move, and on its small masks that costs IoU (0.88 seen in a test, at max |diff| 1.6e-3)
# although the conversion is faithful; a broken one moves probabilities by 0.1 or more.
HALF_TOLERANCE = {"mask_agreement": 0.995, "mask_iou": 0.95, "max_abs_diff": 1e-2}
QUANTIZED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool", "Relu", "Clip",
                 "Sigmoid", "GlobalAveragePool", "AveragePool"]


class _Photos:
    """onnxruntime's ``CalibrationDataReader``: one photo at a time, resized to the model's size
    (the graph would do the same), as uint8 (1, H, W, 3)."""

    def __init__(self, images: list[np.ndarray], input_name: str, size_hw: tuple[int, int]):
        import cv2

        h, w = size_hw
        self._items = iter([{input_name: cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)[None]}
                            for im in images])

    def get_next(self):
        return next(self._items, None)


def _network_nodes(model_path: Path) -> list[str]:
    """The nodes between the graph's input normalisation and its output sigmoid: the network."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS]


def _verified_copy(fp32: Path, out: Path, write, check_images: list[np.ndarray], source: str, *, flag: str,
                   what: str, tolerance: dict, report_name: str, **report) -> dict:
    """What ``--int8`` and ``--half`` share: ``write(reference, tmp)`` makes the copy beside a
    temporary name; it is kept at ``out`` only when its masks agree with the float32 model's within
    ``tolerance`` on ``check_images``, and its figures go to ``report_name`` beside it."""
    from nailseg.core.io import atomic_path, write_json
    from nailseg.deploy.onnx_model import OnnxSegmenter
    from nailseg.deploy.verify import compare_predictors

    reference = OnnxSegmenter(fp32)
    started = time.perf_counter()
    with atomic_path(out) as tmp:
        write(reference, tmp)
        candidate = OnnxSegmenter(tmp)
        check = compare_predictors(reference, candidate, check_images, threshold=reference.threshold)
        check["mask_iou"] = _mask_iou(reference, candidate, check_images)
        if not _within(check, tolerance):
            raise ConfigError(f"{flag}: the {what} model strays from the float32 one on {source} (mask agreement "
                              f"{check['mask_agreement']:.4f}, mask IoU {check['mask_iou']:.4f}, max |diff| "
                              f"{check['max_abs_diff']:.2e}; tolerance {tolerance}); nothing written")
    full = {**report, "file": str(out), "bytes": out.stat().st_size, "from": str(fp32),
            "bytes_fp32": fp32.stat().st_size, "verified_on": source, **check, "tolerance": tolerance,
            "convert_time_s": round(time.perf_counter() - started, 1)}
    write_json(out.with_name(report_name), full)
    print(f"{flag.lstrip('-')}: verified on {source}: mask agreement {100 * check['mask_agreement']:.3f}%, mask IoU "
          f"{check['mask_iou']:.4f} against float32, {full['bytes'] / 2**20:.1f} MiB ({out.with_name(report_name)})",
          file=sys.stderr)
    return full


def quantize_int8(fp32: Path, out: Path, calibration: list[np.ndarray], check_images: list[np.ndarray],
                  source: str) -> dict:
    """Write ``out`` (atomically) and return the check; raise ``ConfigError`` past :data:`INT8_TOLERANCE`."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "int8 quantisation (onnxruntime.quantization)") from None

    def write(reference, tmp: Path) -> None:
        prepared = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(tmp), _Photos(calibration, reference.input_name, reference.size_hw),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_quantize=_network_nodes(prepared), op_types_to_quantize=QUANTIZED_OPS)
        finally:
            prepared.unlink(missing_ok=True)
        _copy_metadata(fp32, tmp)

    return _verified_copy(fp32, out, write, check_images, source, flag="--int8", what="quantised",
                          tolerance=INT8_TOLERANCE, report_name="export.int8.json", format="onnx-int8",
                          calibrated_on=f"{len(calibration)} training images of the run", quant_format="QDQ",
                          per_channel=True)


def convert_half(fp32: Path, out: Path, check_images: list[np.ndarray], source: str) -> dict:
    """Write the float16 copy ``out`` (atomically) and return its check; raise ``ConfigError`` past
    :data:`HALF_TOLERANCE`. ONNX Runtime's ``convert_float_to_float16`` with ``keep_io_types``, so a
    caller feeds and reads exactly what it does with the float32 file."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise MissingDependencyError("onnx", "export", "float16 conversion (--half)") from None

    def write(reference, tmp: Path) -> None:
        onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(tmp))
        _copy_metadata(fp32, tmp, {"type": "float16", "tool": "onnxruntime.transformers.float16", "keep_io_types": True})

    return _verified_copy(fp32, out, write, check_images, source, flag="--half", what="float16",
                          tolerance=HALF_TOLERANCE, report_name="export.fp16.json", format="onnx-fp16")


def _within(check: dict, tolerance: dict) -> bool:
    """The masks agree within ``tolerance``, or (where it bounds ``max_abs_diff``) the probabilities do."""
    masks = check["mask_agreement"] >= tolerance["mask_agreement"] and check["mask_iou"] >= tolerance["mask_iou"]
    return masks or check["max_abs_diff"] <= tolerance.get("max_abs_diff", -1.0)


def _mask_iou(a, b, images: list[np.ndarray]) -> float:
    inter = union = 0
    for image in images:
        ma, mb = a(image) > a.threshold, b(image) > b.threshold
        inter += int((ma & mb).sum())
        union += int((ma | mb).sum())
    return inter / union if union else 1.0


def _copy_metadata(src: Path, dst: Path, quantization: dict | None = None) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    meta["nailseg.quantization"] = json.dumps(quantization or {"type": "int8", "format": "QDQ", "per_channel": True})
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
