"""uvicorn, hardened: the h11 parser with a header size limit and a header timeout, a connection limit,
keep-alive timeout, and a graceful SIGTERM (``python -m service`` and the tests build servers here).

- Request heads: at most ``max_header_bytes`` (431 and closed; h11 enforces it too), complete within
  ``header_timeout_s`` of the connection opening or of the previous response (else closed; 408 when part of
  a head had arrived). Silent and half-open connections are closed this way.
- ``max_connections``: uvicorn's ``limit_concurrency`` (more connections or requests: 503 at once).
- SIGTERM / SIGINT: the service starts draining (``Service.begin_shutdown``): /readyz answers 503, new
  uploads get 503 + Retry-After + Connection: close while the listening socket stays open, requests in flight
  get ``shutdown_grace_s`` to finish and are then answered 503 + Retry-After; then uvicorn shuts down.
  A second SIGINT forces the exit.
"""
from __future__ import annotations

import asyncio
import json
import logging
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings

log = logging.getLogger("service")


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head and a head size limit with a 431."""

    header_timeout_s = 10.0
    max_header_bytes = 16_384

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes, self._tail = 0, b""
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes, self._tail = 0, b""

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._head_bytes:  # part of a head arrived: say why before closing
            self.transport.write(_raw_response(408, "Request Timeout", f"request head not complete within "
                                                                       f"{self.header_timeout_s:g} s"))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_head_timer()
            before = self._head_bytes - len(self._tail)  # bytes of this head before ``window``
            self._head_bytes += len(data)
            window, self._tail = self._tail + data, data[-3:]
            # the head's size: up to its end when this chunk ends it (the rest of the chunk may be a body)
            end = window.find(b"\r\n\r\n")
            head = self._head_bytes if end < 0 else before + end + 4
            if head > self.max_header_bytes:
                self._disarm_head_timer()
                self.transport.write(_raw_response(431, "Request Header Fields Too Large",
                                                   f"request head over {self.max_header_bytes} bytes"))
                self.transport.close()
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The keep-alive timer closes a connection that stays silent; this one, one that starts a head slowly.
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    return type("ServiceH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": settings.header_timeout_s,
                                                              "max_header_bytes": settings.max_header_bytes})


def uvicorn_config(app: Any, settings: Settings, host: str | None = None, port: int | None = None,
                   **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": settings.host if host is None else host, "port": settings.port if port is None else port,
        "http": protocol_for(settings), "h11_max_incomplete_event_size": settings.max_header_bytes + 8192,
        "timeout_keep_alive": settings.keep_alive_timeout_s, "limit_concurrency": settings.max_connections,
        "ws_max_size": settings.stream_max_message_bytes,  # WebSocket /transcribe/stream: 1009 beyond
        # our own drain (GracefulServer) runs the grace period; this is only the last wait after it
        "timeout_graceful_shutdown": 5, "log_level": settings.log_level.lower(), "lifespan": "on"}
    options.update(overrides)
    return uvicorn.Config(app, **options)


class GracefulServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: drain (see the module doc), then the usual uvicorn shutdown."""

    def __init__(self, config: uvicorn.Config, service: Any, grace_s: float) -> None:
        super().__init__(config)
        self.service, self.grace_s = service, grace_s
        self._draining: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is None and self._loop is not None and not self.should_exit:
            self._captured_signals.append(sig)
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self.drain())

    async def drain(self) -> None:
        log.info("shutting down: not ready; requests in flight have %.0f s to finish", self.grace_s)
        try:
            await self.service.begin_shutdown(self.grace_s)
        finally:
            self.should_exit = True


def run(app: Any, settings: Settings, host: str, port: int, **overrides: Any) -> None:
    server = GracefulServer(uvicorn_config(app, settings, host, port, **overrides), app.state.service,
                            settings.shutdown_grace_s)
    server.run()
    if not server.started:
        raise SystemExit(3)  # startup failed (uvicorn.run's exit status for it); the cause is logged in one line
