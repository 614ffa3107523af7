"""Adversarial live-stream clients against a real server on loopback (the hardened uvicorn of service/server.py,
WebSocket /transcribe/stream): fast, slow, tiny-message, ping-only, header-less, malformed and invalid UTF-8
clients, and shutdown with streams that never pause. Each test is bounded in time (seconds) and stops its server.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import metric, settings_for
from .test_adversarial import FAST, running
from .test_stream import _int16, _melody


def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/transcribe/stream"


def _until_closed(ws, timeout: float = 20) -> tuple[list[dict], int | None, str]:
    """Every message until the server closes: (messages, close code, reason)."""
    out: list[dict] = []
    try:
        while True:
            out.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed as e:
        return out, (e.rcvd.code if e.rcvd else None), (e.rcvd.reason if e.rcvd else "")
    except TimeoutError:
        return out, None, "timeout"


def _settings(checkpoints, **overrides):
    return settings_for(checkpoints, **{**FAST, "keep_alive_timeout_s": 5.0, **overrides})


def test_fast_client_is_slowed_not_killed(checkpoints):
    """A client sending 20 s of audio as fast as it can, with keep-alive pings every 0.5 s on both sides: read as
    fast as it is transcribed (at most 10 x real time), never killed by a ping timeout; all of it transcribed."""
    pcm = _int16(_melody(8000, 20.0))
    chunk = 320  # 20 ms
    with running(_settings(checkpoints), ws_ping_interval=0.5, ws_ping_timeout=0.5) as (url, _, _), \
            connect(_ws_url(url), ping_interval=0.5, ping_timeout=5) as ws:
        t0 = time.monotonic()
        ws.send(json.dumps({"sample_rate": 8000, "frames": False}))
        assert json.loads(ws.recv(timeout=5))["type"] == "ready"
        for i in range(0, len(pcm), chunk):
            ws.send(pcm[i:i + chunk])
        ws.send(json.dumps({"type": "end"}))
        msgs, code, _ = _until_closed(ws)
        elapsed = time.monotonic() - t0
    assert code == 1000 and msgs[-1]["type"] == "summary" and msgs[-1]["reason"] == "end", (code, elapsed)
    assert msgs[-1]["duration"] == pytest.approx(20.0) and msgs[-1]["notes"]
    assert 20 / 10 - 0.5 < elapsed < 15, elapsed  # faster than real time, no faster than the speed limit


def test_strict_real_time_with_server_pings_does_not_kill_the_stream(checkpoints):
    """``stream_max_speed=1``: the server reads in real time, the client's audio waits in the socket buffers, and so
    do its pongs: the server's keep-alive (every 0.3 s, 0.3 s timeout) must not close the stream for that."""
    settings = _settings(checkpoints, stream_max_speed=1.0, stream_realtime_margin_s=0.2)
    with running(settings, ws_ping_interval=0.3, ws_ping_timeout=0.3) as (url, _, _), \
            connect(_ws_url(url), ping_interval=None) as ws:
        t0 = time.monotonic()
        ws.send(json.dumps({"sample_rate": 8000, "frames": False}))
        json.loads(ws.recv(timeout=5))
        pcm = _int16(_melody(8000, 3.0))
        for i in range(0, len(pcm), 1600):
            ws.send(pcm[i:i + 1600])
        ws.send(json.dumps({"type": "end"}))
        msgs, code, reason = _until_closed(ws)
    assert code == 1000, (code, reason)
    assert msgs[-1]["type"] == "summary" and msgs[-1]["duration"] == pytest.approx(3.0)
    assert time.monotonic() - t0 > 2.5


def test_tiny_messages_are_rate_limited(checkpoints):
    """1-sample messages as fast as possible for 1 s: the server reads at most ``stream_max_messages_per_s`` of
    them per second (plus one burst), so such a client cannot keep a core busy, and with so little audio (far less
    than real time) the stream is closed after the idle timeout, with its summary."""
    rate, idle = 100, 2.0
    settings = _settings(checkpoints, stream_max_messages_per_s=rate, stream_idle_timeout_s=idle)
    with running(settings) as (url, _, _), connect(_ws_url(url)) as ws:
        ws.send(json.dumps({"sample_rate": 8000}))
        json.loads(ws.recv(timeout=5))
        t0 = time.monotonic()
        sent = 0
        try:
            while time.monotonic() - t0 < 1.0:
                ws.send(b"\x00\x00")
                sent += 1
        except ConnectionClosed:
            pass
        msgs, code, _ = _until_closed(ws)
        elapsed = time.monotonic() - t0
    assert code == 1008 and msgs[-1]["type"] == "summary" and msgs[-1]["reason"] == "idle"
    assert elapsed < idle + 3, elapsed
    read = msgs[-1]["duration"] * 8000  # one sample per message
    assert sent > 5 * (rate * elapsed + rate) and read <= rate * elapsed + rate + 5, (sent, read, elapsed)


def test_ping_only_and_header_less_streams_release_their_slot(checkpoints):
    """A stream that only pings is closed after the idle timeout (summary, 1008); a connection that never sends
    its header is closed after the header timeout and holds no stream slot meanwhile."""
    settings = _settings(checkpoints, stream_max_concurrent=1, stream_idle_timeout_s=1.0,
                         stream_header_timeout_s=1.0)
    with running(settings) as (url, _, app):
        with connect(_ws_url(url)) as silent:
            with connect(_ws_url(url)) as ws:  # the one slot is free although `silent` is open
                ws.send(json.dumps({"sample_rate": 8000}))
                assert json.loads(ws.recv(timeout=5))["type"] == "ready"
                t0 = time.monotonic()
                stop = threading.Event()

                def pinger() -> None:
                    try:
                        while not stop.is_set():
                            ws.send(json.dumps({"type": "ping", "time": time.monotonic()}))
                            time.sleep(0.1)
                    except ConnectionClosed:
                        pass
                thread = threading.Thread(target=pinger)
                thread.start()
                msgs, code, reason = _until_closed(ws)
                stop.set()
                thread.join()
                assert code == 1008 and msgs[-1]["type"] == "summary" and msgs[-1]["reason"] == "idle"
                assert time.monotonic() - t0 < 3
            msgs, code, reason = _until_closed(silent)
            assert code == 1008 and "header" in reason
        assert app.state.service.streams_active == 0


@pytest.mark.parametrize("header,message,code", [
    ({"sample_rate": 1}, None, 1007),                       # a few bytes would be hours of audio
    ({"sample_rate": 8000, "format": {}}, None, 1007),
    ({"sample_rate": 8000, "format": []}, None, 1007),
    ("[" * 2000 + "]" * 2000, None, 1007),                  # nested too deeply
    ({"sample_rate": 8000}, '{"type": "ping", "time": NaN}', 1007),
    ({"sample_rate": 8000}, '{"type": "ping", "time": 1e999}', 1007),
    ({"sample_rate": 8000}, "[" * 2000 + "]" * 2000, 1007),
    ({"sample_rate": 8000}, "{" * 2000, 1003),               # not JSON: text where audio was expected
    ({"sample_rate": 8000}, "[]", 1003),
    ({"sample_rate": 8000}, b"\x00\x00" * 8000 * 3, 1009),  # 3 s of audio in one message, the limit is 2 s
])
def test_malformed_stream_messages_are_closed_without_a_traceback(checkpoints, caplog, header, message, code):
    with running(_settings(checkpoints)) as (url, _, _):
        with caplog.at_level(logging.INFO), connect(_ws_url(url)) as ws:
            ws.send(header if isinstance(header, str) else json.dumps(header))
            if message is not None:
                assert json.loads(ws.recv(timeout=5))["type"] == "ready"
                ws.send(message)
            msgs, got, reason = _until_closed(ws)
        assert got == code, (got, reason)
        assert msgs[-1]["type"] == "error" and msgs[-1]["code"] == code
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_invalid_utf8_is_1007_and_logged_once(checkpoints, caplog):
    with running(_settings(checkpoints)) as (url, _, _), caplog.at_level(logging.INFO):
        with connect(_ws_url(url)) as ws:
            ws.send(json.dumps({"sample_rate": 8000}))
            json.loads(ws.recv(timeout=5))
            # One invalid frame: the server answers it with 1007 and closes. (A client that keeps sending after
            # that races the close: the server's socket is gone and the client may see a reset, not the frame.)
            ws.send(b"\xff\xfe", text=True)
            _, code, _ = _until_closed(ws)
        assert code == 1007
    lines = [r for r in caplog.records if "UTF-8" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and not lines[0].exc_info
    assert "Traceback" not in caplog.text


def test_shutdown_ends_every_stream_with_its_summary(checkpoints):
    """Four streams that send 20 ms chunks in real time and never pause; shutdown starts (as on SIGTERM): each is
    told to end (summary with reason shutdown, close 1001) within the grace period."""
    servers: list = []
    results: list[tuple] = []
    with running(_settings(checkpoints, shutdown_grace_s=5.0), servers) as (url, _, _):
        started = threading.Barrier(5)

        def stream() -> None:
            pcm = _int16(_melody(8000, 30.0))
            with connect(_ws_url(url)) as ws:
                ws.send(json.dumps({"sample_rate": 8000, "frames": False}))
                json.loads(ws.recv(timeout=5))
                reader = threading.Thread(target=lambda: results.append(_until_closed(ws)))  # reads meanwhile
                reader.start()
                started.wait(timeout=10)
                t0 = time.monotonic()
                try:
                    for k, i in enumerate(range(0, len(pcm), 160)):
                        if not reader.is_alive():
                            break
                        ws.send(pcm[i:i + 160])
                        time.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
                except ConnectionClosed:
                    pass
                reader.join(timeout=10)

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait(timeout=10)
        time.sleep(1.0)
        t0 = time.monotonic()
        servers[0].handle_exit(2, None)  # SIGINT's handler: the drain (as SIGTERM)
        for t in threads:
            t.join(timeout=15)
        assert time.monotonic() - t0 < 5
    assert len(results) == 4
    for msgs, code, reason in results:
        assert code == 1001, (code, reason)
        summary = [m for m in msgs if m["type"] == "summary"]
        assert summary and summary[0]["reason"] == "shutdown" and summary[0]["duration"] > 0.5


def test_slots_and_upload_capacity_are_accounted_together(checkpoints, monkeypatch):
    """A stream is refused (1013) while the transcriber's queue cannot take more work (uploads filled it)."""
    from service.batcher import QueueFull

    with running(_settings(checkpoints)) as (url, _, app):
        batcher = app.state.service.batchers["transcriber"]

        def full(*args, **kwargs):
            raise QueueFull("transcriber queue is full (1024 items waiting)")
        monkeypatch.setattr(batcher, "precheck", full)
        with connect(_ws_url(url)) as ws:
            ws.send(json.dumps({"sample_rate": 8000}))
            _, code, reason = _until_closed(ws)
        assert code == 1013 and "overloaded" in reason
        assert metric(httpx.get(f"{url}/metrics").text, "dcn_streams_total", outcome="overloaded") == 1
