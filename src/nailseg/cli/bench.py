"""``nailseg bench loaders | train | tfdata | serve | predict``: speed benchmarks (JSON + PNG)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nailseg.cli.common import add_experiment_arguments, choices, non_negative, output_folder, positive


def _print_rates(results: list[dict], label: str, paths) -> None:
    print(f"{label:24} {'images/s':>10} {'min':>9} {'max':>9}")
    for r in results:
        name = r.get("label", r["pipeline"])
        print(f"{name:24} {r['images_per_s']:>10.1f} {r['images_per_s_min']:>9.1f} {r['images_per_s_max']:>9.1f}")
    print(*paths, sep="\n")


def _experiment(args, shorthands: dict):
    """CONFIG + KEY=VALUE like ``train``; the flags (``--data --size --batch``) are shorthands for overrides."""
    from nailseg.config import load_experiment
    from nailseg.errors import NailsegError

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not os.path.exists(config):
        config, overrides = None, [config, *overrides]
    flags = [f"{key}={value}" for key, value in shorthands.items() if value is not None]
    if config is None and not any(o.startswith("data.root=") for o in overrides + flags):
        raise NailsegError("nailseg bench: give a config (CONFIG [KEY=VALUE ...]) or --data DIR")
    return load_experiment(config, overrides + flags)


# The package each optional pipeline needs, and the extra that installs it.
PIPELINE_NEEDS = {"kornia": ("kornia", "gpuaug"), "dali": ("nvidia.dali", "dali")}


def runnable_pipelines(pipelines: list[str]) -> list[str]:
    """The asked-for pipelines that can run here; each one that cannot is named, with why, and
    skipped (none at all is an error)."""
    import importlib.util

    from nailseg.errors import NailsegError, install_hint

    kept = []
    for name in pipelines:
        module, extra = PIPELINE_NEEDS.get(name, (None, None))
        if module and importlib.util.find_spec(module.split(".")[0]) is None:
            print(f"skipped {name}: {module} is not installed ({install_hint(extra)})", file=sys.stderr)
            continue
        kept.append(name)
    if not kept:
        raise NailsegError(f"--pipelines {','.join(pipelines)}: none of them can run here (see the lines above)")
    return kept


def cmd_bench_loaders(args) -> int:
    from nailseg.core.runtime import resolve_workers
    from nailseg.registry import load_bench

    exp = _experiment(args, {"data.root": args.data, "data.image_size": args.size, "trainer.batch_size": args.batch})
    out = output_folder(args.out)
    bench = load_bench("loaders")  # torch delivers the batches on the device
    from nailseg.core.benchmark import write_report

    pipelines = runnable_pipelines(choices(args.pipelines, bench.CHOICES, "--pipelines"))
    workers = args.workers if args.workers is not None else max(1, resolve_workers("auto"))  # the training rule
    caches = choices(args.cache, ("none", "ram", "disk"), "--cache")
    results = bench.run(exp, pipelines, workers=workers, batches=args.batches, repeats=args.repeats,
                            caches=caches, repeat_files_to=args.files or 0)
    paths = write_report(out, results, title=f"input pipelines: {exp.data.size_hw[0]} px, batch "
                         f"{exp.trainer.batch_size}, {workers} CPU threads, {results[0]['device']}")
    _print_rates(results, "pipeline", paths)
    return 0


def cmd_bench_tfdata(args) -> int:
    from nailseg.registry import load_bench

    exp = _experiment(args, {"data.root": args.data, "data.image_size": args.size, "trainer.batch_size": args.batch,
                             "model.family": "sm", "model.encoder": "resnet18"})
    out = output_folder(args.out)
    bench = load_bench("tfdata")
    from nailseg.core.benchmark import write_report

    pipelines = choices(args.pipelines, bench.CHOICES, "--pipelines")
    results = bench.run(exp, pipelines, batches=args.batches, repeats=args.repeats)
    paths = write_report(out, results, title=f"tf.data pipelines: {exp.data.size_hw[0]} px, batch "
                         f"{exp.trainer.batch_size}, CPU")
    _print_rates(results, "pipeline", paths)
    return 0


def cmd_bench_train(args) -> int:
    from nailseg.registry import load_bench

    exp = _experiment(args, {"data.root": args.data, "data.image_size": args.size, "trainer.batch_size": args.batch})
    out = output_folder(args.out)
    bench = load_bench("train", exp.stack)
    from nailseg.core.benchmark import write_report

    precisions = choices(args.precision, ("32", "32-true", "bf16-mixed", "16-mixed"), "--precision")
    pipelines = choices(args.pipelines, exp.stack_spec.pipelines, "--pipelines") if args.pipelines else None
    caches = choices(args.cache, ("none", "ram", "disk"), "--cache") if args.cache else None
    results = bench.run(exp, precisions, batches=args.batches, repeats=args.repeats, warmup=args.warmup,
                        pipelines=pipelines, caches=caches)
    paths = write_report(out, results, title=f"training images/s: {results[0]['model']}, "
                         f"{exp.data.size_hw[0]} px, batch {exp.trainer.batch_size}, {results[0]['device']}")
    print(f"{'what':42} {'precision':>10} {'images/s':>9} {'of limit':>9}")
    for r in results:
        share = f"{r['percent_of_limit']:.0f}%" if "percent_of_limit" in r else ""
        print(f"{r['pipeline']:42} {r['precision']:>10} {r['images_per_s']:>9.1f} {share:>9}")
    print(*paths, sep="\n")
    return 0


def cmd_bench_serve(args) -> int:
    from nailseg.cli.serve import model_file
    from nailseg.core.benchmark import write_report
    from nailseg.core.data.decode import read_image
    from nailseg.core.data.discover import find_pairs
    from nailseg.deploy.bench_serve import bench_serve
    from nailseg.errors import NailsegError

    from nailseg.core.optional import require

    for module in ("httpx", "fastapi", "uvicorn"):  # the load generator and the server it measures
        require(module, "serve", "nailseg bench serve")
    out = output_folder(args.out)
    model = model_file(args.target)
    pairs, _ = find_pairs(args.data)
    images = [read_image(p.image) for p in pairs[: args.images]]
    torch_predictor = None
    if args.torch:
        run_dir = Path(args.target) if not args.target.lower().endswith(".onnx") else None
        if run_dir is None:
            raise NailsegError("--torch needs a run folder as TARGET (its checkpoint is the torch side)")
        from nailseg.engine import open_for_inference

        run, exp, stack = open_for_inference(run_dir)
        torch_predictor = stack.load_predictor(run, exp, device="cpu")
    rows = bench_serve(model, images, requests=args.requests, concurrency=args.concurrency,
                       time_cap_s=args.time_cap, workers=args.workers, torch_predictor=torch_predictor)
    paths = write_report(out, rows, title=f"{model.name}: in-process images/s and HTTP requests/s "
                                          f"({len(images)} images, {rows[0]['device']})")
    for r in rows:
        extra = (f"  p50 {r['latency_ms_p50']:.0f} ms  p95 {r['latency_ms_p95']:.0f} ms  p99 {r['latency_ms_p99']:.0f} ms"
                 f"  errors {r['errors']}" if "latency_ms_p95" in r and r["latency_ms_p95"] is not None else "")
        print(f"{r['label']:16} {r['images_per_s']:>8.1f} /s{extra}")
    print(*paths, sep="\n")
    return 0


def parse_size(text: str) -> tuple[int, int]:
    """``--size WxH`` (e.g. 640x480) as (w, h)."""
    import argparse

    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT in pixels, e.g. 640x480")
    return int(parts[0]), int(parts[1])


def cmd_bench_predict(args) -> int:
    from nailseg.core.benchmark import write_report
    from nailseg.core.data.decode import read_image
    from nailseg.core.evaluate import collect_inputs
    from nailseg.errors import DataError, NailsegError
    from nailseg.workflows.bench_predict import check_target, run_bench_predict

    for target in args.targets:  # before anything is read or written
        check_target(target)
    folder = Path(args.data) / "images" if (Path(args.data) / "images").is_dir() else Path(args.data)
    photos = [str(p) for p in collect_inputs([str(folder)]).files[: args.images]]
    if not photos:
        raise NailsegError(f"--data {args.data}: no images found")
    unreadable = []
    for photo in photos:  # every photo decodes here, once, before a model is loaded or a file written
        try:
            read_image(photo)
        except DataError as err:
            unreadable.extend(err.lines)
    if unreadable:
        raise NailsegError(unreadable)
    out = output_folder(args.out)
    rows = run_bench_predict(args.targets, photos, size=args.size, warmup=args.warmup, repeats=args.repeats)
    timed = [r for r in rows if "latency_ms" in r]
    if timed:
        where = f"{args.size[0]}x{args.size[1]} photos" if args.size else "photos at their own size"
        paths = write_report(out, rows, title=f"ms per photo, median ({where}, {len(photos)} photos, "
                                               f"{timed[0]['environment']['cpu']['profile']} CPU)",
                             value="latency_ms", label="ms per photo (median)")
    print(f"{'model':40} {'stack':12} {'ms median':>10} {'p90':>8} {'photos/s':>9}")
    for r in rows:
        if "latency_ms" in r:
            print(f"{r['label'][:40]:40} {r['stack']:12} {r['latency_ms']:>10.1f} {r['latency_ms_p90']:>8.1f} "
                  f"{r['images_per_s']:>9.2f}")
        else:
            print(f"{r['label'][:40]:40} failed: {r['error']}")
    if not timed:
        raise NailsegError("nailseg bench predict: no target could be timed (see the lines above)")
    print(*paths, sep="\n")
    return 0 if len(timed) == len(rows) else 2


def _config_args(parser) -> None:
    add_experiment_arguments(parser, optional=True,
                             config_help="experiment YAML (optional: the flags below can stand in)")
    parser.add_argument("--data", help="data folder (shorthand for data.root=DIR)")


def _timing_args(parser, *, batches: int, what: str, out: str) -> None:
    """The flags every timed benchmark takes, spelled and defaulted alike."""
    parser.add_argument("--batches", type=positive, default=batches, help=f"timed {what} per repeat (default: {batches})")
    parser.add_argument("--repeats", type=positive, default=3, help="timed repeats (default: 3)")
    parser.add_argument("--out", default=out, help=f"output folder (default: {out})")


LOADERS_DESCRIPTION = """\
Time each pipeline (cpu: DataLoader + albumentations; kornia: DataLoader decode + resize, kornia on
the device; dali: NVIDIA DALI) in one run, with the augmentation spec of CONFIG (default: the
built-in spec).
"""

TRAIN_DESCRIPTION = """\
For each precision: training steps fed by the configured pipeline, and the same steps on one batch
already in device memory (the model's limit); prints the pipeline's share of the limit. A Keras
config (model.family: sm) runs each precision as its Keras policy, without and with XLA
(jit_compile).
"""

PREDICT_DESCRIPTION = """\
The time one photo takes to predict, for each TARGET (run folders of any stack, MODEL.onnx files):
each target in a process of its own, on the same photos from --data, one photo a call, as `nailseg
predict` calls the model (resize, network, the answer at the photo's size; decoding and writing
files are not timed). Reports the median, p90, min and max per photo, the load time and the peak
memory of each target's process. A target that fails is named with its error (a row of bench.json
too) and the others are still timed; the exit code is then 2. bench.png shows each median with the
min-max spread over all its calls.
"""

SERVE_DESCRIPTION = """\
Start `nailseg serve` on a free loopback port, send --requests POSTs (--concurrency at a time,
stopping at --time-cap seconds), and report requests/s, latency percentiles and errors; also times
onnxruntime (and with --torch the run's torch predictor) in-process on the same images.
"""


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="measure input pipelines, training and prediction speed (JSON + PNG)",
                           description="Benchmarks write bench.json (a list of results, each with the method) "
                                       "and bench.png (bars with the min-max spread over repeats) into --out.")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)
    bl = bsub.add_parser("loaders", help="time input pipelines, batches delivered on the device",
                         description=LOADERS_DESCRIPTION)
    _config_args(bl)
    bl.add_argument("--size", type=positive, help="image side in pixels (shorthand for data.image_size)")
    bl.add_argument("--batch", type=positive, default=64, help="batch size (default: 64)")
    bl.add_argument("--workers", type=int, help="CPU threads / DataLoader workers (default: cores - 1)")
    bl.add_argument("--pipelines", default="decode-only,cpu,kornia,dali",
                    help="comma-separated (default: decode-only,cpu,kornia,dali); decode-only is the bare read "
                         "and resize of each file, the floor of every pipeline")
    bl.add_argument("--cache", default="none", help="comma-separated data.cache modes to time for each CPU "
                                                    "pipeline: none,ram,disk (default: none)")
    bl.add_argument("--files", type=positive, help="repeat the folder's files up to this many (e.g. 400)")
    _timing_args(bl, batches=20, what="batches", out="bench/loaders")
    bl.set_defaults(func=cmd_bench_loaders)
    btf = bsub.add_parser("tfdata", help="time the Keras stack's tf.data pipelines (albumentations, tf)",
                          description="Time tf.data batches with albumentations (tf.numpy_function), with the "
                                      "tf.image pipeline, and with decode + resize only (needs nailseg[tf]).")
    _config_args(btf)
    btf.add_argument("--size", type=positive, help="image side in pixels (shorthand for data.image_size)")
    btf.add_argument("--batch", type=positive, default=16, help="batch size (default: 16)")
    btf.add_argument("--pipelines", "--engines", dest="pipelines", default="decode-only,albumentations,tf",
                     help="comma-separated (--engines: the older spelling)")
    _timing_args(btf, batches=10, what="batches", out="bench/tfdata")
    btf.set_defaults(func=cmd_bench_tfdata)
    bt = bsub.add_parser("train", help="training images/s with the configured pipeline vs the model's limit",
                         description=TRAIN_DESCRIPTION)
    _config_args(bt)
    bt.add_argument("--size", type=positive, help="image side in pixels (shorthand for data.image_size)")
    bt.add_argument("--batch", type=positive, help="batch size (shorthand for trainer.batch_size)")
    bt.add_argument("--precision", default="32-true", help="comma-separated: 32-true, bf16-mixed, 16-mixed")
    bt.add_argument("--pipelines", help="comma-separated data.pipeline values of the config's stack to feed the "
                                        "steps (Lightning: albumentations, kornia, dali; default: the config's)")
    bt.add_argument("--cache", help="comma-separated data.cache modes: none,ram,disk (default: the config's)")
    bt.add_argument("--warmup", type=non_negative, default=3,
                    help="untimed steps before each timed row: oneDNN picks its kernels, the allocator settles (default: 3)")
    _timing_args(bt, batches=10, what="steps", out="bench/train")
    bt.set_defaults(func=cmd_bench_train)
    bs = bsub.add_parser("serve", help="load-test nailseg serve on 127.0.0.1 (requests/s, p50/p95/p99)",
                         description=SERVE_DESCRIPTION)
    bs.add_argument("target", help="MODEL.onnx or a run folder (its model.onnx)")
    bs.add_argument("--data", required=True, help="folder of images + masks whose images are sent")
    bs.add_argument("--images", type=positive, default=16, help="how many of its images (default: 16)")
    bs.add_argument("--requests", type=positive, default=200, help="requests to send (default: 200)")
    bs.add_argument("--concurrency", type=positive, default=4, help="requests in flight (default: 4)")
    bs.add_argument("--time-cap", type=positive, default=60, help="stop sending after this many seconds (default: 60)")
    bs.add_argument("--workers", type=positive, default=1, help="server worker processes (default: 1)")
    bs.add_argument("--torch", action="store_true", help="also time the run's torch predictor (TARGET a run folder)")
    bs.add_argument("--out", default="bench/serve", help="output folder (default: bench/serve)")
    bs.set_defaults(func=cmd_bench_serve)
    bp = bsub.add_parser("predict", help="ms per photo for runs of any stack and ONNX models, side by side",
                         description=PREDICT_DESCRIPTION)
    bp.add_argument("targets", nargs="+", metavar="TARGET", help="run folder or MODEL.onnx")
    bp.add_argument("--data", required=True, help="a data folder (its images/), a folder of photos, or one photo")
    bp.add_argument("--images", type=positive, default=8, help="how many of its photos (default: 8)")
    bp.add_argument("--size", type=parse_size, help="resize every photo to WxH first, e.g. 640x480 "
                                                     "(default: each photo's own size)")
    bp.add_argument("--warmup", type=non_negative, default=2, help="untimed calls first (default: 2)")
    bp.add_argument("--repeats", type=positive, default=3, help="timed passes over the photos (default: 3)")
    bp.add_argument("--out", default="bench/predict", help="output folder (default: bench/predict)")
    bp.set_defaults(func=cmd_bench_predict)
