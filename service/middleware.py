"""ASGI middlewares, outermost first: RequestId (X-Request-ID in, out and in the logs) -> MetricsMiddleware (counts
and times every response) -> Hardening (header count, security headers, HEAD, draining) -> UploadGuard (body
size and upload timeouts while reading)."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import new_request_id, request_id
from .metrics import Metrics, method_label

if TYPE_CHECKING:
    from .state import Service

UPLOAD_ROUTES = ("/classify", "/transcribe")
ARRIVAL = "dcn.arrival"  # scope key: monotonic time the request arrived
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", b"frame-ancestors 'none'")]


class RequestId:
    """Every request gets an id: the client's X-Request-ID when it is short and plain, else a new one. It is sent
    back in X-Request-ID and is on every log record written while the request is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        rid = new_request_id(Headers(scope=scope).get("x-request-id"))
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


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
            route = route_label(scope)
            self.metrics.requests.labels(route, method_label(scope["method"]), str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def route_label(scope: Scope) -> str:
    """The route template (or mount path) that served the request, never the raw path: unknown paths must not
    create new label values. FastAPI's own routes (/docs, /openapi.json) and mounts do not set scope["route"]."""
    route = scope.get("route")
    if route is None and scope.get("app") is not None:
        for candidate in scope["app"].router.routes:
            if candidate.matches(scope)[0] == Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None) or "unmatched"

