"""Who may talk to the service from a browser: Host and Origin checks, in front of every route.

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
