"""``nailseg export``: a run's model in a format that runs without nailseg (ONNX, TFLite, hf, ...)."""

from __future__ import annotations

from pathlib import Path

from nailseg.errors import NailsegError
from nailseg.specs import export_formats


def cmd_export(args) -> int:
    from nailseg.engine import open_for_inference

    run, exp, stack = open_for_inference(args.run)
    out = None
    if args.out:
        out = Path(args.out)
        writes_folder = args.format in stack.spec.folder_exports
        if out.exists() and out.is_dir() != writes_folder:
            raise NailsegError(f"--out {args.out}: exists and is a {'folder' if out.is_dir() else 'file'}; "
                               f"--format {args.format} writes a {'folder' if writes_folder else 'file'}")
    if args.int8_target and not args.int8:
        raise NailsegError("--int8-target: only with --int8")
    used = [flag for flag, value in (("--opset", args.opset), ("--int8", args.int8), ("--half", args.half)) if value]
    if used and args.format != "onnx":
        raise NailsegError(f"{' and '.join(used)}: only with --format onnx")
    if args.format == "onnx" and "onnx" in stack.spec.exports:
        int8 = (args.int8_target or "auto") if args.int8 else None
        print(stack.export(run, exp, args.format, out, opset=args.opset, int8=int8, half=args.half))
    else:  # the stack refuses a format it cannot write, in its own words
        print(stack.export(run, exp, args.format, out))
    return 0


DESCRIPTION = """\
hf: a transformers save_pretrained folder (UperNet and SegFormer runs; default RUN/hf). state_dict:
a plain PyTorch state dict, loadable with weights_only=True (default RUN/model.pt). savedmodel: a
TensorFlow SavedModel folder (Keras runs; default RUN/savedmodel). keras: a .keras file (default
RUN/model.keras). onnx: uint8 RGB in, probability out, resize, normalisation and sigmoid inside
(Lightning runs; default RUN/model.onnx), verified against the torch model on the run's validation
images into export.json; the graph resizes a photo of any size to the training size and the
probability back, so any ONNX consumer gets nailseg predict's answer. --int8 adds model.int8.onnx
(ONNX Runtime static quantisation, calibrated on the run's training images, refused when its masks
stray from the float32 model's: the settings suit the target CPU (--int8-target) and safer ones are
tried before a refusal; figures in export.int8.json). tflite: a TensorFlow Lite file (Keras runs;
default RUN/model.tflite), verified the same way.
"""


def add_parser(sub) -> None:
    exp_ = sub.add_parser("export", help="write a run's model for use without nailseg",
                          description=DESCRIPTION)
    exp_.add_argument("run", help="run folder")
    exp_.add_argument("--format", required=True, choices=export_formats(),
                      help="hf / state_dict / onnx (Lightning runs), savedmodel / keras / tflite (Keras runs), "
                           "state_dict (mmdet)")
    exp_.add_argument("--out", help="output path")
    exp_.add_argument("--opset", type=int, help="ONNX opset (default: 18; 17 for older runtimes)")
    exp_.add_argument("--int8", action="store_true",
                      help="also write MODEL.int8.onnx: static int8 quantisation (QDQ, per-channel weights), verified; "
                           "the settings suit the target CPU, and safer ones are tried before a refusal")
    from nailseg.core.runtime import CPU_PROFILES

    exp_.add_argument("--int8-target", choices=("auto", *CPU_PROFILES), default=None,
                      help="the CPU the int8 model will run on (default auto: this machine's, see nailseg doctor): "
                           "amx and avx512-vnni try full-range int8 weights first; avx2 (no VNNI) tries 7-bit "
                           "weights first, which its int16 sums cannot saturate")
    exp_.add_argument("--half", action="store_true",
                      help="also write MODEL.fp16.onnx: float16 weights and activations (half the file; uint8 in, "
                           "float32 out as before), verified against float32 into export.fp16.json")
    exp_.set_defaults(func=cmd_export)
