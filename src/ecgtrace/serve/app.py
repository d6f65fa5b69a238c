"""The web app of ``ecgtrace serve``: a JSON API and one static page, FastAPI on uvicorn.

Routes:
    ``GET /``                          the page (``static/index.html``; its JS and CSS under ``/static``)
    ``GET /api/health``                status, version, each stage's method, the upload limit
    ``POST /api/digitize``             multipart form: ``file`` (one picture), optional ``fs`` (Hz, default 500)
                                       -> the 12 leads, the report, links to the downloads
    ``GET /api/results/{id}/{kind}``   ``overlay.png``, ``signals.csv``, ``record.zip`` (WFDB), ``report.json``

Every error answers ``{"error": "one line"}`` with a 4xx status (400 empty or malformed upload,
413 too large, 415 not a readable picture, 422 a picture that is no readable ECG page, 404 an
unknown or expired result); an unexpected failure answers 500 with one line, never a traceback.
"""

from __future__ import annotations

import atexit
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from loguru import logger
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

import ecgtrace
from ecgtrace.pipeline import Pipeline
from ecgtrace.serve.jobs import DOWNLOADS, JobStore, UploadError, lead_windows

STATIC = Path(__file__).resolve().parent / "static"
#: Default upload limit: a 300 dpi colour scan as PNG is ~25 MB, a phone photo 3-10 MB.
MAX_UPLOAD_MB = 32.0
#: Room for the multipart framing around the picture when the whole request body is counted.
FORM_OVERHEAD = 64 * 1024
DIGITIZE_PATH = "/api/digitize"


class UploadTooLarge(Exception):
    """Raised from the request body stream once it passes the limit."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class BodyLimit:
    """ASGI middleware: a digitize request whose body passes ``max_bytes`` stops there.

    A declared ``Content-Length`` over the limit is answered 413 before any byte is read;
    a body sent without one (chunked) is counted as it streams, and the stream raises
    :class:`UploadTooLarge` at the limit, so an oversize upload never fills the disk.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != DIGITIZE_PATH:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _error(413, f"upload of {_mb(int(declared))} is over the limit of "
                              f"{_mb(self.max_bytes - FORM_OVERHEAD)}; scale the picture down")(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise UploadTooLarge
            return message

        await self.app(scope, limited_receive, send)


@dataclass
class ServeSettings:
    """What the app was started with (``GET /api/health`` shows it)."""

    max_upload_bytes: int = int(MAX_UPLOAD_MB * 1e6)
    checkpoints: str | None = None
    device: str = "cpu"
    keep: int = 100
    ttl_s: float = 3600.0
    started: float = field(default_factory=time.time)


def _stage_method(stage: Any) -> str:
    """``"model"`` when a stage holds a network, else ``"classical"`` (read before any page is run)."""
    has_net = getattr(stage, "net", None) is not None or getattr(stage, "model", None) is not None
    return "model" if has_net else "classical"


def create_app(pipeline: Pipeline | None = None, *, checkpoints: str | Path | None = None, device: str = "cpu",
               max_upload_mb: float = MAX_UPLOAD_MB, work_parent: str | Path | None = None, keep: int = 100,
               ttl_s: float = 3600.0) -> FastAPI:
    """Build the app; the pipeline (``Pipeline(checkpoints, device)`` unless given) is loaded here, once.

    Args:
        pipeline: a ready pipeline (tests pass a classical one); built from ``checkpoints`` when None.
        max_upload_mb: largest picture accepted (MB, 10^6 bytes).
        work_parent: where the temporary work folder is made (system temp by default).
        keep, ttl_s: results are kept for ``ttl_s`` seconds and at most ``keep`` of them.
    The work folder is removed when the app shuts down (``app.state.store.close()`` does it by hand).
    """
    if not max_upload_mb > 0:
        raise ecgtrace.EcgTraceError(f"the upload limit must be a positive number of MB, got {max_upload_mb}")
    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 1e6), checkpoints=str(checkpoints) if checkpoints
                             else None, device=device, keep=keep, ttl_s=ttl_s)
    t = time.perf_counter()
    pipe = pipeline if pipeline is not None else Pipeline(checkpoints, device=device)
    methods = {f"stage{k}": _stage_method(getattr(pipe, f"stage{k}", None)) for k in range(3)}
    # where each stage's weights come from (checkpoint, shipped, classical), when the pipeline says so
    weights = {k: w.to_dict() for k, w in getattr(pipe, "weights", {}).items()}
    loaded = "" if pipeline is not None else f" loaded in {time.perf_counter() - t:.1f} s"
    logger.info(f"serve: pipeline {methods['stage0']}/{methods['stage1']}/{methods['stage2']}{loaded}")
    store = JobStore(pipe, parent=work_parent, keep=keep, ttl_s=ttl_s)
    atexit.register(store.close)  # also when the app never runs its shutdown (killed by an error, a bare TestClient)
    try:
        return _build_app(store, settings, methods, weights)
    except BaseException:
        store.close()
        raise


def _build_app(store: JobStore, settings: ServeSettings, methods: dict[str, str],
               weights: dict[str, Any]) -> FastAPI:
    """The routes around a ready :class:`JobStore` (see :func:`create_app`)."""

    async def lifespan(_app: FastAPI):
        try:
            yield
        finally:
            store.close()

    app = FastAPI(title="ecgtrace", version=ecgtrace.__version__, lifespan=lifespan,
                  description="Digitize pictures of 12-lead paper ECGs.")
    app.state.store = store
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        # unknown routes and wrong methods answer in the same {"error": ...} shape as the API
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.opt(exception=exc).error("serve: unexpected error")
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        """Liveness plus what this server runs."""
        return {"status": "ok", "version": ecgtrace.__version__, "methods": methods, "weights": weights,
                "checkpoints": settings.checkpoints, "device": settings.device,
                "max_upload_bytes": settings.max_upload_bytes, "results_kept": len(store),
                "uptime_s": round(time.time() - settings.started, 1)}

    @app.post(DIGITIZE_PATH)
    async def digitize(request: Request) -> JSONResponse:
        """One picture (form field ``file``) and optional ``fs`` -> leads, report, download links."""
        t0 = time.perf_counter()
        limit = settings.max_upload_bytes
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            return _error(400, "send the picture as multipart/form-data in a field named 'file'")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except UploadTooLarge:
            return _error(413, f"upload is over the limit of {_mb(limit)}; scale the picture down")
        except HTTPException as e:  # malformed multipart, more than one file
            return _error(400, f"bad upload form: {e.detail}")
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _error(400, "no picture in the upload: send it in a form field named 'file'")
            fs_text = str(form.get("fs") or "500").strip()
            try:
                fs = float(fs_text)
            except ValueError:
                return _error(422, f"fs must be a number of Hz (e.g. 500), got {fs_text!r}")
            data = await upload.read()
            if len(data) > limit:
                return _error(413, f"{upload.filename}: {_mb(len(data))} is over the limit of {_mb(limit)}; "
                                   "scale the picture down")
            done = await run_in_threadpool(store.digitize, data, upload.filename or "upload", fs)
        except UploadError as e:
            return _error(e.status, e.message)
        finally:
            await form.close()
        job, res = done.job, done.result
        base = f"/api/results/{job.id}"
        payload = {
            "id": job.id,
            "name": job.name,
            "filename": job.filename,
            "fs": res.fs,
            "n_samples": int(len(res.signals)),
            "leads": lead_windows(res),
            "report": res.report,
            "links": {kind: f"{base}/{kind}" for kind in DOWNLOADS},
            "download_names": {kind: job.download_name(kind) for kind in DOWNLOADS},
            "timing_s": {"pipeline": round(done.pipeline_s, 4), "job": round(done.total_s, 4),
                         "request": round(time.perf_counter() - t0, 4)},
        }
        logger.info(f"serve: {job.filename} -> {job.id[:8]} in {done.total_s:.2f} s "
                    f"(pipeline {done.pipeline_s:.2f} s)")
        return JSONResponse(payload)

    @app.get("/api/results/{job_id}/{kind}", response_model=None)
    async def result_file(job_id: str, kind: str) -> FileResponse | JSONResponse:
        """A download of one result: ``overlay.png``, ``signals.csv``, ``record.zip`` or ``report.json``."""
        if kind not in DOWNLOADS:
            return _error(404, f"unknown download {kind!r}; one of {', '.join(DOWNLOADS)}")
        job = store.get(job_id)
        if job is None or not job.path(kind).exists():
            return _error(404, "no such result (results are kept for "
                               f"{settings.ttl_s / 60:.0f} min, the newest {settings.keep}); upload the picture again")
        # the overlay and the report open in a tab; the signals are saved
        inline = kind in ("overlay.png", "report.json")
        return FileResponse(job.path(kind), filename=job.download_name(kind),
                            content_disposition_type="inline" if inline else "attachment")

    return app


# --------------------------------------------------------------------------- running
def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), with a one-line error when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ecgtrace.EcgTraceError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port "
                                     "or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class BackgroundServer:
    """The app on uvicorn in a daemon thread (tests and benches): ``with BackgroundServer(app) as s: s.url``."""

    app: FastAPI
    host: str = "127.0.0.1"
    port: int = 0
    url: str = ""
    _server: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        """Start serving; returns once the server accepts connections."""
        import uvicorn

        sock = bind_socket(self.host, self.port)
        self.url = url_of(sock)
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="ecgtrace-serve")
        self._thread.start()
        t = time.monotonic()
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() - t > timeout_s:
                raise ecgtrace.EcgTraceError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it (the app's work folder goes with the shutdown)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
