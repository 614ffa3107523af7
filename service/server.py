"""uvicorn, hardened: the h11 parser with a header size limit and a header timeout, a connection limit,
keep-alive timeout, and a graceful SIGTERM (``python -m service`` and the tests build servers here).

- Request heads: at most ``max_header_bytes`` (431 and closed; h11 enforces it too), complete within
  ``header_timeout_s`` of the connection opening or of the previous response (else closed; 408 when part of
  a head had arrived). Silent and half-open connections are closed this way.
- ``max_connections``: uvicorn's ``limit_concurrency`` (more connections or requests: 503 at once), except for
  the probes (GET/HEAD /healthz, /readyz): they are answered whatever the count, so a flood of idle connections
  cannot make a healthy replica look dead. At the limit a new connection evicts the oldest one that has not
  started a request (silent, or idle between keep-alive requests); from half the limit on, new and idle
  connections get ``header_timeout_pressure_s`` instead of ``header_timeout_s``.
- ``Content-Length`` together with ``Transfer-Encoding`` (request smuggling, RFC 9112 6.3): 400 and closed. Every
  malformed request is a JSON 400 that closes the connection. No ``server:`` header.
- WebSockets (``GuardedWebSocketProtocol``): a text frame that is not UTF-8 closes with 1007 and is logged once,
  as a line (not a traceback); a keep-alive ping is not failed while the application itself holds the socket's
  reading paused (a stream throttled for sending faster than real time: its pong waits behind the audio);
  no per-message compression (audio does not compress; inflating costs CPU and is a bomb vector).
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
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .settings import Settings

log = logging.getLogger("service")
PROBE_PATHS = ("/healthz", "/readyz")  # cheap, no I/O: served even over the connection limit


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class StrictH11Connection(h11.Connection):
    """h11 plus the framing check it lacks: a request with both Content-Length and Transfer-Encoding is an error
    (uvicorn answers a RemoteProtocolError with 400 and closes), so nothing can be smuggled behind its body."""

    def next_event(self):  # type: ignore[no-untyped-def]
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                self._dcn_error = ("a request with both Content-Length and Transfer-Encoding is ambiguous "
                                   "(RFC 9112, 6.3); send one of them")
                raise h11.RemoteProtocolError(self._dcn_error)
        return event


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head and a head size limit with a 431, probes
    exempt from the connection limit, eviction of idle connections at the limit, CL+TE refused (module doc)."""

    header_timeout_s = 10.0
    header_timeout_pressure_s = 1.0
    max_header_bytes = 16_384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.__class__ = StrictH11Connection

    # uvicorn checks ``self.limit_concurrency`` right after building the request's scope: the probes see none.
    @property
    def limit_concurrency(self) -> int | None:  # type: ignore[override]
        scope = self.scope
        if scope is not None and scope["path"] in PROBE_PATHS and scope["method"] in ("GET", "HEAD"):
            return None
        return self._limit

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:
        self._limit = value

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes, self._tail = 0, b""
        self._head_timer: asyncio.TimerHandle | None = None
        self._opened = self.loop.time()
        if self._limit is not None and len(self.connections) >= self._limit:  # uvicorn refuses at >= limit
            self._evict_idle()
        self._arm_head_timer()

    def _idle(self) -> bool:
        """No request started on this connection (nothing of a head received, none being answered)."""
        return (not self.transport.is_closing() and self.conn.their_state is h11.IDLE and not self._head_bytes
                and (self.cycle is None or self.cycle.response_complete))

    def _evict_idle(self) -> None:
        """At the connection limit: close the oldest idle connection, so a new client gets its slot."""
        idle = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c._idle()]
        if idle:
            min(idle, key=lambda c: c._opened).transport.close()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            pressure = self._limit is not None and len(self.connections) * 2 >= self._limit
            timeout = min(self.header_timeout_s, self.header_timeout_pressure_s) if pressure else self.header_timeout_s
            self._head_timeout_s = timeout
            self._head_timer = self.loop.call_later(timeout, self._head_timeout)

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
                                                                       f"{self._head_timeout_s:g} s"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """Malformed requests (h11 errors, CL+TE): a JSON 400, as every other error, then closed."""
        detail = getattr(self.conn, "_dcn_error", None) or msg
        self.transport.write(_raw_response(400, "Bad Request", detail))
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


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, with invalid UTF-8 logged once per connection (no traceback) and a keep-alive
    that does not fail a peer whose pong the application keeps unread on purpose (see the module doc)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._bad_utf8_logged = False
        self._data_since_ping = False

    def data_received(self, data: bytes) -> None:
        self._data_since_ping = True
        super().data_received(data)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError as e:
                self.frames = []
                if not self._bad_utf8_logged:
                    self._bad_utf8_logged = True
                    log.warning("WebSocket %s: text message is not UTF-8 (%s); closed with 1007",
                                self.scope.get("path"), e.reason)
                self.conn.send_close(1007, "text messages must be UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def send_keepalive_ping(self) -> None:
        self._data_since_ping = False
        super().send_keepalive_ping()

    def keepalive_timeout(self) -> None:
        if self.read_paused or self._data_since_ping:
            # The peer is sending; its pong is queued behind messages the application has not read yet
            # (back-pressure). The application's own idle timeout ends a stream whose client went silent.
            self.pong_timer, self.pending_ping_payload = None, None
            self.schedule_ping()
            return
        super().keepalive_timeout()


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    return type("ServiceH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s, "max_header_bytes": settings.max_header_bytes,
        "header_timeout_pressure_s": settings.header_timeout_pressure_s})


def uvicorn_config(app: Any, settings: Settings, host: str | None = None, port: int | None = None,
                   **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": settings.host if host is None else host, "port": settings.port if port is None else port,
        "http": protocol_for(settings), "h11_max_incomplete_event_size": settings.max_header_bytes + 8192,
        "timeout_keep_alive": settings.keep_alive_timeout_s, "limit_concurrency": settings.max_connections,
        "ws_max_size": settings.stream_max_message_bytes,  # WebSocket /transcribe/stream: 1009 beyond
        "ws": GuardedWebSocketProtocol, "ws_per_message_deflate": False, "server_header": False,
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
            # Live streams have sent their summary and close frame; uvicorn's shutdown would now close their sockets
            # while the client may still be sending (a reset, which can discard the summary before the client reads
            # it). Wait, briefly, for the clients to answer the close.
            until = self._loop.time() + 2.0
            while self._loop.time() < until and any(
                    isinstance(c, GuardedWebSocketProtocol) and c.close_sent and not c.transport.is_closing()
                    for c in self.server_state.connections):
                await asyncio.sleep(0.02)
        finally:
            self.should_exit = True


def run(app: Any, settings: Settings, host: str, port: int, **overrides: Any) -> None:
    server = GracefulServer(uvicorn_config(app, settings, host, port, **overrides), app.state.service,
                            settings.shutdown_grace_s)
    server.run()
    if not server.started:
        raise SystemExit(3)  # startup failed (uvicorn.run's exit status for it); the cause is logged in one line
