"""In front of the routes: who may talk to the service from a browser (Host and Origin checks, OriginGuard), and
which uploads are refused before their body is read when the service is overloaded (LoadShedder).

- Host (DNS rebinding): a page on an attacker's domain that resolves to 127.0.0.1 sends ``Host: evil.example``.
  A server bound to a loopback address therefore answers only requests whose Host is a loopback name (``localhost``,
  ``127.0.0.1``, ``[::1]``; any port), unless ``DCN_ALLOWED_HOSTS`` lists names (``*``: any). A server bound to
  another address accepts any Host unless the list is set (a proxy or an Ingress decides which names reach it).
  Refused: 400.
- Origin (cross-site pages): browsers send ``Origin`` with WebSocket handshakes and cross-origin POSTs (a form on
  any site can POST multipart to /transcribe and make this server run inference). A request whose ``Origin`` is not
  the service's own (same host and port as ``Host``) nor in ``DCN_ALLOWED_ORIGINS`` is refused: POST 403, the
  WebSocket handshake 403. Requests without ``Origin`` (curl, scripts, the Python client) are not browsers'
  cross-site requests and pass; GET/HEAD are answered (read-only, and the browser keeps their answer from the page
  anyway). The demo page is same-origin, so the default (no extra origins) serves it.
"""
from __future__ import annotations

import ipaddress
import math
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = {"localhost", "localhost.", "127.0.0.1", "::1"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _hostname(host: str) -> str:
    """``Host`` header -> lower-case name without the port (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class OriginGuard:
    """ASGI middleware: the Host and Origin rules of the module doc."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], allowed_origins: list[str]) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.hosts = {h.lower().rstrip(".") for h in allowed_hosts}
        self.any_origin = "*" in allowed_origins
        self.origins = {o.lower().rstrip("/") for o in allowed_origins}

    def host_allowed(self, host: str, server: tuple | None) -> bool:
        if self.any_host:
            return True
        name = _hostname(host).rstrip(".")
        if self.hosts:
            return name in self.hosts
        if server and _is_loopback(str(server[0])):  # bound to loopback: only loopback names
            return name in LOOPBACK_NAMES or _is_loopback(name)
        return True

    def origin_allowed(self, origin: str, host: str) -> bool:
        if self.any_origin:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        return origin != "null" and urlsplit(origin).netloc == host.strip().lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        why = None
        if not self.host_allowed(host, scope.get("server")):
            why = 400, f"Host {host[:100]!r} is not served here (DCN_ALLOWED_HOSTS)"
        elif (origin := headers.get("origin")) is not None and not self.origin_allowed(origin, host) and (
                scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS):
            why = 403, f"cross-origin requests from {origin[:100]!r} are not allowed (DCN_ALLOWED_ORIGINS)"
        if why is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # closing before accepting: the handshake is answered 403
            return await send({"type": "websocket.close", "code": 1008, "reason": why[1][:120]})
        await JSONResponse({"detail": why[1]}, status_code=why[0], headers={"Connection": "close"})(
            scope, receive, send)


UPLOAD_MODELS = {"/classify": "classifier", "/transcribe": "transcriber"}


class LoadShedder:
    """Overload: an upload is refused (503 + Retry-After + Connection: close) before its body is read or parsed when
    its model's queue is full or its backlog alone exceeds the deadline, or when the uploads waiting in its decode pool
    would take longer than that. Clients that retry without backoff then cost a request head each, not a
    multipart parse and a decode, and the work already admitted keeps finishing (goodput does not collapse)."""

    def __init__(self, app: ASGIApp, service: Any) -> None:
        self.app, self.service = app, service

    def _refusal(self, model: str) -> tuple[str, str, float] | None:
        """(reason label, detail, retry after seconds) when the upload is to be refused now."""
        from .batcher import QueueFull

        service = self.service
        batcher = service.batchers.get(model)
        if batcher is None or not service.is_ready:
            return None  # the route answers (not ready, shutting down)
        try:
            batcher.precheck(service.settings.request_timeout_s)
        except QueueFull as e:
            return "queue_full", f"{e}; retry later", e.retry_after
        except Exception:  # noqa: BLE001 - stopped: the route says so
            return None
        pool, timeout = service.decoder[model], service.settings.request_timeout_s
        if (wait := pool.wait_s()) > service.settings.admission_margin * timeout:
            return "decode_busy", (f"{pool.waiting} uploads are waiting to be decoded, about {wait:.0f} s of work, "
                                   f"more than this request's deadline allows; retry later"), wait / 2
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = UPLOAD_MODELS.get(scope.get("path", "")) if scope["type"] == "http" else None
        refusal = self._refusal(model) if model is not None and scope["method"] == "POST" else None
        if refusal is None:
            return await self.app(scope, receive, send)
        reason, detail, retry_after = refusal
        scope["route"] = SimpleNamespace(path=scope["path"])  # the metrics' route label: the route it was meant for
        self.service.metrics.rejected.labels(model, reason).inc()
        await JSONResponse({"detail": detail}, status_code=503, headers={
            "Retry-After": str(max(1, math.ceil(retry_after))), "Connection": "close"})(scope, receive, send)
