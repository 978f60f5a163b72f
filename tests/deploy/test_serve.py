"""`nailseg serve`: the real server on 127.0.0.1, spoken to with httpx; every bad upload gets a 4xx."""

import concurrent.futures
import io
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, target, *flags):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
        import tempfile

        # a file, not a pipe: the access log writes a line per request and a full pipe would block the server
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "nailseg.cli", "serve", str(target), "--port",
                                      str(self.port), *flags], stdout=self.log, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=REPO)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("server did not come up in 90 s")

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(onnx_run):
    s = Server(onnx_run / "model.onnx", "--max-bytes", "2000000", "--max-pixels", "4000000")
    yield s
    s.stop()


def jpeg(h=120, w=160, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def post(server, data: bytes | None = None, fmt="png", name="hand.jpg", field="image", **kwargs):
    files = {field: (name, data, "image/jpeg")} if data is not None else None
    return httpx.post(f"{server.url}/v1/segment", params={"format": fmt}, files=files, timeout=60, **kwargs)


def test_health_model_and_page(server):
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["image_size"] == [64, 64] and info["limits"]["max_pixels"] == 4000000
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'type="file"' in page.text
    # offline-safe: no Swagger page that would load from a CDN; the schema itself is there
    assert httpx.get(f"{server.url}/docs").status_code == 404
    assert httpx.get(f"{server.url}/openapi.json").json()["info"]["title"] == "nailseg"
    time.sleep(0.5)
    assert "GET /healthz" in server.output()  # the access log (--log-level info, the default)


def test_segment_formats(server):
    png = post(server, jpeg())
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(png.content)))
    assert mask.shape == (120, 160) and set(np.unique(mask)) <= {0, 255}
    over = post(server, jpeg(), fmt="overlay")
    assert over.status_code == 200 and np.asarray(Image.open(io.BytesIO(over.content))).shape == (120, 160, 3)
    bundle = post(server, jpeg(), fmt="bundle").json()  # what the upload page asks for: one inference
    import base64

    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(bundle["mask_png"])))).shape == (120, 160)
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(bundle["overlay_png"])))).shape == (120, 160, 3)
    summary = post(server, jpeg(), fmt="json").json()
    assert summary["height"] == 120 and summary["width"] == 160 and summary["nail_count"] >= 0
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode({"size": summary["rle"]["size"], "counts": summary["rle"]["counts"].encode()})
    np.testing.assert_array_equal(decoded, mask > 127)
    assert abs(summary["fg_share"] - decoded.mean()) < 1e-9


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, "PNG")  # ~100 KB on the wire, 900 MP decoded
    return buf.getvalue()


BAD_UPLOADS = {
    "not an image": (lambda: b"hello, I am text", 400, "not an image"),
    "EPS, which Pillow would hand to Ghostscript": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", 400,
                                                    "not an image"),
    "zero bytes": (lambda: b"", 400, "empty"),
    "truncated": (lambda: jpeg(400, 400)[:700], 400, "truncated"),
    "too many bytes": (lambda: b"\xff" * 2_100_000, 413, "limit"),
    "too many pixels": (lambda: jpeg(2100, 2000), 413, "limit"),
    "decompression bomb": (_bomb_png, 413, "limit"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_a_clear_4xx(server, case):
    make, status, words = BAD_UPLOADS[case]
    r = post(server, make())
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # the worker lives on


def test_wrong_content_type_missing_field_and_format(server):
    r = httpx.post(f"{server.url}/v1/segment", json={"image": "x"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    r = post(server, jpeg(), field="photo")
    assert r.status_code == 422 and "'image' file field is missing" in r.json()["error"]
    r = post(server, jpeg(), fmt="gif")
    assert r.status_code == 400 and "use png, overlay, json or bundle" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/segment", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert 400 <= r.status_code < 500


def test_saturation_answers_503_with_retry_after(onnx_run):
    """One segmentation at a time: a burst of 16 gets some 200s and some 503s, never anything else."""
    s = Server(onnx_run / "model.onnx", "--max-concurrent", "1")
    try:
        body = jpeg(1500, 2000, seed=3)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: post(s, body), range(16)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, codes
        assert 200 in codes and 503 in codes, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    finally:
        s.stop()


def test_bench_serve_reports_rates_and_latencies(onnx_run, synth_data, tmp_path):
    import json

    from tests.conftest import run_cli

    proc = run_cli("bench", "serve", str(onnx_run), "--data", str(synth_data), "--images", "4", "--requests", "12",
                   "--concurrency", "2", "--time-cap", "60", "--torch", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["runtime"] for r in rows] == ["onnxruntime", "torch", "onnxruntime"]
    http = rows[-1]
    assert http["ok"] == 12 and http["errors"] == 0 and http["requests_per_s"] > 0
    assert http["latency_ms_p50"] <= http["latency_ms_p95"] <= http["latency_ms_p99"]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_serve_refuses_a_bad_model_or_a_taken_port_before_announcing(onnx_run, tmp_path):
    fake = tmp_path / "broken.onnx"
    fake.write_bytes(b"not a protobuf at all")
    proc = run_cli("serve", str(fake), "--port", str(free_port()), timeout=120)
    assert proc.returncode == 2 and "broken.onnx: not an ONNX model onnxruntime can load" in proc.stderr
    assert "serving" not in proc.stdout
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", str(onnx_run / "model.onnx"), "--port", str(port), timeout=120)
    assert proc.returncode == 2 and f"127.0.0.1:{port}: cannot listen there" in proc.stderr
    assert "serving" not in proc.stdout
    proc = run_cli("serve", str(onnx_run / "model.onnx"), "--port", "70000", timeout=120)
    assert proc.returncode == 2 and "--port 70000: must be between 0 and 65535" in proc.stderr


def _push_upload(port: int, headers: bytes, chunked: bool) -> tuple[int, bytes]:
    """Send a 200 MB multipart upload as fast as the socket takes it, never looking for an answer
    until the server stops taking bytes; returns (bytes sent, the answer)."""
    head = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n")
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/segment?format=json HTTP/1.1\r\nHost: x\r\n" + headers +
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head) if chunked else head)
        chunk = b"\0" * 2**20
        sock.settimeout(10)  # a server that stopped reading without closing makes sendall time out: a failure
        for _ in range(200):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            except (BrokenPipeError, ConnectionResetError):  # the server closed the connection: it stopped
                break
            sent += len(chunk)
        try:
            while b"}" not in answer:
                part = sock.recv(4096)
                if not part:
                    break
                answer += part
        except OSError:  # the reset may come before the answer is read
            pass
    return sent, answer


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "declared-length"])
def test_an_upload_past_the_byte_limit_is_cut_off(server, chunked):
    """No Content-Length, or one of 200 MB, pushed without reading the answer: the server stops
    taking bytes at the limit (2 MB here; at once for a declared length) and closes the connection,
    so the client's further bytes are refused. What it sent beyond the limit is what the sockets'
    buffers hold."""
    headers = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % (200 * 2**20)
    sent, _ = _push_upload(server.port, headers, chunked)
    assert sent < 16 * 2**20, f"{sent:,} bytes were taken before the connection was closed"
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def _answer_to(port: int, request: bytes) -> bytes:
    """Send ``request`` whole, then read the answer until the server closes the connection."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        while True:
            part = sock.recv(65536)
            if not part:
                return answer  # the server closed the connection after its answer
            answer += part


def test_an_upload_past_the_byte_limit_is_answered_413_and_closed(server):
    """The answer itself: a declared length above the limit gets 413 before any body byte is sent;
    a chunked body gets it when the count passes the limit (here after exactly two 1 MiB chunks,
    all of which the server read). Both say ``Connection: close`` and end the connection."""
    head = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n")
    start = b"POST /v1/segment?format=json HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    declared = _answer_to(server.port, start + b"Content-Length: %d\r\n\r\n" % (200 * 2**20))
    chunk = b"\0" * 2**20
    chunked = _answer_to(server.port, start + b"Transfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (len(head), head) + 2 * (b"%x\r\n%s\r\n" % (len(chunk), chunk)))
    for answer in (declared, chunked):
        assert answer.startswith(b"HTTP/1.1 413") and b"limit" in answer, answer[:300]
        assert b"connection: close" in answer.lower()


def test_healthz_answers_while_a_huge_image_is_post_processed(server):
    """A 1 x 3,900,000 px PNG (under the pixel limit, a few KB) with format=json: the work runs off
    the event loop, so /healthz still answers at once."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 3_900_000, 3), np.uint8)).save(buf, "PNG")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, server, buf.getvalue(), "json", "long.png")
        time.sleep(0.3)
        started = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        waited = time.monotonic() - started
        assert pending.result().status_code in (200, 413)
    assert waited < 2.0


def test_sixteen_bit_grey_uploads_decode_like_predict(server):
    """One decode path: a 16-bit grey PNG is scaled to 8 bits in serve, as in predict."""
    from nailseg.core.data.decode import read_image_bytes

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    from_bytes = read_image_bytes(buf.getvalue(), "grey16.png")
    assert from_bytes.mean() < 200  # not saturated
    assert post(server, buf.getvalue(), "json", "grey16.png").status_code == 200


@pytest.mark.parametrize("size, threshold", [("abc", "0.5"), ("[64]", "0.5"), ('{"a": 1}', "0.5"),
                                             ("[0, 0]", "0.5"), ("[64, 64]", "abc"), ("[64, 64]", "[1]")])
def test_bad_onnx_metadata_is_refused_when_the_model_loads(onnx_run, tmp_path, size, threshold):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(onnx_run / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "nailseg.image_size":
            prop.value = size
        if prop.key == "nailseg.threshold":
            prop.value = threshold
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "hand.jpg").write_bytes(jpeg())
    proc = run_cli("predict", str(bad), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert "metadata" in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
