"""``nailseg eval``: score a run (or an exported ONNX model) at each image's original size."""

from __future__ import annotations

from pathlib import Path

from nailseg.cli.common import output_file, output_folder
from nailseg.cli.inference import (add_inference_flags, check_tile_flags, inference_options, is_onnx,
                                   with_score_threshold)
from nailseg.errors import NailsegError


def _eval_onnx(args, out) -> int:
    """``nailseg eval MODEL.onnx --data DIR``: the shared evaluation on onnxruntime alone."""
    from nailseg.core.data.discover import find_pairs
    from nailseg.core.evaluate import evaluate_pairs
    from nailseg.core.io import write_json
    from nailseg.deploy.onnx_model import OnnxSegmenter

    with_score_threshold(args, None, instances=False)
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

    options = inference_options(args, InferenceOptions(threshold=model.threshold), model.size_hw)
    if model.labels is not None:  # a many-class export: its class names come with it
        from nailseg.core.class_eval import evaluate_classes

        result = evaluate_classes(model, pairs, model.labels, progress=not args.quiet, overlays=overlays,
                                  options=options)
    else:
        result = evaluate_pairs(model, pairs, progress=not args.quiet, overlays=overlays, options=options)
    result = {"model": str(model.path), "runtime": "onnxruntime", "data": str(args.data), "split": "all", **result}
    out = out or Path(args.run).with_suffix(".eval.json")
    write_json(out, result)
    _print_scores(result)
    print(out)
    return 0


def _print_scores(result: dict) -> None:
    if "miou" in result:
        _print_class_scores(result)
        return
    print(f"{'split':10} {'images':>6} {'IoU':>7} {'Dice':>7} {'prec.':>7} {'recall':>7}")
    print(f"{result['split']:10} {result['n_images']:>6} {result['iou']:>7.4f} {result['dice']:>7.4f} "
          f"{result['precision']:>7.4f} {result['recall']:>7.4f}")
    m = result["mean_per_image"]
    print(f"{'per-image mean':17} {m['iou']:>7.4f} {m['dice']:>7.4f} {m['precision']:>7.4f} {m['recall']:>7.4f}")


def cmd_eval(args) -> int:
    from nailseg.core.data.discover import find_pairs
    from nailseg.core.data.split import load_split
    from nailseg.core.evaluate import choose_threshold, evaluate_pairs
    from nailseg.core.io import write_json
    from nailseg.core.postprocess import INFERENCE_FILE, load_run_options, with_overrides
    from nailseg.engine import has_capability, open_for_inference

    check_tile_flags(args)
    out = output_file(args.out) if args.out else None
    if is_onnx(args.run):
        return _eval_onnx(args, out)
    from nailseg.core.outputs import refuse_data_folder, refuse_overwriting_inputs

    run, exp, stack = open_for_inference(args.run)
    exp = with_score_threshold(args, exp, has_capability(exp, "instances"))
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
    options = inference_options(args, load_run_options(run.path), exp.data.size_hw)
    labels = exp.data.label_spec
    if labels is not None:  # many classes: per-class IoU/Dice, mIoU, pixel accuracy, confusion matrix
        return _eval_classes(args, run, exp, predictor, chosen, root, options, out or run.eval, overlays)
    if args.choose_threshold:
        threshold, tried = choose_threshold(predictor, chosen, options, progress=not args.quiet)
        options = with_overrides(options, threshold=threshold)
        write_json(run.path / INFERENCE_FILE, {**options.as_dict(), "chosen_on": f"{len(chosen)} images "
                                               f"({'data ' + str(root) if args.data else 'split ' + args.split})",
                                               "iou_by_threshold": tried})
        print(f"threshold {threshold:.2f} (pooled IoU {tried[f'{threshold:.2f}']:.4f}) stored in "
              f"{run.path / INFERENCE_FILE}")
    result = evaluate_pairs(predictor, chosen, progress=not args.quiet, overlays=overlays, options=options)
    if has_capability(exp, "instances"):  # instance models: COCO bbox/segm mAP as well, and the union's cut
        result = {**stack.evaluate_instances(run, exp, chosen, pairs, args.checkpoint), **result,
                  "score_threshold": exp.model.score_threshold}
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


def _eval_classes(args, run, exp, predictor, chosen, root, options, out: Path, overlays) -> int:
    from nailseg.core.class_eval import evaluate_classes
    from nailseg.core.io import write_json

    if args.choose_threshold:
        raise NailsegError("--choose-threshold: a many-class model takes each pixel's most probable class; "
                           "there is no threshold to choose")
    confusion = out.with_name(out.stem + "_confusion.png")
    result = evaluate_classes(predictor, chosen, exp.data.label_spec, progress=not args.quiet, overlays=overlays,
                              options=options, confusion_png=confusion)
    result = {"run": str(run.path), "data": str(root), "split": "all" if args.data else args.split,
              "checkpoint": args.checkpoint, "confusion_png": str(confusion), **result}
    write_json(out, result)
    _print_class_scores(result)
    print(out)
    return 0


def _print_class_scores(result: dict) -> None:
    width = max(len(n) for n in result["classes"])
    print(f"{'class':{width}} {'IoU':>7} {'Dice':>7}")
    for name in result["classes"]:
        iou, dice = result["per_class_iou"][name], result["per_class_dice"][name]
        print(f"{name:{width}} {'-' if iou is None else f'{iou:.4f}':>7} {'-' if dice is None else f'{dice:.4f}':>7}")
    print(f"{result['split']}: {result['n_images']} images, mIoU {result['miou']:.4f} over "
          f"{result['classes_scored']} classes present, mDice {result['mdice']:.4f}, "
          f"pixel accuracy {result['pixel_accuracy']:.4f}")


DESCRIPTION = """\
Compute IoU, Dice, precision and recall per image and over the set (pixels summed over all images),
at each image's original size; writes eval.json into the run folder. A many-class run (data.classes)
gets per-class IoU and Dice, mIoU over the classes present, pixel accuracy and a confusion matrix
PNG (eval_confusion.png beside the JSON).
"""


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="score a run at each image's original resolution",
                        description=DESCRIPTION)
    ev.add_argument("run", help="run folder, or a MODEL.onnx from `nailseg export --format onnx` (needs --data; "
                                "runs on onnxruntime alone)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which part of the run's split to score (default: test)")
    ev.add_argument("--data", help="score every pair of another data folder instead")
    ev.add_argument("--out", help="where to write the JSON (default: RUN/eval.json)")
    ev.add_argument("--checkpoint", choices=["best", "last"], default="best",
                    help="best (default; falls back to last) or last")
    add_inference_flags(ev, choose=True)
    ev.add_argument("--overlays", metavar="DIR",
                    help="write one picture per image: true positives green, false positives red, false "
                         "negatives blue, the image's IoU in a corner")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)
