"""The FastAPI app: ``create_app(settings)`` assembles it; the lifespan loads, warms up and batches the served
models. Where things are:

    service/state.py        Service: runners, batchers, readiness, draining; decode pool and batcher calls within
                            a request's deadline
    service/middleware.py   request id, metrics, hardening (headers, HEAD, draining), upload limits and timeouts
    service/responses.py    JSON errors: documented error responses and the exception handlers
    service/routes/         the routes: ops.py (health, /models, /metrics, /docs, /v2), classify.py, transcribe.py

Request path: request id -> metrics -> header count, security headers, HEAD, draining (Hardening) -> body size
limit and upload timeouts while reading (UploadGuard) -> multipart parse -> unknown query parameters refused ->
deadline starts -> queue precheck (503 before any decoding when overloaded) -> decode in a bounded pool (deadline,
disconnect and shutdown honoured) -> batcher (bounded queue, admission by deadline, dynamic batches, dropped on
disconnect) -> JSON / npz / MIDI / CSV. Connection-level limits (head size and timeout, keep-alive, connection
count, graceful SIGTERM): service/server.py.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from .guard import LoadShedder, OriginGuard
from .metrics import VERSION, Metrics
from .middleware import Hardening, MetricsMiddleware, RequestId, UploadGuard
from .responses import add_exception_handlers
from .routes import include_routes, reject_unknown_query
from .routes.ops import DOCS_ASSETS, STATIC_DIR, swagger_ui_dir
from .settings import Settings, settings_error
from .state import Service

log = logging.getLogger("service")


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

    app = FastAPI(title="Deep Complex Networks", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  dependencies=[Depends(reject_unknown_query)],
                  description="Complex-valued CIFAR-10 classifier and music transcriber, served with dynamic "
                              "batching. Errors are JSON: `{\"detail\": \"...\"}`. Every response carries an "
                              "`X-Request-ID` (yours when you send one).")
    app.state.service = service
    app.state.metrics = metrics
    app.add_middleware(LoadShedder, service=service)
    app.add_middleware(OriginGuard, allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins)
    app.add_middleware(UploadGuard, max_bytes=settings.max_upload_bytes, body_timeout_s=settings.body_timeout_s,
                       upload_timeout_s=settings.upload_timeout_s)
    app.add_middleware(Hardening, service=service, max_header_count=settings.max_header_count)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestId)
    add_exception_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    if (assets := swagger_ui_dir()) is not None:  # /docs without a CDN: Swagger UI from an installed package
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    include_routes(app, service)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.app:app`: built on first access from the DCN_* environment; a bad setting is one line.
    if name != "app":
        raise AttributeError(name)
    global app
    try:
        app = create_app()
    except ValidationError as e:
        raise SystemExit(f"error: {settings_error(e)}") from None
    return app
