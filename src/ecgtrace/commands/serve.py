"""``ecgtrace serve``: a local web page to drop ECG pictures, see where each lead was read, download the signals."""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import time

from loguru import logger

from ecgtrace.errors import EcgTraceError

EPILOG = """\
Open the printed address in a browser: drop one or several pictures, watch each one's
progress, then see the overlay on the picture, the 12 leads (leads marked ? are doubtful)
and download CSV / WFDB / JSON / overlay. Nothing is fetched from the internet.

JSON API (same server):
  GET  /api/health                      status, version, method of each stage, upload limit
  POST /api/digitize                    form: file=<picture>, fs=<Hz, default 500>
                                        -> leads, report, links to the downloads
  GET  /api/results/<id>/<kind>         overlay.png | signals.csv | record.zip | report.json
  e.g. curl -F file=@photo.jpg -F fs=500 http://127.0.0.1:8000/api/digitize

Uploads and results live in a temporary folder, removed when the server stops; results are
kept for --keep-minutes and at most --keep pages. Needs: pip install 'ecgtrace[serve]'.
"""


def register(subparsers) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="local web page + JSON API: drop pictures, see the overlay and leads, download signals",
        description="Start a local web server (FastAPI + uvicorn) with a page and a JSON API around the "
                    "digitizing pipeline. The models are loaded once, at start.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--checkpoints", default=None, help="folder with stage0/1/2 checkpoints (default: classical paths)")
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    p.add_argument("--classical", action="store_true", help="use the classical path of every stage (no models)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, dest="max_upload_mb",
                   help="largest picture accepted, MB (default 32)")
    p.add_argument("--keep", type=int, default=100, help="results kept at most (default 100)")
    p.add_argument("--keep-minutes", type=float, default=60.0, dest="keep_minutes",
                   help="minutes a result stays downloadable (default 60)")
    p.set_defaults(func=run)


def _pipeline(args: argparse.Namespace):
    """The pipeline the server runs: ``--classical`` forces the classical paths (via the pipeline's own
    ``classical`` option where it has one, else by loading no checkpoints)."""
    from ecgtrace.pipeline import Pipeline

    if not args.classical:
        return Pipeline(args.checkpoints, device=args.device)
    if "classical" in inspect.signature(Pipeline).parameters:
        return Pipeline(args.checkpoints, device=args.device, classical=True)
    return Pipeline(None, device=args.device)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Load the pipeline, bind the port, serve until Ctrl-C."""
    try:
        import uvicorn

        from ecgtrace.serve.app import bind_socket, create_app, url_of
    except ModuleNotFoundError as e:
        raise EcgTraceError(f"`ecgtrace serve` needs the web extra ({e.name} is missing): "
                            "pip install 'ecgtrace[serve]'") from None
    if not 0 <= args.port <= 65535:
        raise EcgTraceError(f"--port must be 0..65535, got {args.port}")
    if args.keep < 1 or not args.keep_minutes > 0:
        raise EcgTraceError("--keep and --keep-minutes must be positive")
    sock = bind_socket(args.host, args.port)  # before loading models: a taken port fails at once
    try:
        if not _is_loopback(args.host):
            logger.warning(f"serve: listening on {args.host}: anyone who can reach this computer can upload pictures")
        t = time.perf_counter()
        pipe = _pipeline(args)  # loaded once: every upload reuses it
        logger.info(f"serve: models loaded in {time.perf_counter() - t:.1f} s")
        app = create_app(pipe, checkpoints=args.checkpoints, device=args.device, max_upload_mb=args.max_upload_mb,
                         keep=args.keep, ttl_s=args.keep_minutes * 60.0)
        url = url_of(sock)
        print(f"ecgtrace serve: open {url}/ in a browser (Ctrl-C stops; API: {url}/api/health)", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        try:
            server.run(sockets=[sock])
        finally:
            app.state.store.close()  # the lifespan does it too; this covers a start that failed half-way
    finally:
        sock.close()
    return 0
