"""The FastAPI app: ``create_app(settings)`` builds it; the lifespan loads, warms up and batches both models.

Request path: body size limit (while reading) -> multipart parse -> decode in a worker thread ->
batcher (bounded queue, dynamic batches, deadline, dropped on disconnect) -> JSON / npz / MIDI.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.checkpoint import resolve_device
from models.transcription import notes_from_probabilities, notes_to_midi

from .batcher import Batcher, BatcherStopped, QueueFull
from .decode import DecodeError
from .metrics import Metrics
from .runners import ClassifierRunner, TranscriberRunner
from .schemas import ClassifyResponse, ErrorResponse, ModelsResponse, TranscribeResponse
from .settings import Settings

log = logging.getLogger("service")
STATIC_DIR = Path(__file__).resolve().parent / "static"
UPLOAD_ROUTES = ("/classify", "/transcribe")
ARRIVAL = "dcn.arrival"  # scope key: monotonic time the request arrived (deadlines count from it)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_ERRORS = {400: _error("undecodable, empty or invalid upload"),
                 413: _error("upload, file count or recording length over the limit"),
                 415: _error("not multipart/form-data, or the file is not a supported format"),
                 422: {"description": "invalid parameters"},
                 503: _error("queue full (retry after Retry-After seconds) or shutting down"),
                 504: _error("not answered within the request deadline")}


class ClientDisconnected(Exception):
    pass


class Service:
    """What the lifespan builds: the runners and their batchers, and whether they are ready."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.classifier: ClassifierRunner | None = None
        self.transcriber: TranscriberRunner | None = None
        self.batchers: dict[str, Batcher] = {}
        self.ready = False

    def load(self) -> None:
        """Blocking; raises CheckpointError / RuntimeError with a clear message (startup fails fast)."""
        s = self.settings
        try:
            device = resolve_device(s.device)
        except RuntimeError as e:
            raise RuntimeError(f"DCN_DEVICE={s.device}: {e}") from None
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)  # process-wide, the batcher threads included
        t0 = time.perf_counter()
        self.classifier = ClassifierRunner(s.classifier_checkpoint, device, flip_tta=s.classify_tta)
        self.transcriber = TranscriberRunner(s.transcriber_checkpoint, device)
        log.info("loaded %s and %s on %s in %.1fs", self.classifier.name, self.transcriber.name, device,
                 time.perf_counter() - t0)
        if s.warmup:
            t0 = time.perf_counter()
            self.classifier.warmup(s.classify_max_batch_size)
            self.transcriber.warmup(s.transcribe_max_batch_size)
            log.info("warmed up in %.1fs", time.perf_counter() - t0)

    async def start(self) -> None:
        s = self.settings
        await asyncio.to_thread(self.load)
        for name, runner, size, delay in (
                ("classifier", self.classifier, s.classify_max_batch_size, s.classify_max_batch_delay_ms),
                ("transcriber", self.transcriber, s.transcribe_max_batch_size, s.transcribe_max_batch_delay_ms)):
            batcher = Batcher(name, runner.predict, max_batch_size=size, max_batch_delay_ms=delay,
                              max_queue_size=s.max_queue_size)
            batcher.on_batch = self.metrics.watch_model(name, lambda b=batcher: b.depth)
            batcher.start()
            self.batchers[name] = batcher
        self.ready = True
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        for batcher in self.batchers.values():
            await batcher.stop()

    @property
    def is_ready(self) -> bool:
        return self.ready and all(b.running for b in self.batchers.values())

    def check_ready(self) -> None:
        if not self.is_ready:
            raise HTTPException(503, "service is not ready", headers={"Retry-After": "1"})

    async def run_batched(self, request: Request, model: str, items: list[Any]) -> list[Any]:
        """Items through the model's batcher within the request's deadline; HTTP errors for every way it fails."""
        self.check_ready()
        deadline = request.scope.get(ARRIVAL, time.monotonic()) + self.settings.request_timeout_s
        rejected = self.metrics.rejected
        try:
            return await _unless_disconnected(request, self.batchers[model].submit(items, deadline - time.monotonic()))
        except QueueFull as e:
            rejected.labels(model, "queue_full").inc()
            raise HTTPException(503, f"{e}; retry later", headers={"Retry-After": "1"}) from None
        except TimeoutError:
            rejected.labels(model, "timeout").inc()
            raise HTTPException(504, f"not answered within the deadline of {self.settings.request_timeout_s:g} s"
                                ) from None
        except ClientDisconnected:
            rejected.labels(model, "disconnected").inc()
            raise HTTPException(499, "client closed the request") from None
        except BatcherStopped as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``, cancelling it (so its items leave the queue) if the client disconnects first."""
    async def disconnected() -> None:
        # The body is fully read by now, so the next ASGI message is the disconnect (or the end of the response).
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, watch_task):
            if not task.done():
                task.cancel()
    if work_task.done() and not work_task.cancelled():
        return work_task.result()
    try:
        await work_task  # let the cancellation take the job's items out of the queue
    except asyncio.CancelledError:
        pass
    raise ClientDisconnected


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` with 413 while they stream in: a declared Content-Length over the
    limit fails before reading anything, and a chunked body fails as soon as it passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes or received > self.max_bytes:
                raise HTTPException(413, f"upload larger than the limit of {self.max_bytes} bytes")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"upload larger than the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Count every response (errors included) by route template and status; time it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ARRIVAL] = time.monotonic()
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The route template, not the raw path: unknown paths must not create new label values.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _transcription_json(name: str, duration: float, sample_rate: int, frame_rate: float, times: np.ndarray,
                        pitches: np.ndarray, probs: np.ndarray, notes: list[dict]) -> bytes:
    return json.dumps({"model": name, "duration": round(duration, 6), "sample_rate": sample_rate,
                       "frame_rate": frame_rate, "times": np.round(times, 6).tolist(), "pitches": pitches.tolist(),
                       "probabilities": np.round(probs, 4).tolist(), "notes": notes},
                      separators=(",", ":")).encode()


def _transcription_npz(duration: float, sample_rate: int, frame_rate: float, times: np.ndarray,
                       pitches: np.ndarray, probs: np.ndarray, notes: list[dict]) -> bytes:
    note_array = np.array([(n["onset"], n["offset"], n["pitch"], n["confidence"]) for n in notes],
                          dtype=[("onset", "f8"), ("offset", "f8"), ("pitch", "i8"), ("confidence", "f8")])
    buf = io.BytesIO()
    np.savez_compressed(buf, times=times, pitches=pitches, probabilities=probs, notes=note_array,
                        duration=np.float64(duration), sample_rate=np.int64(sample_rate),
                        frame_rate=np.float64(frame_rate))
    return buf.getvalue()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    service = Service(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await service.start()
        except Exception as e:
            log.error("startup failed: %s", e)
            raise
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="Deep Complex Networks", version="0.1.0", lifespan=lifespan,
                  description="Complex-valued CIFAR-10 classifier and music transcriber, served with dynamic "
                              "batching. Errors are JSON: `{\"detail\": \"...\"}`.")
    app.state.service = service
    app.state.metrics = metrics
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(DecodeError)
    async def decode_error(request: Request, exc: DecodeError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.url.path in UPLOAD_ROUTES and not content_type.startswith("multipart/form-data"):
            return JSONResponse({"detail": f"expected multipart/form-data with a 'file' field, got "
                                           f"{content_type or 'no content type'}"}, status_code=415)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page)
        return HTMLResponse("<h1>Deep Complex Networks</h1><p>API: <a href='/docs'>/docs</a></p>")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 only when both models are loaded and warmed up",
             responses={503: _error("not ready")})
    async def readyz() -> JSONResponse:
        body = {"ready": service.is_ready, "models": {name: b.running for name, b in service.batchers.items()}}
        return JSONResponse(body, status_code=200 if service.is_ready else 503)

    @app.get("/models", response_model=ModelsResponse, response_model_exclude_none=True,
             summary="Served models: checkpoint, size, device, labels or pitches, rates, metrics",
             responses={503: _error("not ready")})
    async def models() -> dict[str, Any]:
        if service.classifier is None or service.transcriber is None:
            raise HTTPException(503, "models are not loaded yet", headers={"Retry-After": "1"})
        return {"models": [service.classifier.info(), service.transcriber.info()]}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/classify", response_model=ClassifyResponse, responses=UPLOAD_ERRORS,
              summary="Classify one or more images (PNG, JPEG, BMP, GIF, WebP; any size)")
    async def classify(request: Request, file: Annotated[list[UploadFile], File(
            description="image file; repeat the field for several images")]) -> dict[str, Any]:
        if len(file) > settings.max_files:
            raise HTTPException(413, f"{len(file)} files; the limit is {settings.max_files} per request")
        service.check_ready()
        runner = service.classifier
        datas = [await f.read() for f in file]
        names = [f.filename or f"file{i}" for i, f in enumerate(file)]
        images = []
        for name, data in zip(names, datas):
            try:
                images.append(await run_in_threadpool(runner.decode, data, settings.max_image_pixels))
            except DecodeError as e:
                raise DecodeError(e.status_code, f"{name}: {e.detail}") from None
        probs = await service.run_batched(request, "classifier", images)
        results = []
        for name, p in zip(names, probs):
            top = int(p.argmax())
            results.append({"filename": name, "label": runner.class_names[top], "confidence": float(p[top]),
                            "probabilities": dict(zip(runner.class_names, p.tolist()))})
        return {"model": runner.name, "results": results}

    @app.post("/transcribe", response_model=TranscribeResponse,
              summary="Transcribe a recording (WAV, FLAC, OGG, MP3; any rate; mono or stereo)",
              responses={**UPLOAD_ERRORS, 200: {"description": "JSON (default), a NumPy .npz archive of the same "
                                                               "arrays (format=npz) or a MIDI file (format=midi)",
                                                "content": {"application/octet-stream": BINARY, "audio/midi": BINARY}}})
    async def transcribe(
            request: Request,
            file: Annotated[UploadFile, File(description="audio file")],
            onset_threshold: float = Query(0.5, ge=0, le=1, description="a note must reach this probability"),
            frame_threshold: float = Query(0.3, ge=0, le=1, description="a note lasts while above this"),
            min_note_length: float = Query(0.05, ge=0, le=60, description="shorter notes are dropped (seconds)"),
            format: Literal["json", "npz", "midi"] = Query("json", description="response format"),
    ) -> Response:
        if frame_threshold > onset_threshold:
            raise HTTPException(422, "frame_threshold must not exceed onset_threshold")
        service.check_ready()
        runner = service.transcriber
        data = await file.read()
        windows, n_frames, duration = await run_in_threadpool(runner.decode, data, settings.max_audio_seconds)
        window_probs = await service.run_batched(request, "transcriber", list(windows))

        def finish() -> tuple[bytes, str]:
            t = runner.stitch(window_probs, n_frames)
            notes = notes_from_probabilities(t.probabilities, t.times, t.pitches, onset_threshold,
                                             frame_threshold, min_note_length)
            arrays = (duration, runner.sample_rate, runner.frame_rate, t.times, t.pitches, t.probabilities, notes)
            if format == "midi":
                return notes_to_midi(notes), "audio/midi"
            if format == "npz":
                return _transcription_npz(*arrays), "application/octet-stream"
            return _transcription_json(runner.name, *arrays), "application/json"

        body, media_type = await run_in_threadpool(finish)
        headers = {}
        if format != "json":
            # Only safe characters in the header: the client's file name could hold quotes or non-Latin-1 text.
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(file.filename or "").stem) or "transcription"
            headers["Content-Disposition"] = f'attachment; filename="{stem}.{"mid" if format == "midi" else "npz"}"'
        return Response(body, media_type=media_type, headers=headers)

    return app


# `uvicorn service.app:app` (configured from DCN_* environment variables; models load at startup).
app = create_app()
