"""The FastAPI app: ``create_app(settings)`` builds it; the lifespan loads, warms up and batches both models.

Request path: header count, security headers, HEAD, draining (Hardening) -> body size limit and upload
timeouts while reading (UploadGuard) -> multipart parse -> deadline starts -> queue precheck (503 before any
decoding when overloaded) -> decode in a bounded pool (deadline, disconnect and shutdown honoured) ->
batcher (bounded queue, admission by deadline, dynamic batches, dropped on disconnect) -> JSON / npz / MIDI / CSV.
Connection-level limits (head size and timeout, keep-alive, connection count, graceful SIGTERM): service/server.py.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.checkpoint import resolve_device
from models.transcription import Transcription, notes_to_csv, notes_to_midi, round_list, transcription_npz

from .batcher import Batcher, BatcherStopped, QueueFull
from .decode import DecodeCancelled, DecodeError, DecodePools, open_image
from .guard import LoadShedder, OriginGuard
from .metrics import Metrics
from .runners import ClassifierRunner, TranscriberRunner
from .schemas import ClassifyResponse, ErrorResponse, ModelsResponse, TranscribeResponse
from .settings import Settings
from .stream import PROTOCOL_DOC, StreamModel, build_stream_model, protocol_description, serve_stream

log = logging.getLogger("service")
STATIC_DIR = Path(__file__).resolve().parent / "static"
UPLOAD_ROUTES = ("/classify", "/transcribe")
ARRIVAL = "dcn.arrival"  # scope key: monotonic time the request arrived
DEADLINE = "dcn.deadline"  # scope key: monotonic deadline, set when the upload is complete (the route starts)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_ERRORS = {400: _error("undecodable, damaged, empty or invalid upload; an image over the pixel or "
                              "decode-memory limit; audio that cannot be analysed"),
                 408: _error("the upload paused too long or took too long"),
                 413: _error("upload, file count, decode size or recording length over the limit"),
                 415: _error("not multipart/form-data, or the file is not a supported format"),
                 422: _error("invalid parameters (detail: a string; errors: the list)"),
                 431: _error("too many or too large request headers"),
                 499: _error("the client closed the connection (recorded in metrics; nothing is sent)"),
                 503: _error("queue full or the work would not finish by the deadline (retry after Retry-After "
                             "seconds), or shutting down"),
                 504: _error("not answered within the request deadline (counted from the end of the upload)")}


class ClientDisconnected(Exception):
    pass


class ShuttingDown(Exception):
    pass


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", b"frame-ancestors 'none'")]


class Service:
    """What the lifespan builds: the runners and their batchers, and whether they are ready."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.classifier: ClassifierRunner | None = None
        self.transcriber: TranscriberRunner | None = None
        self.batchers: dict[str, Batcher] = {}
        self.stream_model: StreamModel | None = None  # the transcriber for live streams (short windows)
        self.streams_active = 0  # open live streams
        metrics.streams_active.set_function(lambda: self.streams_active)
        self.item_seconds: dict[str, float] = {}
        self.ready = False
        self.draining = False   # shutdown started: not ready, new uploads refused, in-flight ones finishing
        self.in_flight = 0      # upload requests being served
        self._stopping: asyncio.Event | None = None  # set when the grace period is over: waiting requests get 503
        # A bounded pool for decoding: memory and CPU spent on decoding are bounded by its size.
        self.decoder = DecodePools(settings.decode_concurrency)  # one pool per route

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
        self.stream_model, t1 = None, time.perf_counter()
        if s.stream_max_concurrent:
            try:
                self.stream_model = build_stream_model(self.transcriber.model, self.transcriber.meta,
                                                       s.stream_block_frames)
            except Exception as e:  # noqa: BLE001 - uploads must still be served; streams get 1013
                log.error("live streams disabled: %s: %s", type(e).__name__, e)
        if self.stream_model is not None:
            if self.stream_model.model is not self.transcriber.model:
                self.transcriber.add_window_model(self.stream_model.model)
            log.info("live streams: blocks of %d frames, %d edge frame(s), latency %.3f s (+ compute), largest "
                     "difference from offline %.2g; checked in %.1fs", self.stream_model.block_frames,
                     self.stream_model.edge, self.stream_model.algorithmic_latency_s,
                     self.stream_model.max_difference, time.perf_counter() - t1)
        if s.warmup:
            t0 = time.perf_counter()
            for name, runner, size in (("classifier", self.classifier, s.classify_max_batch_size),
                                       ("transcriber", self.transcriber, s.transcribe_max_batch_size)):
                runner.warmup(size)
                # Warm runs, timed: a full batch's seconds per item seed the batcher's admission estimate.
                t1 = time.perf_counter()
                runner.warmup(1)
                t2 = time.perf_counter()
                runner.warmup(size)  # batches of 1 and of `size`
                full = (time.perf_counter() - t2) - (t2 - t1) if size > 1 else t2 - t1
                self.item_seconds[name] = max(full, 1e-6) / size
            log.info("warmed up in %.1fs", time.perf_counter() - t0)

    async def start(self) -> None:
        s = self.settings
        self._stopping = asyncio.Event()
        self.draining = False
        self.decoder = DecodePools(s.decode_concurrency)
        await asyncio.to_thread(self.load)
        for name, runner, size, delay in (
                ("classifier", self.classifier, s.classify_max_batch_size, s.classify_max_batch_delay_ms),
                ("transcriber", self.transcriber, s.transcribe_max_batch_size, s.transcribe_max_batch_delay_ms)):
            batcher = Batcher(name, runner.predict, max_batch_size=size, max_batch_delay_ms=delay,
                              max_queue_size=s.max_queue_size, item_seconds=self.item_seconds.get(name),
                              admission_margin=s.admission_margin,
                              busy_batch_size=s.stream_upload_batch_size if name == "transcriber" else None)
            batcher.on_batch = self.metrics.watch_model(name, lambda b=batcher: b.depth)
            batcher.start()
            self.batchers[name] = batcher
        self.ready = True
        self.metrics.ready.set(1)

    async def begin_shutdown(self, grace_s: float) -> None:
        """Not ready from now on; wait up to ``grace_s`` for requests in flight, then answer the rest 503."""
        self.draining = True
        self.metrics.ready.set(0)
        deadline = time.monotonic() + grace_s
        while (self.in_flight or self.streams_active) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # live streams see `draining`: they flush, send their summary and close
        if self.in_flight:
            log.warning("shutdown grace period of %g s over: answering %d request(s) in flight 503", grace_s,
                        self.in_flight)
            if self._stopping is not None:
                self._stopping.set()
            for batcher in self.batchers.values():
                batcher.abort("the service is shutting down")
            until = time.monotonic() + 2
            while self.in_flight and time.monotonic() < until:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        for batcher in self.batchers.values():
            await batcher.stop()
        self.decoder.shutdown()

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.draining and all(b.running for b in self.batchers.values())

    def check_ready(self) -> None:
        if self.draining:
            raise HTTPException(503, "the service is shutting down; retry on another replica",
                                headers={"Retry-After": "1", "Connection": "close"})
        if not self.is_ready:
            raise HTTPException(503, "service is not ready", headers={"Retry-After": "1"})

    def precheck(self, model: str, cost: tuple[int, float] | None = None) -> None:
        """Before any decoding: 503 at once when the model's queue is full or its backlog exceeds the deadline."""
        try:
            items, decode_s = cost or (None, 0.0)  # cost: (items, decoding seconds) from the upload's header
            self.batchers[model].precheck(self.settings.request_timeout_s, items,
                                          decode_s + self.decoder[model].wait_s())
        except QueueFull as e:
            self.metrics.rejected.labels(model, "queue_full").inc()
            raise HTTPException(503, f"{e}; retry later", headers={"Retry-After": _retry_after(e)}) from None
        except BatcherStopped as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None

    async def decode(self, request: Request, model: str, deadline: float, fn: Callable[..., Any], *args: Any
                     ) -> Any:
        """``fn(*args, should_stop=...)`` in the decode pool, within the deadline; it stops (and the client gets
        504 / 499 / 503) when the deadline passes, the client goes away or the grace period ends."""
        reason: list[str] = []
        work = asyncio.wrap_future(self.decoder[model].submit(
            functools.partial(fn, *args, should_stop=lambda: reason[0] if reason else None)))
        try:
            return await self._guard(request, model, work, deadline, reason)
        except DecodeCancelled:  # only after a reason was given, which _guard has answered already
            raise HTTPException(503, "decoding stopped") from None

    async def _guard(self, request: Request, model: str, work: Awaitable[Any], deadline: float,
                     reason: list[str]) -> Any:
        rejected = self.metrics.rejected
        try:
            return await _unless_disconnected(request, work, deadline - time.monotonic(), self._stopping)
        except TimeoutError:
            reason.append("deadline")
            rejected.labels(model, "timeout").inc()
            raise HTTPException(504, f"not answered within the deadline of {self.settings.request_timeout_s:g} s"
                                ) from None
        except ClientDisconnected:
            reason.append("disconnected")
            rejected.labels(model, "disconnected").inc()
            raise HTTPException(499, "client closed the request") from None
        except ShuttingDown:
            reason.append("shutdown")
            rejected.labels(model, "shutdown").inc()
            raise HTTPException(503, "the service is shutting down; retry on another replica",
                                headers={"Retry-After": "1", "Connection": "close"}) from None

    async def run_batched(self, request: Request, model: str, items: list[Any], deadline: float | None = None
                          ) -> list[Any]:
        """Items through the model's batcher within the request's deadline; HTTP errors for every way it fails."""
        self.check_ready()
        if deadline is None:
            deadline = request.scope.get(DEADLINE) or time.monotonic() + self.settings.request_timeout_s
        rejected = self.metrics.rejected
        try:
            return await self._guard(request, model, self.batchers[model].submit(items, deadline - time.monotonic()),
                                     float("inf"), [])
        except QueueFull as e:
            rejected.labels(model, "queue_full").inc()
            raise HTTPException(503, f"{e}; retry later", headers={"Retry-After": _retry_after(e)}) from None
        except TimeoutError:
            rejected.labels(model, "timeout").inc()
            raise HTTPException(504, f"not answered within the deadline of {self.settings.request_timeout_s:g} s"
                                ) from None
        except BatcherStopped as e:
            rejected.labels(model, "shutdown").inc()
            raise HTTPException(503, str(e), headers={"Retry-After": "1", "Connection": "close"}) from None


def _retry_after(e: QueueFull) -> str:
    return str(max(1, math.ceil(e.retry_after)))


async def _unless_disconnected(request: Request, work: Awaitable[Any], timeout: float = float("inf"),
                               stopping: asyncio.Event | None = None) -> Any:
    """Await ``work``, cancelling it (so its items leave the queue) if the client disconnects first, the
    timeout passes (TimeoutError) or ``stopping`` is set (ShuttingDown)."""
    async def disconnected() -> None:
        # The body is fully read by now, so the next ASGI message is the disconnect (or the end of the response).
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(disconnected())
    stop_task = asyncio.ensure_future(stopping.wait()) if stopping is not None else None
    tasks = {work_task, watch_task} | ({stop_task} if stop_task else set())
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED,
                           timeout=None if timeout == float("inf") else max(0.0, timeout))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
    if work_task.done() and not work_task.cancelled():
        return work_task.result()
    try:
        await work_task  # let the cancellation take the job's items out of the queue
    except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - its result no longer matters
        pass
    if watch_task.done() and not watch_task.cancelled():
        raise ClientDisconnected
    if stop_task is not None and stop_task.done() and not stop_task.cancelled():
        raise ShuttingDown
    raise TimeoutError


class UploadGuard:
    """The request body while it streams in: over ``max_bytes``: 413 (a declared Content-Length over the limit
    fails before reading anything); a pause over ``body_timeout_s`` or an upload longer than ``upload_timeout_s``:
    408; the client gone before the body is complete: 499. These responses close the connection."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float = float("inf"),
                 upload_timeout_s: float = float("inf")) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.body_timeout_s, self.upload_timeout_s = body_timeout_s, upload_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        received, complete = 0, False
        started = time.monotonic()
        close = {"Connection": "close"}

        def too_large() -> HTTPException:
            return HTTPException(413, f"upload larger than the limit of {self.max_bytes} bytes", headers=close)

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in; what follows is the disconnect, awaited without a time limit
                return await receive()
            if declared.isdigit() and int(declared) > self.max_bytes or received > self.max_bytes:
                raise too_large()
            left = self.upload_timeout_s - (time.monotonic() - started)
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.body_timeout_s, left)))
            except TimeoutError:
                what = ("upload not complete within " f"{self.upload_timeout_s:g} s" if left <= self.body_timeout_s
                        else f"no upload data for {self.body_timeout_s:g} s")
                raise HTTPException(408, what, headers=close) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large()
                complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                raise HTTPException(499, "client closed the connection during the upload")
            return message

        await self.app(scope, guarded_receive, send)


BodySizeLimit = UploadGuard  # the former name


class Hardening:
    """Headers: more than ``max_header_count``: 431. HEAD: served as GET without the body. Security headers on
    every response. While shutting down: uploads refused with 503 + Retry-After before their body is read,
    and every response says Connection: close. Upload requests are counted while in flight."""

    def __init__(self, app: ASGIApp, service: Service, max_header_count: int) -> None:
        self.app, self.service, self.max_header_count = app, service, max_header_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        service = self.service
        head = scope["method"] == "HEAD"

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if service.draining and b"connection" not in names:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        if len(scope["headers"]) > self.max_header_count:
            response = JSONResponse({"detail": f"{len(scope['headers'])} request headers; the limit is "
                                               f"{self.max_header_count}"}, status_code=431,
                                    headers={"Connection": "close"})
            return await response(scope, receive, guarded_send)
        upload = scope["path"] in UPLOAD_ROUTES and scope["method"] == "POST"
        if upload and service.draining:
            response = JSONResponse({"detail": "the service is shutting down; retry on another replica"},
                                    status_code=503, headers={"Retry-After": "1", "Connection": "close"})
            return await response(scope, receive, guarded_send)
        if head:
            scope = {**scope, "method": "GET"}
        if upload:
            service.in_flight += 1
        try:
            await self.app(scope, receive, guarded_send)
        finally:
            if upload:
                service.in_flight -= 1


class MetricsMiddleware:
    """Count every response (errors included) by route template and status; time it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            async def quiet_send(message: Message) -> None:
                # The lifespan has logged the cause in one line; uvicorn would log Starlette's traceback too.
                if message["type"] == "lifespan.startup.failed":
                    message = {**message, "message": ""}
                await send(message)
            return await self.app(scope, receive, quiet_send)
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


PROBABILITY_DECIMALS = 3  # JSON only (npz keeps float32): 0.0004 -> 0.0, error <= 5e-4
TIME_DECIMALS = 6
TRANSCRIBE_FORMATS = {"json": ("application/json", None), "npz": ("application/octet-stream", "npz"),
                      "midi": ("audio/midi", "mid"), "csv": ("text/csv", "csv")}


class NonFiniteOutput(Exception):
    """The model produced NaN or infinite probabilities: never sent in a 200 (JSON has no NaN)."""


def _transcription_json(name: str, duration: float, sample_rate: int, frame_rate: float, t: Transcription,
                        decoding: dict, notes: list[dict]) -> bytes:
    body = {"model": name, "duration": round(duration, TIME_DECIMALS), "sample_rate": sample_rate,
            "frame_rate": frame_rate, "times": round_list(t.times, TIME_DECIMALS), "pitches": t.pitches.tolist(),
            "probabilities": round_list(t.probabilities, PROBABILITY_DECIMALS)}
    if t.onsets is not None:
        body["onsets"] = round_list(t.onsets, PROBABILITY_DECIMALS)
    body.update(decoding=decoding, notes=notes)
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as e:  # NaN / inf that got past the check in finish(): never a 200 with invalid JSON
        raise NonFiniteOutput(str(e)) from None


def _deadline(request: Request) -> float:
    deadline = time.monotonic() + request.app.state.service.settings.request_timeout_s
    request.scope[DEADLINE] = deadline
    return deadline


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    service = Service(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await service.start()
        except Exception as e:
            log.error("startup failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
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
    app.add_middleware(LoadShedder, service=service)
    app.add_middleware(OriginGuard, allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins)
    app.add_middleware(UploadGuard, max_bytes=settings.max_upload_bytes, body_timeout_s=settings.body_timeout_s,
                       upload_timeout_s=settings.upload_timeout_s)
    app.add_middleware(Hardening, service=service, max_header_count=settings.max_header_count)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(DecodeError)
    async def decode_error(request: Request, exc: DecodeError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(NonFiniteOutput)
    async def non_finite_output(request: Request, exc: NonFiniteOutput) -> JSONResponse:
        log.error("non-finite model output on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"the model produced non-finite probabilities for this recording ({exc}); "
                                       "nothing was returned"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.url.path in UPLOAD_ROUTES and not content_type.startswith("multipart/form-data"):
            return JSONResponse({"detail": f"expected multipart/form-data with a 'file' field, got "
                                           f"{content_type or 'no content type'}"}, status_code=415)
        # `detail` is a string, as for every other error; the structured list stays available as `errors`.
        errors = jsonable_encoder(exc.errors())
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                           for e in errors) or "invalid request"
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

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
        deadline = _deadline(request)  # the upload is complete: the deadline counts from here
        if len(file) > settings.max_files:
            raise HTTPException(413, f"{len(file)} files; the limit is {settings.max_files} per request")
        service.check_ready()
        service.precheck("classifier")  # overloaded: refuse before spending CPU on decoding
        runner = service.classifier
        datas = [await f.read() for f in file]
        names = [f.filename or f"file{i}" for i, f in enumerate(file)]

        def decode_all(should_stop: Callable[[], str | None]) -> list[torch.Tensor]:
            # Headers first (no pixels decoded): the request's total decode size is checked before any work.
            total = 0
            for name, data in zip(names, datas):
                try:
                    total += open_image(data, settings.max_image_pixels, settings.max_image_decode_bytes
                                        ).decoded_bytes
                except DecodeError as e:
                    raise DecodeError(e.status_code, f"{name}: {e.detail}") from None
            if total > settings.max_request_decode_bytes:
                raise DecodeError(413, f"the images need {total} bytes to decode, over the limit of "
                                       f"{settings.max_request_decode_bytes} bytes per request; send fewer")
            images = []
            for name, data in zip(names, datas):
                try:
                    images.append(runner.decode(data, settings.max_image_pixels, settings.max_image_decode_bytes,
                                                should_stop))
                except DecodeError as e:
                    raise DecodeError(e.status_code, f"{name}: {e.detail}") from None
            return images

        images = await service.decode(request, "classifier", deadline, decode_all)
        probs = await service.run_batched(request, "classifier", images, deadline)
        results = []
        for name, p in zip(names, probs):
            top = int(p.argmax())
            results.append({"filename": name, "label": runner.class_names[top], "confidence": float(p[top]),
                            "probabilities": dict(zip(runner.class_names, p.tolist()))})
        return {"model": runner.name, "results": results}

    @app.post("/transcribe", response_model=TranscribeResponse,
              summary="Transcribe a recording (WAV, FLAC, OGG, MP3; any rate; mono or stereo)",
              responses={**UPLOAD_ERRORS,
                         200: {"description": "JSON (default); a NumPy .npz archive of the same arrays, float32 "
                                              "(format=npz); a MIDI file (format=midi); or the notes as CSV with "
                                              "the header onset,offset,pitch,confidence (format=csv)",
                               "content": {"application/octet-stream": BINARY, "audio/midi": BINARY,
                                           "text/csv": {"schema": {"type": "string"},
                                                        "example": "onset,offset,pitch,confidence\n"
                                                                   "0.26,0.74,69,0.9312\n"}}},
                         422: {"description": "invalid parameters, or frame_threshold over onset_threshold for a "
                                            "frame-only model"},
                         500: _error("internal error, e.g. the model produced non-finite probabilities")})
    async def transcribe(
            request: Request,
            file: Annotated[UploadFile, File(description="audio file")],
            onset_threshold: float | None = Query(
                None, ge=0, le=1, description="a note starts where the onset probability (frame-only models: the "
                                              "frame probability) reaches this; default: the model's calibrated "
                                              "value (GET /models, decoding)"),
            frame_threshold: float | None = Query(
                None, ge=0, le=1, description="a note lasts while the frame probability stays above this; "
                                              "default: the model's calibrated value"),
            min_note_length: float | None = Query(
                None, ge=0, le=60, description="shorter notes are dropped (seconds); default: the model's "
                                               "calibrated value"),
            format: Literal["json", "npz", "midi", "csv"] = Query("json", description="response format"),
    ) -> Response:
        deadline = _deadline(request)  # the upload is complete: the deadline counts from here
        service.check_ready()
        runner = service.transcriber
        decoding = {"onset_threshold": onset_threshold, "frame_threshold": frame_threshold,
                    "min_note_length": min_note_length}
        decoding = {k: float(runner.decoding[k] if v is None else v) for k, v in decoding.items()}
        if "onset" not in runner.heads and decoding["frame_threshold"] > decoding["onset_threshold"]:
            # Frame-only models: a note is a run above frame_threshold that reaches onset_threshold.
            # With an onset head the two thresholds apply to different heads and are independent.
            raise HTTPException(422, f"frame_threshold ({decoding['frame_threshold']:g}) must not exceed "
                                     f"onset_threshold ({decoding['onset_threshold']:g}) for this frame-only model")
        service.precheck("transcriber")  # overloaded: refuse before spending CPU on decoding
        data = await file.read()
        service.precheck("transcriber", await run_in_threadpool(runner.upload_cost, data))  # long audio, early
        windows, n_frames, duration = await service.decode(request, "transcriber", deadline, runner.decode, data,
                                                           settings.max_audio_seconds)
        del data
        window_probs = await service.run_batched(request, "transcriber", list(windows), deadline)

        def finish() -> bytes:
            t = runner.stitch(window_probs, n_frames)
            for head, p in (("frame", t.probabilities), ("onset", t.onsets)):
                if p is not None and not np.isfinite(p).all():
                    raise NonFiniteOutput(f"{int((~np.isfinite(p)).sum())} non-finite {head} probabilities")
            notes = runner.decode_notes(t, **decoding)
            if format == "midi":
                return notes_to_midi(notes)
            if format == "csv":
                return notes_to_csv(notes).encode()
            if format == "npz":
                return transcription_npz(t, notes, duration, runner.sample_rate, runner.frame_rate, decoding)
            return _transcription_json(runner.name, duration, runner.sample_rate, runner.frame_rate, t,
                                       decoding, notes)

        body = await run_in_threadpool(finish)
        media_type, ext = TRANSCRIBE_FORMATS[format]
        headers = {}
        if ext:
            # Only safe characters in the header: the client's file name could hold quotes or non-Latin-1 text.
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(file.filename or "").stem) or "transcription"
            headers["Content-Disposition"] = f'attachment; filename="{stem}.{ext}"'
        return Response(body, media_type=media_type, headers=headers)

    @app.get("/transcribe/stream", summary="Live transcription over a WebSocket: the protocol",
             description=PROTOCOL_DOC)
    async def transcribe_stream_protocol() -> dict[str, Any]:
        return protocol_description(service)

    @app.websocket("/transcribe/stream")
    async def transcribe_stream(websocket: WebSocket) -> None:
        await serve_stream(websocket, service)

    return app


# `uvicorn service.app:app` (configured from DCN_* environment variables; models load at startup).
app = create_app()
