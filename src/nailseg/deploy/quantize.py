"""``nailseg export RUN --format onnx --int8`` / ``--half``: smaller copies of a verified ONNX
export, made with ONNX Runtime's own tools and checked against the float32 model on the run's
validation photos. int8: static quantisation calibrated on the run's training photos. half: the
weights and activations in float16 (half the file; input uint8 and output float32 unchanged).

QDQ format with per-channel weights is what ONNX Runtime's CPU kernels (VNNI / AMX-INT8) run
fastest. The graph's own pre- and post-processing (the uint8 resize, the normalisation, the
sigmoid and the resize back) stays float: only the network's Conv/MatMul/Gemm layers and what sits
between them are quantised. The int8 file is refused, with its figures, when its masks stray from
the float32 model's. Framework-free: onnxruntime only.

Which int8 settings, by the CPU the model is for (``--int8-target``, default this machine's):
ONNX Runtime's u8 x s8 kernels multiply activations by weights with ``VPMADDUBSW`` on a CPU without
VNNI (AVX2, AVX-512F): two u8 x s8 products are summed in int16, and 255 x 127 x 2 = 64,770 does not
fit, so large activations saturate and masks move (0.983 mask agreement measured on an AVX2 EPYC).
Weights in 7 bits (``reduce_range``: weights within +-64: 255 x 64 x 2 = 32,640) cannot saturate, at the same kernel
speed; uint8 weights (U8U8) take another kernel that sums in int32. VNNI and AMX-INT8 sum u8 x s8
in int32 directly, so full-range s8 weights keep the most precision there. Each target has a
ladder: its first setting, then the safer ones; the first that verifies is kept.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nailseg.core.runtime import CPU_PROFILES, INT8_LADDERS
from nailseg.errors import ConfigError, MissingDependencyError

# An int8 model is allowed to move probabilities (that is the point), not the masks.
INT8_TOLERANCE = {"mask_agreement": 0.99, "mask_iou": 0.90}
# Below this share of float32's speed (one short timed pass, so not 1.0: noise) the kept int8 copy is
# said to be slower: the verified u8u8 copy ran at 0.5-0.6x on an AVX2-only EPYC.
SLOWER_THAN_FP32 = 0.9
# float16 keeps 11 bits of mantissa: the probabilities move by ~1e-3, so the masks should hardly
# move either. Either passes (as for the in-graph resize in deploy/verify.py): the same masks, or
# the same numbers. A barely trained model whose probabilities sit at the threshold flips pixels at
# a 1e-3 move, and on its small masks that costs IoU (0.88 seen in a test, at max |diff| 1.6e-3)
# although the conversion is faithful; a broken one moves probabilities by 0.1 or more.
HALF_TOLERANCE = {"mask_agreement": 0.995, "mask_iou": 0.95, "max_abs_diff": 1e-2}
QUANTIZED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool", "Relu", "Clip",
                 "Sigmoid", "GlobalAveragePool", "AveragePool"]


@dataclass(frozen=True)
class Int8Setting:
    """One way to quantise: the activation and weight types and whether weights keep 7 bits."""

    name: str
    weight_type: str          # onnxruntime ``QuantType`` name: QInt8 or QUInt8
    reduce_range: bool
    why: str

    @property
    def saturation_free(self) -> bool:
        """No int16 overflow on AVX2's u8 x s8 kernel: 7-bit weights, or the u8u8 kernel (int32 sums)."""
        return self.reduce_range or self.weight_type == "QUInt8"

    def describe(self) -> dict:
        return {**asdict(self), "activation_type": "QUInt8", "quant_format": "QDQ", "per_channel": True}


INT8_SETTINGS = {
    "u8s8": Int8Setting("u8s8", "QInt8", False, "uint8 activations x int8 weights, full range: VNNI/AMX sum in int32"),
    "u8s8-7bit": Int8Setting("u8s8-7bit", "QInt8", True,
                             "int8 weights in 7 bits (reduce_range): an int16 sum of two products cannot saturate"),
    "u8u8": Int8Setting("u8u8", "QUInt8", False, "uint8 weights: ONNX Runtime's u8u8 kernel sums in int32"),
}
INT8_TARGETS = ("auto", *CPU_PROFILES)


def int8_ladder(target: str = "auto", flags: set[str] | None = None) -> tuple[str, list[Int8Setting]]:
    """The profile ``target`` names (``auto``: this CPU's) and its settings, first choice first."""
    from nailseg.core.runtime import cpu_profile

    if target not in INT8_TARGETS:
        raise ConfigError(f"--int8-target {target}: use one of {', '.join(INT8_TARGETS)}")
    here = cpu_profile(flags)
    profile = here if target == "auto" else target
    names = INT8_LADDERS[profile]
    if profile == "avx2" and here != "avx2":
        # this CPU sums in int32 and cannot show the target's int16 saturation, so only the settings
        # that cannot saturate there are verified here for it
        names = tuple(n for n in names if INT8_SETTINGS[n].saturation_free)
    return profile, [INT8_SETTINGS[name] for name in names]


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


class _Strayed(Exception):
    """One int8 setting's copy strayed from the float32 model (its figures in ``check``)."""

    def __init__(self, check: dict):
        super().__init__("strayed")
        self.check = check


def _verified_copy(fp32: Path, out: Path, write, check_images: list[np.ndarray], source: str, *, flag: str,
                   tolerance: dict, report_name: str, **report) -> dict:
    """What ``--int8`` and ``--half`` share: ``write(reference, tmp)`` makes the copy beside a
    temporary name; it is kept at ``out`` only when its masks agree with the float32 model's within
    ``tolerance`` on ``check_images``, and its figures go to ``report_name`` beside it; otherwise
    :class:`_Strayed` carries the figures and nothing is kept."""
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
            raise _Strayed(check)  # atomic_path keeps nothing
    full = {**report, "file": str(out), "bytes": out.stat().st_size, "from": str(fp32),
            "bytes_fp32": fp32.stat().st_size, "verified_on": source, **check, "tolerance": tolerance,
            "convert_time_s": round(time.perf_counter() - started, 1)}
    write_json(out.with_name(report_name), full)
    print(f"{flag.lstrip('-')}: verified on {source}: mask agreement {100 * check['mask_agreement']:.3f}%, mask IoU "
          f"{check['mask_iou']:.4f} against float32, {full['bytes'] / 2**20:.1f} MiB ({out.with_name(report_name)})",
          file=sys.stderr)
    return full


def quantize_int8(fp32: Path, out: Path, calibration: list[np.ndarray], check_images: list[np.ndarray],
                  source: str, *, target: str = "auto", settings: list[Int8Setting] | None = None) -> dict:
    """Write ``out`` (atomically) with the first setting of ``target``'s ladder (or of ``settings``)
    whose masks agree with the float32 model's within :data:`INT8_TOLERANCE`, and return its check;
    when none does, raise ``ConfigError`` naming each setting tried and its figures."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "int8 quantisation (onnxruntime.quantization)") from None
    from nailseg.core.io import write_json
    from nailseg.core.runtime import cpu_report

    profile, ladder = int8_ladder(target)  # the ladder, trimmed to what this CPU can verify for the target
    ladder = settings or ladder
    here = cpu_report()

    def writer(setting: Int8Setting):
        def write(reference, tmp: Path) -> None:
            prepared = tmp.with_name(tmp.name + ".pre.onnx")
            try:
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
                quantize_static(str(prepared), str(tmp), _Photos(calibration, reference.input_name, reference.size_hw),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=getattr(QuantType, setting.weight_type),
                                reduce_range=setting.reduce_range, calibrate_method=CalibrationMethod.MinMax,
                                nodes_to_quantize=_network_nodes(prepared), op_types_to_quantize=QUANTIZED_OPS)
            finally:
                prepared.unlink(missing_ok=True)
            _copy_metadata(fp32, tmp, {"type": "int8", **setting.describe(), "target": profile})
        return write

    tried: list[dict] = []
    for setting in ladder:
        try:
            report = _verified_copy(fp32, out, writer(setting), check_images, source, flag="--int8",
                                    tolerance=INT8_TOLERANCE, report_name="export.int8.json", format="onnx-int8",
                                    calibrated_on=f"{len(calibration)} training images of the run",
                                    setting=setting.describe(), target=profile, cpu=here,
                                    tried=tried + [{"setting": setting.name, "verified": True}])
        except _Strayed as strayed:
            tried.append({"setting": setting.name, "verified": False, **strayed.check})
            continue
        if profile == here["profile"]:  # another target's kernels cannot be timed here
            report["speed_vs_fp32"] = _speed_ratio(fp32, out, check_images)
            write_json(out.with_name("export.int8.json"), report)
            if report["speed_vs_fp32"] < SLOWER_THAN_FP32:
                print(f"int8: the {setting.name} copy runs at {report['speed_vs_fp32']:.2f}x the float32 model's speed "
                      f"on this CPU ({profile}): ONNX Runtime has no fast int8 kernel for it here. It is smaller, "
                      "not faster; keep model.onnx (or --half) where speed matters", file=sys.stderr)
        return report
    figures = "; ".join(f"{t['setting']}: mask agreement {t['mask_agreement']:.4f}, mask IoU {t['mask_iou']:.4f}"
                        for t in tried)
    raise ConfigError(f"--int8: no int8 setting for {profile} keeps the float32 model's masks on {source} "
                      f"({figures}; tolerance {INT8_TOLERANCE}); nothing written. A model that has barely learned "
                      "sits near its threshold everywhere: train longer, or keep the float32 (or --half) file")


def _speed_ratio(fp32: Path, int8: Path, images: list[np.ndarray]) -> float:
    """The int8 copy's speed over the float32 model's on ``images`` (each warmed up once): on a CPU
    without VNNI the copy that keeps the masks may be the slower one (u8u8: 0.6x on an AVX2 EPYC)."""
    from nailseg.deploy.onnx_model import OnnxSegmenter

    def seconds(model: Path) -> float:
        predictor = OnnxSegmenter(model)
        predictor(images[0])
        started = time.perf_counter()
        for image in images:
            predictor(image)
        return time.perf_counter() - started

    return round(seconds(fp32) / max(seconds(int8), 1e-9), 3)


def record_int8(export_json: Path, report: dict) -> None:
    """Add the int8 choice (setting, target, CPU flags, figures) to the float32 export's ``export.json``."""
    from nailseg.core.io import write_json

    if export_json.is_file():
        base = json.loads(export_json.read_text())
        base["int8"] = {k: report[k] for k in ("file", "setting", "target", "cpu", "tried", "mask_agreement",
                                                "mask_iou", "bytes")}
        write_json(export_json, base)


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

    try:
        return _verified_copy(fp32, out, write, check_images, source, flag="--half",
                              tolerance=HALF_TOLERANCE, report_name="export.fp16.json", format="onnx-fp16")
    except _Strayed as strayed:
        c = strayed.check
        raise ConfigError(f"--half: the float16 model strays from the float32 one on {source} (mask agreement "
                          f"{c['mask_agreement']:.4f}, mask IoU {c['mask_iou']:.4f}, max |diff| "
                          f"{c['max_abs_diff']:.2e}; tolerance {HALF_TOLERANCE}); nothing written") from None


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
