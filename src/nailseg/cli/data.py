"""``nailseg data synth | check | balance | coco``: tools for data folders (framework-free)."""

from __future__ import annotations

import json
import sys

from nailseg.cli.common import output_file, output_folder, positive
from nailseg.core.data.decode import MASK_RULE
from nailseg.errors import NailsegError, quote_name


def cmd_data_synth(args) -> int:
    from nailseg.core.data.synth import SynthConfig, parse_size, synthesize

    output_folder(args.out, "out")
    width, height = parse_size(args.size)
    out = synthesize(args.out, SynthConfig(n=args.n, seed=args.seed, width=width, height=height),
                     progress=not args.quiet)
    print(f"wrote {args.n} pairs ({width}x{height}) to {out}")
    return 0


def cmd_data_check(args) -> int:
    from nailseg.core.data.check import check_dataset

    report = check_dataset(args.root, progress=not args.json, labels=_check_labels(args))
    if args.json:
        print(json.dumps(report.to_json() if args.per_pair else report.summary(), indent=2))
    else:
        s = report.summary()
        print(f"data folder:  {s['root']}")
        print(f"pairs:        {s['pairs']} ({s['valid_pairs']} valid)")
        shares = [("fg_share", "foreground" if report.class_names is None else "not class 0", "")]
        for key, label, unit in (("width", "width", " px"), ("height", "height", " px"), *shares):
            if s[key]:
                v = s[key]
                fmt = (lambda x: f"{x:.1%}") if key == "fg_share" else (lambda x: f"{x:.0f}{unit}")
                print(f"{label + ':':13} min {fmt(v['min'])}  median {fmt(v['median'])}  max {fmt(v['max'])}")
        if report.class_names is not None and s["valid_pairs"]:
            totals = report.class_totals()
            labelled = max(1, sum(totals.values()))
            width = max(len(n) for n in totals)
            print(f"classes:      {len(totals)} (pixels per class, share of labelled pixels)")
            for name, count in totals.items():
                print(f"  {name:{width}} {count:>12,d} {count / labelled:7.2%}" + ("  absent" if not count else ""))
        print(f"problems:     {len(report.problems)}")
        print(f"warnings:     {len(report.warnings)}")
    for line in report.warnings:
        print(f"warning: {quote_name(line)}", file=sys.stderr)
    for line in report.problems:
        print(f"error: {quote_name(line)}", file=sys.stderr)
    return 2 if report.problems else 0


def _check_labels(args):
    """The classes ``data check`` reads masks as: --classes, else ROOT/classes.txt when it exists
    (the binary mask rule otherwise)."""
    from pathlib import Path

    from nailseg.core.labels import LabelSpec, read_class_names, repeated_name

    if args.classes is None:
        found = Path(args.root) / "classes.txt"
        if not found.is_file():
            return None
        names = read_class_names(found)
    elif Path(args.classes).is_file():
        names = read_class_names(args.classes)
    else:
        names = [n.strip() for n in args.classes.split(",") if n.strip()]
        if len(names) < 2:
            raise NailsegError(f"--classes {args.classes!r}: no such file, and not two or more names, comma-separated")
        twice = repeated_name(names)
        if twice is not None:
            raise NailsegError(f"--classes: {twice!r} is named twice; each class index needs a name of its own")
    if not 0 <= args.ignore_index <= 255 or args.ignore_index < len(names):
        raise NailsegError(f"--ignore-index {args.ignore_index}: must be from {len(names)} to 255 (above the classes)")
    return LabelSpec(tuple(names), args.ignore_index)


def cmd_data_balance(args) -> int:
    from nailseg.core.data.balance import parse_weights, plot_balance
    from nailseg.workflows.balance import balance_report

    out = output_file(args.out) if args.out else None
    if args.epoch_size is not None and not 1 <= args.epoch_size <= 10_000_000:
        raise NailsegError(f"--epoch-size {args.epoch_size}: must be from 1 to 10,000,000")
    flags = {"by": args.by, "bins": args.bins, "binning": args.binning, "csv": args.csv, "column": args.column,
             "weights": parse_weights(args.weights), "epoch_size": args.epoch_size}
    report = balance_report(args.source, {k: v for k, v in flags.items() if v is not None}, seed=args.seed,
                            progress=not args.json)
    rows = report["groups"]
    if out is not None:
        weights = report["weights"] if isinstance(report["weights"], str) else "custom"
        plot_balance(rows, out, f"{report['root']}: by {report['by']}, weights {weights}")
        report["plot"] = str(out)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'group':24} {'files':>6} {'data':>7} {'target':>7} {'observed':>9}")
    for r in rows:
        print(f"{r['group']:24} {r['files']:>6} {r['data_share']:>7.1%} {r['target_share']:>7.1%} "
              f"{r['observed_share']:>9.1%}")
    print(f"(observed: {report['simulated_epochs']} simulated epochs of {report['epoch_size']} draws"
          + (f"; chart: {out})" if out else "; --out FILE.png writes a chart)"))
    return 0


def cmd_data_coco(args) -> int:
    from nailseg.core.data.coco import image_ids, to_coco, write_coco
    from nailseg.core.data.discover import find_pairs
    from nailseg.core.data.split import load_split

    out = output_file(args.out)
    labels = _check_labels(args)
    pairs, _ = find_pairs(args.root)
    ids = image_ids(pairs)
    if args.split:
        split = load_split(args.split)
        by_key = {p.key: p for p in pairs}
        missing = [k for part in split.values() for k in part if k not in by_key]
        if missing:
            raise NailsegError([f"{args.split}: {quote_name(k)} is not in {args.root}" for k in missing[:20]])
        targets = {name: [by_key[k] for k in keys] for name, keys in split.items()}
    else:
        targets = {None: pairs}
    done = []  # every file converted first, then all written: a kill never mixes a new _train with an old _val
    for name, chosen in targets.items():
        coco, report = to_coco(chosen, ids, min_area=args.min_area, fmt=args.format, progress=not args.quiet,
                               labels=labels)
        done.append((out.with_name(f"{out.stem}_{name}{out.suffix}") if name else out, coco, report))
    for path, _coco, _ in done:
        output_file(str(path))
    for path, coco, report in done:
        write_coco(path, coco)
        kinds = "" if labels is None else f" of {len(coco['categories'])} categories"
        print(f"{path}: {report.images} images, {report.instances} instances{kinds}, "
              f"{report.dropped_small} regions below {args.min_area} px dropped, {report.with_holes} with holes")
    return 0


BALANCE_DESCRIPTION = """\
Group the images (by foreground-share bins, first sub-folder under images/, or a CSV column), then
print each group's files, share of the data, target share and the share observed in a simulated draw
of 10 epochs; --out also writes a bar chart PNG. SOURCE is a data folder (all pairs) or an
experiment config (its train split and data.balance settings; flags override them).
"""

COCO_DESCRIPTION = """\
Each 4-connected foreground region of a mask becomes one 'nail' instance, with its exact RLE (holes
stay holes; --format polygon writes polygons, RLE for regions with holes), bounding box and area.
With classes (--classes, or ROOT/classes.txt), the first class is the background and each region of
every other class is one instance of its category (category id = class index). Image ids are stable
(sorted file names of the whole folder). With --split, writes OUT_train.json, OUT_val.json and
OUT_test.json.
"""


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="make, check and inspect data folders",
                          description="Tools for data folders: ROOT/images/ + ROOT/labels/ (or masks/).")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    synth = dsub.add_parser("synth", help="draw a procedural nails-like data set (Kaggle layout)",
                            description="Draw hands and fingers with nails of varied shape, colour and count over "
                                        "cluttered backgrounds; writes OUT/images/*.jpg and OUT/labels/*.png.")
    synth.add_argument("out", help="output folder (new or empty)")
    synth.add_argument("--n", type=positive, default=200, help="number of pairs (default: 200)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--size", default="384x288", help="WIDTHxHEIGHT of each picture (default: 384x288)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=cmd_data_synth)

    check = dsub.add_parser(
        "check", help="find the pairs in a data folder and report sizes, foreground share and problems",
        description="Decode every image and mask once and report what is there and every problem, one "
                    "line each (exit code 2 when there is any). Layouts: ROOT/images + ROOT/labels or "
                    "ROOT/masks, or the same one folder down (the Kaggle archive's nested "
                    "nails_segmentation/). Images: JPEG/PNG/BMP/TIFF/WebP, RGB, RGBA or grayscale. "
                    "Warnings (exit 0): masks that are all empty, or whose values do not fit the mask rule.\n\n"
                    "Mask rule: " + MASK_RULE,
    )
    check.add_argument("root", help="data folder")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--per-pair", action="store_true", help="with --json: include every pair's stats")
    check.add_argument("--classes", metavar="FILE|A,B,...",
                       help="masks hold class indices of these classes (a file of names one a line, or names "
                            "comma-separated); default: ROOT/classes.txt when it exists, else the binary mask rule. "
                            "Reports pixels per class and refuses values outside the classes by file")
    check.add_argument("--ignore-index", type=int, default=255,
                       help="with classes: the value of unlabelled pixels (default: 255)")
    check.set_defaults(func=cmd_data_check)

    bal = dsub.add_parser(
        "balance", help="show how balanced sampling would draw groups of images",
        description=BALANCE_DESCRIPTION)
    bal.add_argument("source", help="data folder or experiment YAML")
    bal.add_argument("--by", choices=["fg_bins", "folder", "csv"], help="grouping key (default: fg_bins)")
    bal.add_argument("--bins", type=int, help="fg_bins: number of bins (default: 4, at least 2)")
    bal.add_argument("--binning", choices=["log", "uniform", "quantile"],
                     help="fg_bins: log-spaced (default), equal-width or equal-count bins")
    bal.add_argument("--csv", help="csv: file with one row per image")
    bal.add_argument("--column", help="csv: column that names the group")
    bal.add_argument("--weights", help="equal | inverse | sqrt_inverse | GROUP=W,GROUP=W (default: equal)")
    bal.add_argument("--epoch-size", type=int, help="samples per epoch, 1 to 10,000,000 (default: number of images)")
    bal.add_argument("--seed", type=int, default=42, help="seed of the simulated draw (default: 42)")
    bal.add_argument("--out", help="bar chart PNG to write (default: none)")
    bal.add_argument("--json", action="store_true", help="print the table as JSON")
    bal.set_defaults(func=cmd_data_balance)

    coco = dsub.add_parser(
        "coco", help="turn masks into COCO instance annotations (one per connected region of a class)",
        description=COCO_DESCRIPTION)
    coco.add_argument("root", help="data folder")
    coco.add_argument("--out", required=True, help="output JSON (e.g. coco.json)")
    coco.add_argument("--split", help="a run's split.json: write one file per split")
    coco.add_argument("--min-area", type=int, default=4, help="drop regions smaller than this (pixels, default: 4)")
    coco.add_argument("--format", choices=["rle", "polygon"], default="rle", help="segmentation format (default: rle)")
    coco.add_argument("--classes", metavar="FILE|A,B,...",
                      help="masks hold class indices of these classes, the first one the background (default: "
                           "ROOT/classes.txt when it exists, else binary masks: one 'nail' category)")
    coco.add_argument("--ignore-index", type=int, default=255,
                      help="with classes: the value of unlabelled pixels, in no instance (default: 255)")
    coco.add_argument("--quiet", action="store_true", help="no progress bar")
    coco.set_defaults(func=cmd_data_coco)
