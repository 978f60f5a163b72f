"""``nailseg bench predict``: the time one photo takes to predict, for runs of any stack and ONNX models.

Each target is timed in a process of its own, one after another: a Keras run and a torch run never
share a process, and no target inherits another's warm caches, threads or memory. Every target sees
the same photos. The timed call is the one ``nailseg predict`` makes for a photo already decoded:
resize and normalise, the network, and the answer at the photo's own size (the probability map, the
class map, or for an instance model the union of its instances). Decoding the file and writing
pictures are left out: they are the same for every model.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nailseg.deploy import is_onnx
from nailseg.errors import NailsegError

RESULT_PREFIX = "bench-predict-result: "  # the child's one line of JSON on stdout


def target_name(target: str) -> str:
    """A short label: the run folder's name, or the model file's parent and name."""
    path = Path(target)
    return f"{path.parent.name}/{path.name}" if is_onnx(target) else path.name


def check_target(target: str) -> None:
    """One line naming the target when it is neither a run folder nor an ONNX file."""
    path = Path(target)
    if is_onnx(target):
        if not path.is_file():
            raise NailsegError(f"{target}: no such ONNX file")
    elif not (path / "config.yaml").is_file():
        raise NailsegError(f"{target}: not a run folder (no config.yaml) nor a MODEL.onnx")


def load_photos(paths: list[str], size: tuple[int, int] | None):
    """The photos as RGB ``uint8``, each resized to ``size`` (w, h) when given."""
    import cv2

    from nailseg.core.data.decode import read_image

    photos = [read_image(p) for p in paths]
    if size is not None:
        photos = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in photos]
    return photos


def _predictor(target: str):
    """(predict, what the row records about the model) for a run folder or an ONNX file."""
    if is_onnx(target):
        from nailseg.deploy.onnx_model import OnnxSegmenter

        return OnnxSegmenter(target), {"format": "onnx", "stack": "onnxruntime"}
    from nailseg.engine import open_for_inference

    run, exp, stack = open_for_inference(target)
    summary_path = Path(target) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    model = exp.model.describe()
    return stack.load_predictor(run, exp), {
        "format": "run", "stack": exp.stack, "family": model.get("family"), "arch": model.get("arch"),
        "encoder": model.get("encoder"), "params": summary.get("parameters"),
        "input_hw": list(exp.data.size_hw)}


def measure(target: str, photo_paths: list[str], size: tuple[int, int] | None, warmup: int, repeats: int) -> dict:
    """Time ``repeats`` passes over the photos, one photo a call, after ``warmup`` untimed calls."""
    import resource

    import numpy as np

    from nailseg.core.benchmark import environment

    photos = load_photos(photo_paths, size)
    started = time.perf_counter()
    predict, about = _predictor(target)
    load_s = time.perf_counter() - started
    for i in range(warmup):
        np.asarray(predict(photos[i % len(photos)]))
    times_ms = []
    for _ in range(repeats):
        for photo in photos:
            t0 = time.perf_counter()
            np.asarray(predict(photo))
            times_ms.append((time.perf_counter() - t0) * 1000)
    times_ms.sort()
    median = statistics.median(times_ms)
    return {"label": target_name(target), "target": str(target), **about,
            "latency_ms": median, "latency_ms_min": times_ms[0], "latency_ms_max": times_ms[-1],
            "latency_ms_p90": times_ms[min(len(times_ms) - 1, int(0.9 * len(times_ms)))],
            "images_per_s": 1000.0 / median, "calls": len(times_ms), "load_s": load_s,
            "photo_hw": sorted({tuple(int(v) for v in p.shape[:2]) for p in photos}),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "method": f"one photo a call, {warmup} untimed warm-up calls, then {repeats} passes over "
                      f"{len(photos)} photos; median, min, max and p90 of the calls",
            "environment": environment("cpu" if not Path("/dev/nvidia0").exists()
                                       else "the stack's default (a GPU is present)")}


def run_bench_predict(targets: list[str], photo_paths: list[str], *, size: tuple[int, int] | None,
                      warmup: int, repeats: int, say=print) -> list[dict]:
    """One child process per target; a target that fails is a row with its error, the others go on."""
    for target in targets:
        check_target(target)
    rows = []
    for i, target in enumerate(targets, 1):
        say(f"[{i}/{len(targets)}] {target_name(target)}")
        request = json.dumps({"target": str(target), "photos": photo_paths, "size": size,
                              "warmup": warmup, "repeats": repeats})
        proc = subprocess.run([sys.executable, "-m", "nailseg.workflows.bench_predict", request],
                              capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if proc.returncode == 0 and lines:
            rows.append(json.loads(lines[-1][len(RESULT_PREFIX):]))
        else:
            error = child_error(proc.stderr, proc.returncode)
            say(f"  failed: {error}")
            rows.append({"label": target_name(target), "target": str(target), "error": error})
    return rows


def child_error(stderr: str, returncode: int) -> str:
    """The child's own error lines (``error: ...``, as nailseg prints them), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return "; ".join(errors) if errors else (lines[-1] if lines else f"exit {returncode}")


def _child(request: str) -> int:
    asked = json.loads(request)
    size = tuple(asked["size"]) if asked["size"] else None
    try:
        row = measure(asked["target"], asked["photos"], size, asked["warmup"], asked["repeats"])
    except NailsegError as err:
        for line in err.lines:
            print(f"error: {line}", file=sys.stderr)
        return err.exit_code
    print(RESULT_PREFIX + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
