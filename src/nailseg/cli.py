"""``nailseg``: one command line over data tools, training, evaluation and prediction.

The CLI is thin: it parses arguments, loads the config, calls one function and prints.
Frameworks are imported inside the command that needs them, so ``nailseg --help`` and
``nailseg data ...`` never import torch or TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nailseg import __version__
from nailseg.data.decode import MASK_RULE
from nailseg.errors import NailsegError

EPILOG = """\
examples:
  nailseg data synth data/synth --n 200
  nailseg data check data/synth
  nailseg train configs/demo-cpu.yaml trainer.max_epochs=3
  nailseg eval runs/RUN --split test
  nailseg predict runs/RUN photos/ --out predictions/
  nailseg bench loaders --data data/synth --size 384 --batch 64
"""


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# ---- data -------------------------------------------------------------------------------------

def cmd_data_synth(args) -> int:
    from nailseg.data.synth import SynthConfig, parse_size, synthesize

    width, height = parse_size(args.size)
    out = synthesize(args.out, SynthConfig(n=args.n, seed=args.seed, width=width, height=height),
                     progress=not args.quiet)
    print(f"wrote {args.n} pairs ({width}x{height}) to {out}")
    return 0


def cmd_data_check(args) -> int:
    from nailseg.data.check import check_dataset

    report = check_dataset(args.root, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_json() if args.per_pair else report.summary(), indent=2))
    else:
        s = report.summary()
        print(f"data folder:  {s['root']}")
        print(f"pairs:        {s['pairs']} ({s['valid_pairs']} valid)")
        for key, label, unit in (("width", "width", " px"), ("height", "height", " px"),
                                 ("fg_share", "foreground", "")):
            if s[key]:
                v = s[key]
                fmt = (lambda x: f"{x:.1%}") if key == "fg_share" else (lambda x: f"{x:.0f}{unit}")
                print(f"{label + ':':13} min {fmt(v['min'])}  median {fmt(v['median'])}  max {fmt(v['max'])}")
        print(f"problems:     {len(report.problems)}")
    for line in report.problems:
        print(f"error: {line}", file=sys.stderr)
    return 2 if report.problems else 0


def _parse_weights(text: str | None):
    if text is None or text in ("equal", "inverse", "sqrt_inverse"):
        return text
    weights = {}
    for item in text.split(","):
        group, sep, value = item.rpartition("=")
        try:
            weights[group.strip()] = float(value)
        except ValueError:
            group = ""
        if not sep or not group.strip():
            raise NailsegError(f"--weights {text!r}: use equal, inverse, sqrt_inverse or GROUP=W,GROUP=W")
    return weights


def cmd_data_balance(args) -> int:
    from nailseg.data.balance import balance_table, make_grouping, plot_balance
    from nailseg.data.check import check_dataset
    from nailseg.data.split import make_split
    from nailseg.experiment import BalanceConfig, load_experiment

    source = Path(args.source)
    if source.is_file():  # an experiment config: its data, its balance settings, its train split
        exp = load_experiment(source)
        root, cfg, seed = exp.data.root, exp.data.balance or BalanceConfig(), exp.trainer.seed
        fractions = (exp.data.split.val, exp.data.split.test, exp.data.seed)
    else:
        root, cfg, seed, fractions = source, BalanceConfig(), args.seed, None
    flags = {"by": args.by, "bins": args.bins, "binning": args.binning, "csv": args.csv, "column": args.column,
             "weights": _parse_weights(args.weights), "epoch_size": args.epoch_size}
    updates = {k: v for k, v in flags.items() if v is not None}
    cfg = BalanceConfig.model_validate({**cfg.model_dump(), **updates})
    report = check_dataset(root, progress=not args.json)
    report.raise_if_problems()
    fg_share = {s.key: s.fg_share for s in report.stats}
    keys = sorted(fg_share)
    if fractions is not None:
        keys = make_split(keys, *fractions)["train"]
    grouping = make_grouping(keys, cfg, fg_share)
    epoch_size = cfg.epoch_size or len(keys)
    rows = balance_table(grouping, epoch_size, seed, epochs=10)
    out = Path(args.out)
    plot_balance(rows, out, f"{root}: by {cfg.by}, weights {cfg.weights if isinstance(cfg.weights, str) else 'custom'}")
    if args.json:
        print(json.dumps({"root": str(root), "by": cfg.by, "weights": cfg.weights, "epoch_size": epoch_size,
                          "simulated_epochs": 10, "groups": rows, "plot": str(out)}, indent=2))
        return 0
    print(f"{'group':24} {'files':>6} {'data':>7} {'target':>7} {'observed':>9}")
    for r in rows:
        print(f"{r['group']:24} {r['files']:>6} {r['data_share']:>7.1%} {r['target_share']:>7.1%} "
              f"{r['observed_share']:>9.1%}")
    print(f"(observed: 10 simulated epochs of {epoch_size} draws; chart: {out})")
    return 0


def cmd_data_coco(args) -> int:
    from nailseg.data.coco import image_ids, to_coco, write_coco
    from nailseg.data.discover import find_pairs
    from nailseg.data.split import load_split

    pairs, _ = find_pairs(args.root)
    ids = image_ids(pairs)
    out = Path(args.out)
    if args.split:
        split = load_split(args.split)
        by_key = {p.key: p for p in pairs}
        missing = [k for part in split.values() for k in part if k not in by_key]
        if missing:
            raise NailsegError([f"{args.split}: '{k}' is not in {args.root}" for k in missing[:20]])
        targets = {name: [by_key[k] for k in keys] for name, keys in split.items()}
    else:
        targets = {None: pairs}
    for name, chosen in targets.items():
        coco, report = to_coco(chosen, ids, min_area=args.min_area, fmt=args.format, progress=not args.quiet)
        path = out.with_name(f"{out.stem}_{name}{out.suffix}") if name else out
        write_coco(path, coco)
        print(f"{path}: {report.images} images, {report.instances} instances, "
              f"{report.dropped_small} regions below {args.min_area} px dropped, {report.with_holes} with holes")
    return 0


# ---- training and inference --------------------------------------------------------------------

def cmd_train(args) -> int:
    from nailseg.backends import get_backend
    from nailseg.experiment import load_experiment
    from nailseg.runs import new_run, resume_run

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
        run = new_run(exp, args.config)
    backend = get_backend(exp.backend)
    summary = backend.train(exp, run, resume=bool(args.resume))
    if summary is None:  # a non-zero DDP rank: rank 0 reports
        return 0
    print(f"val IoU {summary['val_iou']:.4f}  Dice {summary['val_dice']:.4f}  "
          f"({summary['epochs']} epochs, {summary['wall_time_s']:.0f} s, {summary['device']})")
    print(run.path)
    return 0


def _run_and_predictor(run_dir: str):
    from nailseg.backends import get_backend
    from nailseg.runs import open_run

    run, exp = open_run(run_dir)
    backend = get_backend(exp.backend)
    return run, exp, backend.load_predictor(run, exp)


def cmd_eval(args) -> int:
    from nailseg.backends import get_backend
    from nailseg.data.discover import find_pairs
    from nailseg.data.split import load_split
    from nailseg.evaluate import evaluate_pairs
    from nailseg.io import write_json

    run, exp, predictor = _run_and_predictor(args.run)
    root = args.data or exp.data.root
    pairs, _ = find_pairs(root)
    if args.split == "all" or args.data:
        chosen = pairs
    else:
        keys = set(load_split(run.split)[args.split])
        chosen = [p for p in pairs if p.key in keys]
    result = evaluate_pairs(predictor, chosen, progress=not args.quiet)
    backend = get_backend(exp.backend)
    if hasattr(backend, "evaluate_instances"):  # instance models: COCO bbox/segm mAP as well
        result = {**backend.evaluate_instances(run, exp, chosen, pairs), **result}
    result = {"run": str(run.path), "data": str(root), "split": "all" if args.data else args.split,
              "checkpoint": str(run.inference_checkpoint()), **result}
    out = Path(args.out) if args.out else run.eval
    write_json(out, result)
    print(f"{'split':10} {'images':>6} {'IoU':>7} {'Dice':>7} {'prec.':>7} {'recall':>7}")
    print(f"{result['split']:10} {result['n_images']:>6} {result['iou']:>7.4f} {result['dice']:>7.4f} "
          f"{result['precision']:>7.4f} {result['recall']:>7.4f}")
    m = result["mean_per_image"]
    print(f"{'per-image mean':17} {m['iou']:>7.4f} {m['dice']:>7.4f} {m['precision']:>7.4f} {m['recall']:>7.4f}")
    if "segm_mAP" in result:
        print(f"COCO mAP  segm {result['segm_mAP']:.4f} (@50 {result['segm_mAP_50']:.4f}, @75 {result['segm_mAP_75']:.4f})"
              f"  bbox {result['bbox_mAP']:.4f} (@50 {result['bbox_mAP_50']:.4f}, @75 {result['bbox_mAP_75']:.4f})")
    print(out)
    return 0


def cmd_predict(args) -> int:
    from nailseg.backends import get_backend
    from nailseg.evaluate import collect_inputs, predict_files, predict_instance_files
    from nailseg.runs import open_run

    files = collect_inputs(args.inputs)
    run, exp = open_run(args.run)
    backend = get_backend(exp.backend)
    if hasattr(backend, "load_instance_predictor"):
        written = predict_instance_files(backend.load_instance_predictor(run, exp), files, args.out,
                                         progress=not args.quiet)
        for w in written:
            print(f"{w['file']}: {w['instances']} instances")
    else:
        written = predict_files(backend.load_predictor(run, exp), files, args.out, progress=not args.quiet)
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    return 0


def cmd_export(args) -> int:
    from nailseg.backends import get_backend
    from nailseg.runs import open_run

    run, exp = open_run(args.run)
    out = get_backend(exp.backend).export(run, exp, args.format, Path(args.out) if args.out else None)
    print(out)
    return 0


def _choices(text: str, allowed, flag: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown:
        raise NailsegError(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def _print_rates(results: list[dict], label: str, paths) -> None:
    print(f"{label:16} {'images/s':>10} {'min':>9} {'max':>9}")
    for r in results:
        print(f"{r['pipeline']:16} {r['images_per_s']:>10.1f} {r['images_per_s_min']:>9.1f} {r['images_per_s_max']:>9.1f}")
    print(*paths, sep="\n")


def cmd_bench_loaders(args) -> int:
    from nailseg.backends import get_backend
    from nailseg.experiment import load_experiment

    get_backend("lightning")  # torch is needed to deliver batches on the device
    from nailseg.bench.loaders import PIPELINES, bench_loaders
    from nailseg.bench.report import write_report

    overrides = [f"data.root={args.data}", f"data.image_size={args.size}", f"trainer.batch_size={args.batch}"]
    exp = load_experiment(args.config, overrides)
    pipelines = _choices(args.pipelines, PIPELINES, "--pipelines")
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    results = bench_loaders(exp, pipelines, workers=workers, batches=args.batches, repeats=args.repeats)
    paths = write_report(args.out, results, title=f"input pipelines: {exp.data.size_hw[0]} px, batch "
                         f"{exp.trainer.batch_size}, {workers} CPU threads, {results[0]['device']}")
    _print_rates(results, "pipeline", paths)
    return 0


def cmd_bench_tfdata(args) -> int:
    from nailseg.backends import get_backend
    from nailseg.experiment import load_experiment

    get_backend("keras")
    from nailseg.bench.report import write_report
    from nailseg.bench.tfdata import ENGINES, bench_tfdata

    exp = load_experiment(args.config, [f"data.root={args.data}", f"data.image_size={args.size}",
                                        f"trainer.batch_size={args.batch}"])
    engines = _choices(args.engines, ENGINES, "--engines")
    results = bench_tfdata(exp, engines, batches=args.batches, repeats=args.repeats)
    paths = write_report(args.out, results, title=f"tf.data engines: {exp.data.size_hw[0]} px, batch "
                         f"{exp.trainer.batch_size}, CPU")
    _print_rates(results, "engine", paths)
    return 0


def cmd_bench_train(args) -> int:
    from nailseg.backends import get_backend
    from nailseg.experiment import load_experiment

    exp = load_experiment(args.config, args.overrides)
    get_backend(exp.backend)
    from nailseg.bench.report import write_report
    from nailseg.bench.train import bench_train

    precisions = _choices(args.precision, ("32", "32-true", "bf16-mixed", "16-mixed"), "--precision")
    results = bench_train(exp, precisions, batches=args.batches, repeats=args.repeats)
    paths = write_report(args.out, results, title=f"training images/s: {results[0]['model']}, "
                         f"{exp.data.size_hw[0]} px, batch {exp.trainer.batch_size}, {results[0]['device']}")
    print(f"{'what':42} {'precision':>10} {'images/s':>9} {'of limit':>9}")
    for r in results:
        share = f"{r['percent_of_limit']:.0f}%" if "percent_of_limit" in r else ""
        print(f"{r['pipeline']:42} {r['precision']:>10} {r['images_per_s']:>9.1f} {share:>9}")
    print(*paths, sep="\n")
    return 0


# ---- parser ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nailseg",
        description="Train, evaluate and compare segmentation models for photographs of hands and nails "
                    "(or any folder of images/ + labels/ or masks/).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nailseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="make, check and inspect data folders",
                          description="Tools for data folders: ROOT/images/ + ROOT/labels/ (or masks/).")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    synth = dsub.add_parser("synth", help="draw a procedural nails-like data set (Kaggle layout)",
                            description="Draw hands and fingers with nails of varied shape, colour and count over "
                                        "cluttered backgrounds; writes OUT/images/*.jpg and OUT/labels/*.png.")
    synth.add_argument("out", help="output folder (new or empty)")
    synth.add_argument("--n", type=int, default=200, help="number of pairs (default: 200)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--size", default="384x288", help="WIDTHxHEIGHT of each picture (default: 384x288)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=cmd_data_synth)

    check = dsub.add_parser(
        "check", help="find the pairs in a data folder and report sizes, foreground share and problems",
        description="Decode every image and mask once and report what is there and every problem, one "
                    "line each (exit code 2 when there is any). Layouts: ROOT/images + ROOT/labels or "
                    "ROOT/masks, or the same one folder down (the Kaggle archive's nested "
                    "nails_segmentation/). Images: JPEG/PNG/BMP/TIFF/WebP, RGB, RGBA or grayscale.\n\n"
                    "Mask rule: " + MASK_RULE,
    )
    check.add_argument("root", help="data folder")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--per-pair", action="store_true", help="with --json: include every pair's stats")
    check.set_defaults(func=cmd_data_check)

    bal = dsub.add_parser(
        "balance", help="show how balanced sampling would draw groups of images",
        description="Group the images (by foreground-share bins, first sub-folder under images/, "
                    "or a CSV column), then print each group's files, share of the data, target share and "
                    "the share observed in a simulated draw of 10 epochs; also writes a bar chart PNG. "
                    "SOURCE is a data folder (all pairs) or an experiment config (its train split and "
                    "data.balance settings; flags override them).")
    bal.add_argument("source", help="data folder or experiment YAML")
    bal.add_argument("--by", choices=["fg_bins", "folder", "csv"], help="grouping key (default: fg_bins)")
    bal.add_argument("--bins", type=int, help="fg_bins: number of bins (default: 4)")
    bal.add_argument("--binning", choices=["log", "uniform", "quantile"],
                     help="fg_bins: log-spaced (default), equal-width or equal-count bins")
    bal.add_argument("--csv", help="csv: file with one row per image")
    bal.add_argument("--column", help="csv: column that names the group")
    bal.add_argument("--weights", help="equal | inverse | sqrt_inverse | GROUP=W,GROUP=W (default: equal)")
    bal.add_argument("--epoch-size", type=int, help="samples per epoch (default: number of images)")
    bal.add_argument("--seed", type=int, default=42, help="seed of the simulated draw (default: 42)")
    bal.add_argument("--out", default="balance.png", help="bar chart PNG (default: balance.png)")
    bal.add_argument("--json", action="store_true", help="print the table as JSON")
    bal.set_defaults(func=cmd_data_balance)

    coco = dsub.add_parser(
        "coco", help="turn binary masks into COCO instance annotations (one per connected nail region)",
        description="Each 4-connected foreground region of a mask becomes one 'nail' instance, with its exact "
                    "RLE (holes stay holes; --format polygon writes polygons, RLE for regions with holes), "
                    "bounding box and area. Image ids are stable (sorted file names of the whole folder). "
                    "With --split, writes OUT_train.json, OUT_val.json and OUT_test.json.")
    coco.add_argument("root", help="data folder")
    coco.add_argument("--out", required=True, help="output JSON (e.g. coco.json)")
    coco.add_argument("--split", help="a run's split.json: write one file per split")
    coco.add_argument("--min-area", type=int, default=4, help="drop regions smaller than this (pixels, default: 4)")
    coco.add_argument("--format", choices=["rle", "polygon"], default="rle", help="segmentation format (default: rle)")
    coco.add_argument("--quiet", action="store_true", help="no progress bar")
    coco.set_defaults(func=cmd_data_coco)

    train = sub.add_parser(
        "train", help="train a model from an experiment config",
        description="Train from a YAML experiment config with dotted overrides, e.g. "
                    "'nailseg train configs/demo-cpu.yaml trainer.max_epochs=3 model.encoder=resnet18'. "
                    "The data is checked first; the run folder (config.yaml, split.json, checkpoints, "
                    "metrics.jsonl, TensorBoard events, summary.json, predictions/) is printed last.",
    )
    train.add_argument("config", nargs="?", help="experiment YAML (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or finished run from its last checkpoint")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="score a run at each image's original resolution",
                        description="Compute IoU, Dice, precision and recall per image and over the set "
                                    "(pixels summed over all images), at each image's original size; "
                                    "writes eval.json into the run folder.")
    ev.add_argument("run", help="run folder")
    ev.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which part of the run's split to score (default: test)")
    ev.add_argument("--data", help="score every pair of another data folder instead")
    ev.add_argument("--out", help="where to write the JSON (default: RUN/eval.json)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="write masks and overlays for images",
                        description="For each image (files or folders, any size and aspect ratio) write "
                                    "OUT/<name>_mask.png (0/255) and OUT/<name>_overlay.png.")
    pr.add_argument("run", help="run folder")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)
    bench = sub.add_parser("bench", help="measure input pipelines and training throughput (JSON + PNG)",
                           description="Benchmarks write bench.json (a list of results, each with the method) "
                                       "and bench.png (bars with the min-max spread over repeats) into --out.")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)
    bl = bsub.add_parser("loaders", help="time input pipelines, batches delivered on the device",
                         description="Time each pipeline (cpu: DataLoader + albumentations; kornia: DataLoader "
                                     "decode + resize, kornia on the device; dali: NVIDIA DALI) in one run, "
                                     "with the augmentation spec of --config (default: the built-in spec).")
    bl.add_argument("--data", required=True, help="data folder")
    bl.add_argument("--config", help="experiment YAML whose augment.train is used")
    bl.add_argument("--size", type=int, default=384, help="image side in pixels (default: 384)")
    bl.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    bl.add_argument("--workers", type=int, help="CPU threads / DataLoader workers (default: cores - 1)")
    bl.add_argument("--pipelines", default="cpu,kornia,dali", help="comma-separated (default: cpu,kornia,dali)")
    bl.add_argument("--batches", type=int, default=20, help="timed batches per repeat (default: 20)")
    bl.add_argument("--repeats", type=int, default=3, help="timed repeats (default: 3)")
    bl.add_argument("--out", default="bench/loaders", help="output folder (default: bench/loaders)")
    bl.set_defaults(func=cmd_bench_loaders)
    btf = bsub.add_parser("tfdata", help="time the Keras tf.data pipeline's augmentation engines",
                          description="Time tf.data batches with albumentations (tf.numpy_function), with the "
                                      "tf.image engine, and with decode + resize only (needs nailseg[tf]).")
    btf.add_argument("--data", required=True, help="data folder")
    btf.add_argument("--config", help="experiment YAML whose augment.train is used")
    btf.add_argument("--size", type=int, default=384, help="image side in pixels (default: 384)")
    btf.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    btf.add_argument("--engines", default="decode-only,albumentations,tf", help="comma-separated")
    btf.add_argument("--batches", type=int, default=10, help="timed batches per repeat (default: 10)")
    btf.add_argument("--repeats", type=int, default=3, help="timed repeats (default: 3)")
    btf.add_argument("--out", default="bench/tfdata", help="output folder (default: bench/tfdata)")
    btf.set_defaults(func=cmd_bench_tfdata)
    bt = bsub.add_parser("train", help="training images/s with the configured loader vs the model's limit",
                         description="For each precision: training steps fed by the configured loader, and the "
                                     "same steps on one batch already in device memory (the model's limit); "
                                     "prints the loader's share of the limit.")
    bt.add_argument("config", help="experiment YAML")
    bt.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    bt.add_argument("--precision", default="32-true", help="comma-separated: 32-true, bf16-mixed, 16-mixed")
    bt.add_argument("--batches", type=int, default=10, help="timed steps per repeat (default: 10)")
    bt.add_argument("--repeats", type=int, default=3, help="timed repeats (default: 3)")
    bt.add_argument("--out", default="bench/train", help="output folder (default: bench/train)")
    bt.set_defaults(func=cmd_bench_train)

    exp_ = sub.add_parser("export", help="write a run's model for use without nailseg",
                          description="hf: a transformers save_pretrained folder (SegFormer runs; default RUN/hf). "
                                      "state_dict: a plain PyTorch state dict, loadable with weights_only=True "
                                      "(default RUN/model.pt). savedmodel: a TensorFlow SavedModel folder (Keras "
                                      "runs; default RUN/savedmodel). keras: a .keras file (default RUN/model.keras).")
    exp_.add_argument("run", help="run folder")
    exp_.add_argument("--format", required=True, choices=["hf", "state_dict", "savedmodel", "keras"],
                      help="hf / state_dict (Lightning runs), savedmodel / keras (Keras runs)")
    exp_.add_argument("--out", help="output path")
    exp_.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NailsegError as err:
        for line in err.lines:
            print(f"error: {line}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
