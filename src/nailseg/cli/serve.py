"""``nailseg serve RUN|MODEL.onnx``: the HTTP service (FastAPI + uvicorn on onnxruntime)."""

from __future__ import annotations

from pathlib import Path

from nailseg.cli.common import positive
from nailseg.cli.inference import check_tile_flags, tile_size
from nailseg.errors import NailsegError


def model_file(target: str) -> Path:
    """The ONNX file to serve: ``MODEL.onnx`` itself, or a run's ``model.onnx`` (exported now,
    with its verification, when the run has none yet)."""
    path = Path(target)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise NailsegError(f"{target}: no such ONNX model file")
        return path
    if (path / "model.onnx").is_file():
        return path / "model.onnx"
    from nailseg.engine import open_for_inference

    run, exp, stack = open_for_inference(target)
    print(f"{target}: no model.onnx yet; exporting it", flush=True)
    return stack.export(run, exp, "onnx")


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise NailsegError("nailseg serve needs FastAPI and uvicorn: pip install 'nailseg[serve]'") from None
    from nailseg.deploy.serve import ServeSettings, serve

    from nailseg.core.data.decode import MAX_PIXELS

    if args.max_pixels > MAX_PIXELS:
        raise NailsegError(f"--max-pixels {args.max_pixels}: at most {MAX_PIXELS:,} (nailseg's decoding limit)")
    from nailseg.core.tiling import window_shape

    check_tile_flags(args)
    path = model_file(args.target)
    tile = None
    if args.tile is not None:
        from nailseg.deploy.onnx_model import OnnxSegmenter

        tile = list(window_shape(args.tile, OnnxSegmenter(path).size_hw))
    settings = ServeSettings(model=str(path.resolve()), max_bytes=args.max_bytes, tile=tile,
                             overlap=0.25 if args.overlap is None else args.overlap,
                             max_pixels=args.max_pixels, max_concurrent=args.max_concurrent, threads=args.threads,
                             body_timeout_s=args.body_timeout, max_connections=args.max_connections,
                             log_level=args.log_level)
    serve(settings, host=args.host, port=args.port, workers=args.workers)
    return 0


DESCRIPTION = """\
Serve an exported ONNX model. Endpoints: GET /healthz, GET /v1/model, POST
/v1/segment?format=png|overlay|json|bundle (multipart field 'image'), GET / (an upload page) and GET
/openapi.json (the schema; /docs is off because Swagger UI loads from a CDN and is blank offline).
Bad uploads get a 4xx JSON error; past --max-concurrent the answer is 503 with Retry-After. Example:
nailseg serve runs/nails-cpu/model.onnx --port 8000
"""


def add_parser(sub) -> None:
    sv = sub.add_parser(
        "serve", help="serve a model over HTTP (FastAPI + uvicorn on onnxruntime)",
        description=DESCRIPTION)
    sv.add_argument("target", help="MODEL.onnx, or a run folder (its model.onnx, exported first if missing)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    sv.add_argument("--workers", type=positive, default=1, help="uvicorn worker processes (default: 1)")
    sv.add_argument("--threads", type=positive, help="onnxruntime threads per worker (default: all cores)")
    sv.add_argument("--max-bytes", type=positive, default=20 * 2**20, help="largest upload in bytes (default: 20 MiB)")
    sv.add_argument("--max-pixels", type=positive, default=40_000_000,
                    help="largest image in pixels, read from its header (default: 40 MP)")
    sv.add_argument("--max-concurrent", type=positive, default=4,
                    help="segmentations in flight per worker; more get 503 + Retry-After (default: 4)")
    sv.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                    help="an upload must arrive within S seconds, else 408 (default: 30)")
    sv.add_argument("--max-connections", type=positive, default=64,
                    help="open connections per worker; more get 503 from uvicorn (default: 64)")
    sv.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
                    help="uvicorn's log level; info and debug also print one access-log line per request "
                         "(default: info)")
    sv.add_argument("--tile", type=tile_size, nargs="?", const="model", metavar="SIZE|HxW",
                    help="sliding-window inference for photos much larger than the training images: windows of "
                         "SIZE photo pixels on their longer side (model input's aspect ratio; or HxW), blended; "
                         "--tile alone: the model's input size, pixels 1:1 (default: off, the whole photo is "
                         "resized to the training size)")
    sv.add_argument("--overlap", type=float, metavar="F",
                    help="with --tile: the share of a window its neighbour also covers, 0 to 0.9 (default 0.25)")
    sv.set_defaults(func=cmd_serve)
