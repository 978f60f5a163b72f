"""``nailseg serve``: an exported ONNX segmenter behind FastAPI + uvicorn.

- ``GET /healthz``; ``GET /v1/model`` (the file's metadata and the service limits);
- ``POST /v1/segment?format=png|overlay|json`` with a multipart ``image`` field: the mask as a
  PNG, the overlay as a PNG, or JSON with the COCO RLE mask, the foreground share and the nail
  count;
- ``GET /``: an upload page that shows the overlay and the nail count.

Bad input always gets a 4xx with ``{"error": ...}``: a wrong content type or missing field, an
empty, truncated or non-image upload, and one above the byte or pixel limit (the pixel count is
read from the header, so a decompression bomb is refused before it is decoded). Segmentations
run in worker threads (onnxruntime releases the GIL), at most ``max_concurrent`` at once; past
that the service answers 503 with ``Retry-After`` instead of queueing without bound.
"""


import asyncio
import base64
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nailseg.core.data.decode import MAX_PIXELS, read_image_bytes
from nailseg.errors import DataError, NailsegError

ENV = "NAILSEG_SERVE"  # uvicorn workers rebuild the app from this (JSON of ServeSettings)


@dataclass
class ServeSettings:
    model: str
    max_bytes: int = 20 * 2**20           # 20 MiB: a large phone photo is under 10
    max_pixels: int = 40_000_000          # 40 MP: above any phone camera
    max_concurrent: int = 4               # segmentations in flight per worker; more get 503
    retry_after_s: int = 1
    min_nail_area: int = 20               # connected components smaller than this are not counted
    threads: int | None = None            # onnxruntime intra-op threads (default: its own)
    body_timeout_s: float = 30.0          # an upload must arrive within this (slow clients are cut off)
    max_connections: int = 64             # open connections per worker; more get 503 from uvicorn
    log_level: str = "info"               # uvicorn's: critical, error, warning, info (access log), debug
    tile: list[int] | None = None         # sliding windows (h, w) in photo pixels (core/tiling.py); None: off
    overlap: float = 0.25                 # with tile: the share of a window its neighbour also covers

    def __post_init__(self):
        if not 1 <= self.max_pixels <= MAX_PIXELS:
            raise ValueError(f"max_pixels must be from 1 to {MAX_PIXELS:,}")


# An answer given before the request body was read ends the connection: uvicorn closes it after
# the response, so the client's further bytes are refused by the socket instead of being read and
# thrown away (a 40 MB chunked upload was read to its end before its 413 arrived).
CLOSE = {"Connection": "close"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def segment_summary(mask: np.ndarray, min_area: int) -> dict:
    """COCO RLE of the mask, its foreground share and the count of nails (connected regions)."""
    import cv2

    from nailseg.core.optional import require

    mask_utils = require("pycocotools.mask", "serve", "the COCO run-length encoding of each answer")

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    nails = int((stats[1:, cv2.CC_STAT_AREA] >= min_area).sum()) if n > 1 else 0
    return {"height": int(mask.shape[0]), "width": int(mask.shape[1]), "fg_share": float(mask.mean()),
            "nail_count": nails, "rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def create_app(settings: ServeSettings):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from nailseg.core.visualize import overlay
    from nailseg.deploy.onnx_model import OnnxSegmenter

    model = OnnxSegmenter(settings.model, threads=settings.threads)
    predict = model
    if settings.tile is not None:  # large photos: windows at the training scale, blended
        from nailseg.core.tiling import tile_predictor

        predict = tile_predictor(model, (settings.tile[0], settings.tile[1]), settings.overlap)
    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, so they are blank on an
    # offline machine. The schema itself is served at /openapi.json.
    app = FastAPI(title="nailseg", description="Nail segmentation on onnxruntime", version=str(model.metadata.get("version")),
                  docs_url=None, redoc_url=None)
    in_flight = {"n": 0}

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):  # never a bare 500 page or a dead worker
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "in_flight": in_flight["n"]}

    @app.get("/v1/model")
    async def model_info():
        limits = {k: v for k, v in asdict(settings).items() if k != "model"}
        return {**model.describe(), "limits": limits}

    @app.post("/v1/segment")
    async def segment(request: Request, format: str = "png"):  # noqa: A002 - the query parameter's name
        if format not in FORMATS:
            raise ApiError(400, f"format={format!r}: use png, overlay, json or bundle")
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(415, f"content type {content_type or 'none'!r}: send multipart/form-data with an "
                                "'image' file field")
        length = request.headers.get("content-length")
        limit = settings.max_bytes + 64 * 1024  # the file plus the multipart envelope
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"upload of {int(length):,} bytes is above the limit of {settings.max_bytes:,} bytes",
                           CLOSE)
        # Count the bytes as they arrive (a chunked upload has no Content-Length), stop at the
        # limit, and give up on a client that sends too slowly.
        try:
            request._body = await asyncio.wait_for(_read_body(request, limit), settings.body_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the upload did not arrive within {settings.body_timeout_s:g} s", CLOSE) from None
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as err:  # noqa: BLE001 - malformed multipart bodies raise several types
            raise ApiError(400, f"malformed multipart body ({str(err)[:120]})") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "image: the multipart 'image' file field is missing")
        data = await upload.read(settings.max_bytes + 1)
        await upload.close()
        if len(data) > settings.max_bytes:
            raise ApiError(413, f"{upload.filename or 'upload'}: above the limit of {settings.max_bytes:,} bytes")
        if in_flight["n"] >= settings.max_concurrent:
            raise ApiError(503, f"busy: {settings.max_concurrent} segmentations in flight; retry shortly",
                           {"Retry-After": str(settings.retry_after_s)})
        in_flight["n"] += 1
        try:
            name = _safe_name(upload.filename)
            try:
                image = await run_in_threadpool(read_image_bytes, data, name, max_pixels=settings.max_pixels)
            except DataError as err:
                status = 413 if "limit" in str(err) else 400
                raise ApiError(status, str(err)) from None
            # inference and every post-processing step run off the event loop, inside the
            # concurrency cap, so /healthz answers whatever is being segmented
            body = await run_in_threadpool(_respond, model, predict, image, format, settings.min_nail_area, overlay)
        finally:
            in_flight["n"] -= 1
        if format in ("json", "bundle"):
            return body
        return Response(body, media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return UPLOAD_PAGE

    return app


async def _read_body(request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"upload above the limit of {limit - 64 * 1024:,} bytes (stopped reading at "
                                f"{size:,})", CLOSE)
        chunks.append(chunk)
    return b"".join(chunks)


def _respond_classes(model, predict, image: np.ndarray, fmt: str):
    """A many-class model's answer: the class map (png: a palette PNG of class indices), its
    overlay with the legend of class names, and per class its share of the photo (json)."""
    from PIL import Image

    from nailseg.core.class_eval import predicted_classes
    from nailseg.core.labels import palette
    from nailseg.core.visualize import class_overlay

    labels = model.labels
    classes = predicted_classes(predict(image))
    indexed = Image.frombytes("P", (classes.shape[1], classes.shape[0]), classes.tobytes())
    flat = palette(labels.n).ravel().tolist()
    indexed.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    indexed.save(buf, format="PNG")
    if fmt == "png":
        return buf.getvalue()
    if fmt == "overlay":
        return png_bytes(class_overlay(image, classes, labels.names, labels.ignore_index))
    share = np.bincount(classes.ravel(), minlength=labels.n)[: labels.n] / classes.size
    summary = {"height": int(classes.shape[0]), "width": int(classes.shape[1]), "classes": list(labels.names),
               "class_share": {n: float(v) for n, v in zip(labels.names, share)}}
    if fmt == "bundle":
        summary["overlay_png"] = base64.b64encode(png_bytes(class_overlay(image, classes, labels.names,
                                                                          labels.ignore_index))).decode("ascii")
        summary["mask_png"] = base64.b64encode(buf.getvalue()).decode("ascii")
    return summary


def _respond(model, predict, image: np.ndarray, fmt: str, min_area: int, overlay):
    """The answer in ``fmt``; ``predict`` is the model itself, or its tiled form."""
    if model.labels is not None:
        return _respond_classes(model, predict, image, fmt)
    prob = predict(image)
    mask = prob > model.threshold
    if fmt == "png":
        return png_bytes(mask.astype(np.uint8) * 255)
    # The API's overlay keeps the photo's pixel grid (an app lays it over the photo); the palette is
    # the one every nailseg picture uses, and the upload page shows its legend.
    if fmt == "overlay":
        return png_bytes(overlay(image, mask, with_legend=False))
    summary = segment_summary(mask, min_area)
    if fmt == "bundle":  # one inference for the upload page: the summary, the overlay and the mask
        summary["overlay_png"] = base64.b64encode(png_bytes(overlay(image, mask, with_legend=False))).decode("ascii")
        summary["mask_png"] = base64.b64encode(png_bytes(mask.astype(np.uint8) * 255)).decode("ascii")
    return summary


# png: the 0/255 mask; overlay: the mask over the photo; json: counts, share and the COCO RLE;
# bundle: json plus both PNGs base64-encoded (what the upload page asks for, in one inference).
FORMATS = ("png", "overlay", "json", "bundle")


def _safe_name(filename: str | None) -> str:
    name = os.path.basename(filename or "upload")[:80]
    return "".join(c if c.isprintable() else "?" for c in name) or "upload"


def app_from_env():
    """The uvicorn factory for ``--workers N``: each worker process builds its own app."""
    return create_app(ServeSettings(**json.loads(os.environ[ENV])))


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once, the way uvicorn will, so that a port in use or a host that is not
    this machine's is one clear error before the server is announced (uvicorn's own is a log line)."""
    import socket

    if not 0 <= port <= 65535:
        raise NailsegError(f"--port {port}: must be between 0 and 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise NailsegError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as err:
            raise NailsegError(f"{host}:{port}: cannot listen there ({err.strerror}); "
                               "choose another --port or --host") from None


def serve(settings: ServeSettings, *, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    from nailseg.deploy.onnx_model import OnnxSegmenter

    OnnxSegmenter(settings.model)  # refuse a bad model file before the server starts
    check_can_listen(host, port)
    print(f"serving {settings.model} on http://{host}:{port}/ ({workers} worker(s)); Ctrl-C stops", flush=True)
    os.environ[ENV] = json.dumps(asdict(settings))
    uvicorn.run("nailseg.deploy.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=settings.log_level, access_log=settings.log_level in ("info", "debug", "trace"),
                timeout_graceful_shutdown=5, limit_concurrency=settings.max_connections,
                timeout_keep_alive=5)


UPLOAD_PAGE = (Path(__file__).with_name("upload.html")).read_text(encoding="utf-8") \
    if Path(__file__).with_name("upload.html").exists() else "<h1>nailseg</h1>"
