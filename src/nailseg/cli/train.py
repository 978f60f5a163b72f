"""``nailseg train | eval | predict | export``: the run lifecycle, on whichever stack the config names."""

from __future__ import annotations

from pathlib import Path

from nailseg.cli.common import output_file, output_folder
from nailseg.errors import NailsegError
from nailseg.specs import export_formats


def cmd_train(args) -> int:
    from nailseg.config import load_experiment
    from nailseg.runs import choose_run_dir, resume_run
    from nailseg.engine import run_training

    if args.resume:
        if args.config and "=" in args.config:  # argparse puts the first override in `config`
            args.overrides, args.config = [args.config, *args.overrides], None
        if args.config:
            raise NailsegError("--resume takes the run folder; pass overrides as KEY=VALUE only")
        run, exp = resume_run(args.resume, args.overrides)
    else:
        if not args.config:
            raise NailsegError("nailseg train: give a config file (e.g. configs/demo-cpu.yaml) or --resume RUN_DIR")
        exp = load_experiment(args.config, args.overrides)
        run = choose_run_dir(exp, args.config)
    summary = run_training(exp, run, resume=bool(args.resume))
    if summary is None:  # a non-zero DDP rank: rank 0 reports
        return 0
    print(f"val IoU {summary['val_iou']:.4f}  Dice {summary['val_dice']:.4f}  "
          f"({summary['epochs']} epochs, {summary['wall_time_s']:.0f} s, {summary['device']})")
    print(run.path)
    return 0


def is_onnx(target: str) -> bool:
    """A model file exported with ``--format onnx`` rather than a run folder."""
    return str(target).lower().endswith(".onnx")


def _eval_onnx(args, out) -> int:
    """``nailseg eval MODEL.onnx --data DIR``: the shared evaluation on onnxruntime alone."""
    from nailseg.core.data.discover import find_pairs
    from nailseg.core.evaluate import evaluate_pairs
    from nailseg.core.io import write_json
    from nailseg.deploy.onnx_model import OnnxSegmenter

    if not args.data:
        raise NailsegError("nailseg eval MODEL.onnx: give the labelled images with --data DIR (a model file has no split)")
    from nailseg.core.outputs import refuse_data_folder

    overlays = refuse_data_folder(output_folder(args.overlays, "--overlays"), "--overlays", [args.data]) \
        if args.overlays else None
    model = OnnxSegmenter(args.run)
    pairs, _ = find_pairs(args.data)
    if args.choose_threshold:
        raise NailsegError("--choose-threshold needs a run folder (it stores the threshold in the run)")
    from nailseg.core.postprocess import InferenceOptions

    options = _options(args, InferenceOptions(threshold=model.threshold))
    result = evaluate_pairs(model, pairs, progress=not args.quiet, overlays=overlays, options=options)
    result = {"model": str(model.path), "runtime": "onnxruntime", "data": str(args.data), "split": "all", **result}
    out = out or Path(args.run).with_suffix(".eval.json")
    write_json(out, result)
    _print_scores(result)
    print(out)
    return 0


def _print_scores(result: dict) -> None:
    print(f"{'split':10} {'images':>6} {'IoU':>7} {'Dice':>7} {'prec.':>7} {'recall':>7}")
    print(f"{result['split']:10} {result['n_images']:>6} {result['iou']:>7.4f} {result['dice']:>7.4f} "
          f"{result['precision']:>7.4f} {result['recall']:>7.4f}")
    m = result["mean_per_image"]
    print(f"{'per-image mean':17} {m['iou']:>7.4f} {m['dice']:>7.4f} {m['precision']:>7.4f} {m['recall']:>7.4f}")


def _options(args, base):
    """The run's (or model's) stored inference options with this command's flags on top."""
    from nailseg.core.postprocess import with_overrides

    return with_overrides(base, threshold=args.threshold, tta=args.tta, min_area=args.min_area)


def _inference_flags(parser, *, choose: bool = False) -> None:
    parser.add_argument("--tta", choices=["none", "hflip"], help="test-time augmentation: hflip averages the "
                        "prediction with that of the mirrored image (default: the run's, else none)")
    parser.add_argument("--threshold", type=float, help="foreground probability threshold (default: the run's "
                        "stored one, else 0.5)")
    parser.add_argument("--min-area", type=float, metavar="SHARE", help="remove predicted regions smaller than "
                        "this share of the image, e.g. 0.0005 (default: the run's, else 0 = keep all)")
    if choose:
        parser.add_argument("--choose-threshold", action="store_true",
                            help="pick the threshold with the best IoU on these images and store it (with "
                                 "--tta/--min-area) in RUN/inference.json, which eval and predict then use")


def cmd_eval(args) -> int:
    from nailseg.core.data.discover import find_pairs
    from nailseg.core.data.split import load_split
    from nailseg.core.evaluate import choose_threshold, evaluate_pairs
    from nailseg.core.io import write_json
    from nailseg.core.postprocess import INFERENCE_FILE, load_run_options, with_overrides
    from nailseg.engine import has_capability, open_for_inference

    out = output_file(args.out) if args.out else None
    if is_onnx(args.run):
        return _eval_onnx(args, out)
    from nailseg.core.outputs import refuse_data_folder, refuse_overwriting_inputs

    run, exp, stack = open_for_inference(args.run)
    root = args.data or exp.data.root
    overlays = refuse_data_folder(output_folder(args.overlays, "--overlays"), "--overlays", [root]) \
        if args.overlays else None
    if out is not None:
        refuse_data_folder(out, "--out", [root])
    pairs, _ = find_pairs(root)
    if args.split == "all" or args.data:
        chosen = pairs
    else:
        keys = load_split(run.split)[args.split]
        by_key = {p.key: p for p in pairs}
        missing = [k for k in keys if k not in by_key]
        if missing:  # scoring fewer images than the split names would be a silently wrong score
            raise NailsegError([f"{run.split}: '{k}' is in the {args.split} split but not in {root}"
                                for k in missing[:20]])
        chosen = [by_key[k] for k in keys]
    if overlays is not None:
        from nailseg.core.evaluate import overlay_name

        refuse_overwriting_inputs([overlays / overlay_name(p.key) for p in chosen],
                                  [f for p in pairs for f in (p.image, p.mask)], "--overlays")
    predictor = stack.load_predictor(run, exp, args.checkpoint)
    options = _options(args, load_run_options(run.path))
    if args.choose_threshold:
        threshold, tried = choose_threshold(predictor, chosen, options, progress=not args.quiet)
        options = with_overrides(options, threshold=threshold)
        write_json(run.path / INFERENCE_FILE, {**options.as_dict(), "chosen_on": f"{len(chosen)} images "
                                               f"({'data ' + str(root) if args.data else 'split ' + args.split})",
                                               "iou_by_threshold": tried})
        print(f"threshold {threshold:.2f} (pooled IoU {tried[f'{threshold:.2f}']:.4f}) stored in "
              f"{run.path / INFERENCE_FILE}")
    result = evaluate_pairs(predictor, chosen, progress=not args.quiet, overlays=overlays, options=options)
    if has_capability(exp, "instances"):  # instance models: COCO bbox/segm mAP as well
        result = {**stack.evaluate_instances(run, exp, chosen, pairs, args.checkpoint), **result}
    result = {"run": str(run.path), "data": str(root), "split": "all" if args.data else args.split,
              "checkpoint": args.checkpoint, **result}
    out = out or run.eval
    write_json(out, result)
    _print_scores(result)
    if "segm_mAP" in result:
        print(f"COCO mAP  segm {result['segm_mAP']:.4f} (@50 {result['segm_mAP_50']:.4f}, @75 {result['segm_mAP_75']:.4f})"
              f"  bbox {result['bbox_mAP']:.4f} (@50 {result['bbox_mAP_50']:.4f}, @75 {result['bbox_mAP_75']:.4f})")
    print(out)
    return 0


def cmd_predict(args) -> int:
    from nailseg.core.evaluate import collect_inputs, predict_files, predict_instance_files
    from nailseg.engine import has_capability, open_for_inference

    from nailseg.core.outputs import refuse_data_folder, refuse_overwriting_inputs

    out = refuse_data_folder(output_folder(args.out), "--out")
    inputs = collect_inputs(args.inputs)
    # every input counts, not only the images: a_mask.png beside a.jpg is somebody's data
    present = [p for item in args.inputs for p in ([Path(item)] if Path(item).is_file()
                                                      else Path(item).rglob("*") if Path(item).is_dir() else [])]
    refuse_overwriting_inputs([out / f"{name}{suffix}" for name in inputs.names
                               for suffix in ("_mask.png", "_overlay.png")], present, "--out")
    if is_onnx(args.run):
        from nailseg.deploy.onnx_model import OnnxSegmenter

        from nailseg.core.postprocess import InferenceOptions

        model = OnnxSegmenter(args.run)
        result = predict_files(model, inputs, out, progress=not args.quiet,
                               options=_options(args, InferenceOptions(threshold=model.threshold)))
        return _report_predictions(result, inputs, out)
    run, exp, stack = open_for_inference(args.run)
    if has_capability(exp, "instances"):
        result = predict_instance_files(stack.load_instance_predictor(run, exp), inputs, out, progress=not args.quiet)
        for w in result.written:
            print(f"{w['file']}: {w['instances']} instances")
    else:
        from nailseg.core.postprocess import load_run_options

        result = predict_files(stack.load_predictor(run, exp), inputs, out, progress=not args.quiet,
                               options=_options(args, load_run_options(run.path)))
    return _report_predictions(result, inputs, out)


def _report_predictions(result, inputs, out) -> int:
    print(f"wrote {len(result.written)} masks and overlays to {out}")
    if result.failed:
        raise NailsegError([*result.failed, f"{len(result.failed)} of {len(inputs.files)} inputs could not be read"])
    return 0


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


def add_parser(sub) -> None:
    train = sub.add_parser(
        "train", help="train a model from an experiment config",
        description="Train from a YAML experiment config with dotted overrides, e.g. "
                    "'nailseg train configs/demo-cpu.yaml trainer.max_epochs=3 model.encoder=resnet18'. "
                    "The config and the data are checked first (nothing is written for a refused run); the run "
                    "folder (config.yaml, split.json, checkpoints, metrics.jsonl, TensorBoard events, "
                    "summary.json, predictions/) is printed last. One process at a time may train a run folder.",
    )
    train.add_argument("config", nargs="?", help="experiment YAML (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a killed or finished run from its last checkpoint (overrides that change "
                            "the model are refused)")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="score a run at each image's original resolution",
                        description="Compute IoU, Dice, precision and recall per image and over the set "
                                    "(pixels summed over all images), at each image's original size; "
                                    "writes eval.json into the run folder.")
    ev.add_argument("run", help="run folder, or a MODEL.onnx from `nailseg export --format onnx` (needs --data; "
                                "runs on onnxruntime alone)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which part of the run's split to score (default: test)")
    ev.add_argument("--data", help="score every pair of another data folder instead")
    ev.add_argument("--out", help="where to write the JSON (default: RUN/eval.json)")
    ev.add_argument("--checkpoint", choices=["best", "last"], default="best",
                    help="best (default; falls back to last) or last")
    _inference_flags(ev, choose=True)
    ev.add_argument("--overlays", metavar="DIR",
                    help="write one picture per image: true positives green, false positives red, false "
                         "negatives blue, the image's IoU in a corner")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="write masks and overlays for images",
                        description="For each image (files or folders, any size and aspect ratio) write "
                                    "OUT/<path>_mask.png (0/255) and OUT/<path>_overlay.png, keeping each "
                                    "input's folders below the folder it was found in. Unreadable files are "
                                    "named at the end (exit code 2); the others are still predicted.")
    pr.add_argument("run", help="run folder, or a MODEL.onnx (onnxruntime alone: no torch or TensorFlow needed)")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    _inference_flags(pr)
    pr.set_defaults(func=cmd_predict)

    exp_ = sub.add_parser("export", help="write a run's model for use without nailseg",
                          description="hf: a transformers save_pretrained folder (UperNet and SegFormer runs; default RUN/hf). "
                                      "state_dict: a plain PyTorch state dict, loadable with weights_only=True "
                                      "(default RUN/model.pt). savedmodel: a TensorFlow SavedModel folder (Keras "
                                      "runs; default RUN/savedmodel). keras: a .keras file (default RUN/model.keras). "
                                      "onnx: uint8 RGB in, probability out, resize, normalisation and sigmoid inside "
                                      "(Lightning runs; default RUN/model.onnx), verified against the torch model "
                                      "on the run's validation images into export.json; the graph resizes a photo of "
                                      "any size to the training size and the probability back, so any ONNX consumer "
                                      "gets nailseg predict's answer. --int8 adds model.int8.onnx (ONNX Runtime static "
                                      "quantisation, calibrated on the run's training images, refused when its masks "
                                      "stray from the float32 model's: the settings suit the target CPU (--int8-target) "
                                      "and safer ones are tried before a refusal; figures in export.int8.json). tflite: a "
                                      "TensorFlow Lite file (Keras runs; default RUN/model.tflite), verified the same way.")
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
