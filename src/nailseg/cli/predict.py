"""``nailseg predict``: masks and overlays for image files or folders, from a run or an ONNX model."""

from __future__ import annotations

from pathlib import Path

from nailseg.cli.common import output_folder
from nailseg.cli.inference import (add_inference_flags, check_tile_flags, inference_options, is_onnx,
                                   with_score_threshold)
from nailseg.errors import NailsegError


def cmd_predict(args) -> int:
    from nailseg.core.evaluate import collect_inputs, predict_files, predict_instance_files
    from nailseg.engine import has_capability, open_for_inference

    from nailseg.core.outputs import refuse_data_folder, refuse_overwriting_inputs

    check_tile_flags(args)
    out = refuse_data_folder(output_folder(args.out), "--out")
    inputs = collect_inputs(args.inputs)
    # every input counts, not only the images: a_mask.png beside a.jpg is somebody's data
    present = [p for item in args.inputs for p in ([Path(item)] if Path(item).is_file()
                                                      else Path(item).rglob("*") if Path(item).is_dir() else [])]
    refuse_overwriting_inputs([out / f"{name}{suffix}" for name in inputs.names
                               for suffix in ("_mask.png", "_overlay.png")], present, "--out")
    if is_onnx(args.run):
        with_score_threshold(args, None, instances=False)
        from nailseg.deploy.onnx_model import OnnxSegmenter

        from nailseg.core.postprocess import InferenceOptions

        model = OnnxSegmenter(args.run)
        options = inference_options(args, InferenceOptions(threshold=model.threshold), model.size_hw)
        if model.labels is not None:
            from nailseg.core.class_eval import predict_class_files

            result = predict_class_files(model, inputs, out, model.labels, progress=not args.quiet, options=options)
        else:
            result = predict_files(model, inputs, out, progress=not args.quiet, options=options)
        return _report_predictions(result, inputs, out)
    run, exp, stack = open_for_inference(args.run)
    exp = with_score_threshold(args, exp, has_capability(exp, "instances"))
    if has_capability(exp, "instances") and args.tile:
        raise NailsegError("--tile: an instance model's predictions are per-object masks, which do not blend "
                           "across windows; leave --tile out (eval --tile scores the union mask)")
    if has_capability(exp, "instances") and exp.data.label_spec is None:
        result = predict_instance_files(stack.load_instance_predictor(run, exp), inputs, out,
                                        score_threshold=exp.model.score_threshold, progress=not args.quiet)
        for w in result.written:
            print(f"{w['file']}: {w['instances']} instances")
    elif exp.data.label_spec is not None:  # many classes (an instance model's: its instances painted by score)
        from nailseg.core.class_eval import predict_class_files
        from nailseg.core.postprocess import load_run_options

        options = inference_options(args, load_run_options(run.path), exp.data.size_hw)
        result = predict_class_files(stack.load_predictor(run, exp), inputs, out, exp.data.label_spec,
                                     progress=not args.quiet, options=options)
    else:
        from nailseg.core.postprocess import load_run_options

        result = predict_files(stack.load_predictor(run, exp), inputs, out, progress=not args.quiet,
                               options=inference_options(args, load_run_options(run.path), exp.data.size_hw))
    return _report_predictions(result, inputs, out)


def _report_predictions(result, inputs, out) -> int:
    print(f"wrote {len(result.written)} masks and overlays to {out}")
    if result.failed:
        raise NailsegError([*result.failed, f"{len(result.failed)} of {len(inputs.files)} inputs could not be read"])
    return 0


DESCRIPTION = """\
For each image (files or folders, any size and aspect ratio) write OUT/<path>_mask.png (0/255; class
indices in a palette PNG for a many-class run) and OUT/<path>_overlay.png (with a legend of class
names), keeping each input's folders below the folder it was found in. Unreadable files are named at
the end (exit code 2); the others are still predicted.
"""


def add_parser(sub) -> None:
    pr = sub.add_parser("predict", help="write masks and overlays for images",
                        description=DESCRIPTION)
    pr.add_argument("run", help="run folder, or a MODEL.onnx (onnxruntime alone: no torch or TensorFlow needed)")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_flags(pr)
    pr.set_defaults(func=cmd_predict)
