"""Each int8 setting forced on one exported run, on this CPU: its masks against float32's and its speed.

The figures of docs/results.md ("int8 settings by CPU profile"): ONNX Runtime picks its int8 kernels
by CPUID, so each CPU profile is measured on a machine of that profile. The run must be exported
first (``nailseg export RUN --format onnx``). The copies and their reports go to a temporary folder,
never the run's; export's own short timing (``speed_vs_fp32``, and its line when a copy is slower)
shows for each setting too, and the script's longer timing is the figure it writes.

Usage: python scripts/int8_settings.py RUN OUT.json [--photo IMAGE] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def images_per_s(model: Path, photo, seconds: float) -> float:
    """In-process onnxruntime on one photo (the graph resizes it), 2 threads, after one warm-up call."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: photo[None]}
    session.run(None, feed)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feed)
        calls += 1
    return calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--photo", type=Path, help="timed photo (default: the run's first validation photo)")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    from nailseg.core.data.decode import read_image
    from nailseg.core.runtime import cpu_report
    from nailseg.deploy import quantize
    from nailseg.deploy.quantize import INT8_SETTINGS, quantize_int8
    from nailseg.deploy.verify import training_images, verification_images
    from nailseg.runs import open_run

    run, exp = open_run(args.run)
    fp32 = args.run / "model.onnx"
    images, source = verification_images(run, exp)
    calibration = training_images(run, exp)
    if args.photo is None:
        split = json.loads((args.run / "split.json").read_text())
        args.photo = Path(exp.data.root) / "images" / split["val"][0]
    photo = read_image(args.photo)
    report = {"cpu": cpu_report(), "run": str(args.run), "verified_on": source, "tolerance": quantize.INT8_TOLERANCE,
              "timed_photo": f"{args.photo.name} ({photo.shape[1]}x{photo.shape[0]})",
              "fp32_images_per_s": images_per_s(fp32, photo, args.seconds)}
    tolerance = dict(quantize.INT8_TOLERANCE)
    # every setting is written and timed, refused or not: the check below is export's own tolerance
    quantize.INT8_TOLERANCE = {"mask_agreement": 0.0, "mask_iou": 0.0}
    scratch = Path(tempfile.mkdtemp(prefix="int8-settings-"))  # each copy and its report, never the run's
    for name, setting in INT8_SETTINGS.items():
        out = scratch / f"model.{name}.onnx"
        check = quantize_int8(fp32, out, calibration, images, source, settings=[setting])
        report[name] = {key: check[key] for key in ("mask_agreement", "mask_iou", "max_abs_diff")}
        report[name]["verified"] = all(check[key] >= tolerance[key] for key in ("mask_agreement", "mask_iou"))
        report[name]["images_per_s"] = images_per_s(out, photo, args.seconds)
        print(name, report[name], flush=True)
    shutil.rmtree(scratch)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
