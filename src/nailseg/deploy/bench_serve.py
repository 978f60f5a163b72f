"""``nailseg bench serve``: a bounded load test of ``nailseg serve`` on 127.0.0.1, and the
in-process speed of onnxruntime against the torch predictor on the same images.

The server is started here, on a free loopback port, and stopped at the end; the load is
``requests`` POSTs, ``concurrency`` at a time, and stops at ``time_cap_s`` whatever is left.
"""

from __future__ import annotations

import io
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nailseg.errors import NailsegError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg_bodies(images: list[np.ndarray]) -> list[bytes]:
    from PIL import Image

    bodies = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=90)
        bodies.append(buf.getvalue())
    return bodies


def start_server(model: Path, *flags: str, timeout_s: float = 90):
    """``nailseg serve`` in a child process; returns (process, base url) once /healthz answers."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # warning: no access-log line per request, which would cost time in the measured loop
    proc = subprocess.Popen([sys.executable, "-m", "nailseg.cli", "serve", str(model), "--port", str(port),
                             "--log-level", "warning", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise NailsegError(f"nailseg serve exited: {proc.stderr.read()[-500:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise NailsegError(f"nailseg serve did not answer /healthz within {timeout_s:.0f} s")


def load_test(url: str, bodies: list[bytes], *, requests: int, concurrency: int, time_cap_s: float) -> dict:
    import httpx

    deadline = time.perf_counter() + time_cap_s
    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency))

    def one(i: int):
        if time.perf_counter() > deadline:
            return None
        started = time.perf_counter()
        try:
            r = client.post(f"{url}/v1/segment", params={"format": "png"},
                            files={"image": ("bench.jpg", bodies[i % len(bodies)], "image/jpeg")})
            status = r.status_code
        except httpx.HTTPError:
            status = -1
        return status, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = [r for r in pool.map(one, range(requests)) if r is not None]
    wall = time.perf_counter() - started
    client.close()
    ok = sorted(lat for status, lat in done if status == 200)
    codes: dict[str, int] = {}
    for status, _ in done:
        codes[str(status)] = codes.get(str(status), 0) + 1

    def pct(q: float) -> float | None:
        return 1000 * ok[min(len(ok) - 1, int(q * len(ok)))] if ok else None

    return {"requests_sent": len(done), "ok": len(ok), "errors": len(done) - len(ok), "status_codes": codes,
            "requests_per_s": len(ok) / wall if wall else 0.0, "wall_s": wall,
            "latency_ms_p50": pct(0.50), "latency_ms_p95": pct(0.95), "latency_ms_p99": pct(0.99),
            "latency_ms_mean": 1000 * statistics.mean(ok) if ok else None}


def predictor_speed(predict, images: list[np.ndarray], *, repeats: int = 3) -> dict:
    predict(images[0])  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for image in images:
            predict(image)
        rates.append(len(images) / (time.perf_counter() - started))
    return {"images_per_s": statistics.median(rates), "images_per_s_min": min(rates), "images_per_s_max": max(rates),
            "repeats": rates}


def bench_serve(model: Path, images: list[np.ndarray], *, requests: int, concurrency: int, time_cap_s: float,
                workers: int, torch_predictor=None) -> list[dict]:
    from nailseg.core.benchmark import environment
    from nailseg.deploy.onnx_model import OnnxSegmenter

    env = environment()
    common = {"images": len(images), "image_sizes": sorted({f"{i.shape[1]}x{i.shape[0]}" for i in images}), **env}
    onnx_model = OnnxSegmenter(model)
    rows = [{"pipeline": "onnxruntime in-process", "label": "onnxruntime", "runtime": "onnxruntime",
             "image_size": list(onnx_model.size_hw), **predictor_speed(onnx_model, images), **common}]
    if torch_predictor is not None:
        rows.append({"pipeline": "torch in-process", "label": "torch", "runtime": "torch",
                     "image_size": list(onnx_model.size_hw), **predictor_speed(torch_predictor, images), **common})
    proc, url = start_server(model, "--workers", str(workers), "--max-concurrent", str(max(4, concurrency)))
    try:
        result = load_test(url, _jpeg_bodies(images), requests=requests, concurrency=concurrency, time_cap_s=time_cap_s)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows.append({"pipeline": "nailseg serve (HTTP)", "label": f"serve c={concurrency}", "runtime": "onnxruntime",
                 "images_per_s": result["requests_per_s"], "concurrency": concurrency, "server_workers": workers,
                 "requests": requests, "time_cap_s": time_cap_s, **result, **common,
                 "method": "POST /v1/segment?format=png (multipart JPEG) over loopback; requests/s = successful "
                           "requests / wall time; latency per request, client side"})
    return rows
