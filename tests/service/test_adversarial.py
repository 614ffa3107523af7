"""Adversarial clients against a real server on loopback (hardened uvicorn, service/server.py): decompression
bombs, huge and many headers, silent / slow / half-sent connections, absurd audio, disconnects, overload with a
small queue, long recordings past the deadline, SIGTERM under load. Each test checks the statuses, that every
request is answered (nothing lost), that /readyz stays 200 (except while shutting down) and a ceiling on RSS
growth. Servers run on 127.0.0.1 free ports and are stopped by the tests; the whole file takes well under 3 min.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.checkpoint import register_architecture
from service.app import create_app
from service.server import GracefulServer, uvicorn_config
from service.settings import Settings

from .conftest import audio_bytes, free_port, image_bytes, metric, settings_for, tone, wait_ready

ROOT = Path(__file__).resolve().parents[2]
MB = 2**20


def rss() -> int:
    """Resident set size of this process (the in-thread servers live here), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def running(settings: Settings, server_out: list | None = None, **overrides) -> Iterator[tuple[str, int, object]]:
    """The hardened server (as ``python -m service`` runs it) in a thread on a free loopback port; ``overrides``:
    uvicorn options; ``server_out`` receives the GracefulServer (to start its shutdown)."""
    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = GracefulServer(uvicorn_config(app, settings, **{"log_level": "warning", **overrides}),
                            app.state.service, settings.shutdown_grace_s)
    if server_out is not None:
        server_out.append(server)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", port, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


FAST = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "keep_alive_timeout_s": 1.0, "upload_timeout_s": 5.0,
        "max_connections": 200, "decode_concurrency": 2, "warmup": False}


@pytest.fixture(scope="module")
def server(checkpoints):
    with running(settings_for(checkpoints, **FAST)) as s:
        yield s


def _ready(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=10).status_code


def _png_bomb(width: int, height: int, bit_depth: int = 16, color_type: int = 6) -> bytes:
    """A valid PNG of zeros, streamed through zlib so the raw image never exists in memory here either."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\0" * (1 + width * channels * bit_depth // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _raw(port: int, data: bytes, timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if data:
        s.sendall(data)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def test_image_bombs_are_bounded(server):
    url, _, _ = server
    bomb = _png_bomb(6300, 6300)  # 16-bit RGBA, 39.7 MP: under the pixel limit, ~320 MB to decode
    assert len(bomb) < 400_000
    over = _png_bomb(7000, 7000, 8, 2)  # 49 MP: over the pixel limit, refused from the header
    before = rss()
    with httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(c.post, "/classify", files={"file": ("bomb.png", bomb)}) for _ in range(4)]
        futures += [pool.submit(c.post, "/classify", files={"file": ("over.png", over)}) for _ in range(4)]
        ready_during = _ready(url)
        replies = [f.result() for f in futures]
        assert [r.status_code for r in replies] == [200] * 4 + [400] * 4, [r.text[:200] for r in replies]
        assert all("over the limit" in r.json()["detail"] for r in replies[4:])
        # more than the per-request decode budget in one request: 413 before anything is decoded
        r = c.post("/classify", files=[("file", (f"{i}.png", bomb)) for i in range(4)])
        assert r.status_code == 413 and "per request" in r.json()["detail"]
        # a decoded-size limit per image: the same file over a lower limit is refused from its header
    grown = rss() - before
    assert ready_during == 200 and _ready(url) == 200
    # 2 decodes at a time (decode_concurrency) of ~320 MB each; without the pool, 4 at once would pass 1.2 GB
    assert grown < 900 * MB, f"RSS grew {grown / MB:.0f} MB"


def test_decode_bytes_limit_and_damaged_images(checkpoints):
    with running(settings_for(checkpoints, **FAST, max_image_decode_bytes=50 * MB)) as (url, _, _), \
            httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/classify", files={"file": ("b.png", _png_bomb(4000, 4000, 8, 2))})
        assert r.status_code == 400 and "bytes to decode" in r.json()["detail"]
        png = image_bytes("PNG", size=(64, 64))
        bad_crc = png[:29] + bytes([png[29] ^ 0xFF]) + png[30:]  # IHDR CRC broken
        jpeg = image_bytes("JPEG", size=(64, 64))
        for name, data in (("crc.png", bad_crc), ("header-only.png", png[:33]), ("cut.jpg", jpeg[:200]),
                           ("cut.gif", image_bytes("GIF")[:20])):
            r = c.post("/classify", files={"file": (name, data)})
            assert r.status_code == 400, (name, r.status_code, r.text)
        assert c.post("/classify", files={"file": ("x.tiff", image_bytes("TIFF"))}).status_code == 415


def test_mpo_photo_is_classified(server):
    import io

    from PIL import Image
    buf = io.BytesIO()
    first, second = Image.new("RGB", (64, 48), (0, 0, 255)), Image.new("RGB", (64, 48), (255, 0, 0))
    first.save(buf, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    r = httpx.post(f"{server[0]}/classify", files={"file": ("phone.jpg", buf.getvalue())}, timeout=30)
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "blue", r.text


def test_audio_bombs_and_absurd_audio(server):
    url, _, _ = server
    import io

    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, np.zeros((120 * 384_000,), np.int16), 384_000, format="FLAC")  # 120 s at 384 kHz, ~0.5 MB
    flac = buf.getvalue()
    before = rss()
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/transcribe", files={"file": ("hi-rate.flac", flac)})
        assert r.status_code == 200 and abs(r.json()["duration"] - 120) < 0.01, r.text[:300]
        grown = rss() - before
        # resampled while decoding: never 46M samples at 384 kHz (184 MB as float32) held at once
        assert grown < 150 * MB, f"RSS grew {grown / MB:.0f} MB"
        cases = [
            (audio_bytes(np.full(800, np.nan, np.float32), sr=8000, subtype="FLOAT"), 400, "NaN"),
            (audio_bytes(np.full(800, np.inf, np.float32), sr=44100, subtype="FLOAT"), 400, "infinite"),
            (audio_bytes(tone(sr=44100) * np.float32(3e38), sr=44100, subtype="FLOAT"), 200, ""),
            (audio_bytes(tone(sr=8000))[:40], 400, "damaged"),            # header cut short
            (_wav_rate_zero(), 400, ""),                                   # WAV with rate 0
            (audio_bytes(tone(sr=8000), sr=8000, fmt="OGG", subtype="VORBIS")[:60], 400, ""),  # truncated OGG
        ]
        for data, status, words in cases:
            r = c.post("/transcribe", files={"file": ("x.wav", data)})
            assert r.status_code == status, (status, r.text)
            body = json.loads(r.content, parse_constant=lambda x: pytest.fail(f"{x} in JSON"))
            assert words in (body.get("detail") or "")
    assert _ready(url) == 200


def _wav_rate_zero() -> bytes:
    data = bytearray(audio_bytes(tone(sr=8000), sr=8000))
    data[24:28] = struct.pack("<I", 0)  # sample rate
    data[28:32] = struct.pack("<I", 0)  # byte rate
    return bytes(data)


def test_huge_and_many_headers(server):
    url, port, _ = server
    t0 = time.monotonic()
    s = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
    try:
        for _ in range(64):  # 64 x 16 KB of one header: refused after the first 16 KB, not read to the end
            s.sendall(b"X-Big: " + b"a" * 16_000 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = _read_all(s)
    s.close()
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert time.monotonic() - t0 < 5
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    s = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n")
    reply = _read_all(s)
    s.close()
    assert reply.startswith(b"HTTP/1.1 431") and b"limit is 100" in reply, reply[:200]
    for size in (20_000, 60_000):  # a whole head over the limit in one chunk, its end included: 431 too
        s = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        reply = _read_all(s)
        s.close()
        assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    s = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Ok: " + b"a" * 15_000
               + b"\r\n\r\n")
    reply = _read_all(s)  # just under the limit
    s.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
    assert _ready(url) == 200


def test_silent_slow_and_half_sent_connections_are_closed(server):
    url, port, _ = server
    silent = [_raw(port, b"", timeout=5) for _ in range(50)]
    slow_head = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never finishes its head
    slow_body = _raw(port, b"POST /classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                           b"Content-Length: 100000\r\n\r\n--b\r\n")  # then nothing
    t0 = time.monotonic()
    r = httpx.get(f"{url}/healthz", timeout=5)  # others are served meanwhile
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    for s in silent:
        assert _read_all(s) == b""  # closed by the server (header timeout 1 s), nothing said
        s.close()
    assert _read_all(slow_head).startswith(b"HTTP/1.1 408")
    assert _read_all(slow_body).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < 5
    # an idle keep-alive connection is closed after the keep-alive timeout
    s = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    t0 = time.monotonic()
    reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 200") and time.monotonic() - t0 < 4
    slow_head.close(), slow_body.close(), s.close()
    assert _ready(url) == 200


def test_head_and_security_headers(server):
    url, _, _ = server
    for path in ("/healthz", "/readyz", "/models", "/metrics", "/"):
        r = httpx.head(url + path, timeout=10)
        assert r.status_code == 200 and r.content == b"", path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    models = httpx.get(f"{url}/models", timeout=10).json()["models"]
    text = json.dumps(models)
    assert all(not m["checkpoint"].startswith("/") for m in models)
    assert '"/' not in text.replace('"/classify"', "").replace('"/transcribe"', "") and "command" not in text


def test_disconnect_during_upload_counts_499(server):
    url, port, _ = server
    text = httpx.get(f"{url}/metrics").text
    before, before_400 = (metric(text, "dcn_requests_total", route="/classify", status=s) for s in ("499", "400"))
    s = _raw(port, b"POST /classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                   b"Content-Length: 100000\r\n\r\n--b\r\n" + b"x" * 1000)
    time.sleep(0.2)
    s.close()
    deadline = time.monotonic() + 5
    while metric(httpx.get(f"{url}/metrics").text, "dcn_requests_total", route="/classify", status="499") == before:
        assert time.monotonic() < deadline, "disconnect during upload not counted as 499"
        time.sleep(0.05)
    assert metric(httpx.get(f"{url}/metrics").text, "dcn_requests_total", route="/classify", status="400") == before_400


def test_slow_upload_does_not_eat_the_deadline(checkpoints):
    """The deadline counts from the end of the upload: a 2 s upload to an idle server with a 1 s deadline is served."""
    with running(settings_for(checkpoints, **{**FAST, "body_timeout_s": 3.0}, request_timeout_s=1.0)) as (_, port, _):
        body, boundary = b"", "b"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + image_bytes() + f"\r\n--{boundary}--\r\n".encode()
        s = _raw(port, (f"POST /classify HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: multipart/form-data; "
                        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:50])
        time.sleep(2.0)
        s.sendall(body[50:])
        reply = _read_all(s)
        s.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]


def test_422_detail_is_a_string(server):
    r = httpx.post(f"{server[0]}/transcribe?onset_threshold=2", files={"file": ("x.wav", audio_bytes())}, timeout=10)
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and "onset_threshold" in r.json()["detail"]
    assert isinstance(r.json()["errors"], list)


def test_overload_with_a_small_queue(slow_checkpoints):
    """30 concurrent requests at a 0.4 s-per-batch classifier with room for 4 images: every request answered,
    200 or 503 + Retry-After, refused ones cheaply (before decoding); readiness unaffected."""
    settings = settings_for(slow_checkpoints, **FAST, max_queue_size=4, classify_max_batch_size=4,
                            classify_max_batch_delay_ms=5, request_timeout_s=20)
    with running(settings) as (url, _, _), httpx.Client(base_url=url, timeout=60,
                                                         limits=httpx.Limits(max_connections=40)) as c:
        data = image_bytes(size=(200, 200))
        with ThreadPoolExecutor(30) as pool:
            futures = [pool.submit(c.post, "/classify", files={"file": (f"{i}.png", data)}) for i in range(30)]
            time.sleep(0.3)
            ready_during = c.get("/readyz").status_code
            replies = [f.result() for f in futures]
        codes = [r.status_code for r in replies]
        assert set(codes) <= {200, 503} and codes.count(200) >= 4, codes
        assert all(int(r.headers["retry-after"]) >= 1 for r in replies if r.status_code == 503)
        assert ready_during == 200 and c.get("/readyz").status_code == 200
        assert c.post("/classify", files={"file": ("x.png", data)}).status_code == 200  # and it recovers


def test_long_recordings_some_finish_the_rest_refused_early(slow_checkpoints):
    """Six 60 s recordings at once, about 4.5 s of model time together, 3 s deadline: round-robin alone would
    finish them all together, past the deadline (all 504). Admission by estimate: some 200, the rest 503 early."""
    settings = settings_for(slow_checkpoints, **{**FAST, "warmup": True}, request_timeout_s=3.0,
                            transcribe_max_batch_size=16, transcribe_max_batch_delay_ms=5)
    data = audio_bytes(tone(seconds=60, sr=8000), sr=8000)
    with running(settings) as (url, _, _), httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(6) as pool:
        t0 = time.monotonic()
        replies = list(pool.map(lambda i: c.post("/transcribe?format=csv", files={"file": (f"{i}.wav", data)}),
                                range(6)))
        codes = [r.status_code for r in replies]
        assert codes.count(200) >= 1 and set(codes) <= {200, 503}, codes
        assert time.monotonic() - t0 < 8


def test_sigterm_under_load(slow_checkpoints):
    """SIGTERM with requests in flight: /readyz 503 at once, new uploads answered 503 + Retry-After (not refused),
    short requests finish, long ones get 503 + Retry-After when the grace period ends; the process exits."""
    port = free_port()
    env = {**os.environ, "DCN_CLASSIFIER_CHECKPOINT": str(slow_checkpoints[0]),
           "DCN_TRANSCRIBER_CHECKPOINT": str(slow_checkpoints[1]), "DCN_WARMUP": "false",
           "DCN_TRANSCRIBE_MAX_BATCH_SIZE": "1", "DCN_SHUTDOWN_GRACE_S": "2", "DCN_TORCH_THREADS": "1",
           "DCN_REQUEST_TIMEOUT_S": "60", "OMP_NUM_THREADS": "1"}
    code = "import tests.service.tiny_models; from service.__main__ import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        long = audio_bytes(tone(seconds=30, sr=8000), sr=8000)  # 120 windows x 0.05 s: 6 s, over the grace
        with httpx.Client(base_url=url, timeout=30) as c, ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(c.post, "/transcribe?format=csv", files={"file": ("long.wav", long)})
                       for _ in range(2)]
            time.sleep(1.0)
            short = pool.submit(httpx.post, f"{url}/classify", files={"file": ("x.png", image_bytes())}, timeout=30)
            time.sleep(0.15)  # in flight (0.4 s of model time) when the signal comes
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            time.sleep(0.3)
            ready = httpx.get(f"{url}/readyz", timeout=5)
            fresh = httpx.post(f"{url}/classify", files={"file": ("y.png", image_bytes())}, timeout=5)
            replies = [f.result() for f in futures]
            elapsed = time.monotonic() - t0
        assert ready.status_code == 503
        assert fresh.status_code == 503 and fresh.headers["retry-after"] == "1" and fresh.json()["detail"]
        assert short.result().status_code == 200
        for r in replies:
            assert r.status_code == 503 and r.headers["retry-after"] and "shutting down" in r.json()["detail"], r.text
        assert elapsed < 2 + 3
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Traceback" not in out, out


def test_startup_errors_are_one_line(checkpoints, tmp_path):
    from models.checkpoint import save_checkpoint

    from .tiny_models import TinyClassifier, TinyTranscriber
    no_names = save_checkpoint(tmp_path / "no_names.pt", TinyClassifier(), "test_tiny_classifier",
                               {"num_classes": 3}, {"task": "image-classification"})
    m = TinyTranscriber()
    no_task = save_checkpoint(tmp_path / "no_task.pt", m, "test_tiny_transcriber", {}, {})
    no_task_cls = save_checkpoint(tmp_path / "no_task_cls.pt", TinyClassifier(), "test_tiny_classifier",
                                  {"num_classes": 3}, {"class_names": ["a", "b", "c"]})
    bad_cfg = save_checkpoint(tmp_path / "bad_cfg.pt", TinyClassifier(), "test_tiny_classifier",
                              {"num_classes": 3, "nope": 1}, {"task": "image-classification", "class_names": ["a"]})
    code = "import tests.service.tiny_models; from service.__main__ import main; main()"
    cases = [({"DCN_CLASSIFIER_CHECKPOINT": str(no_names)}, "has no class_names"),
             ({"DCN_CLASSIFIER_CHECKPOINT": str(no_task)}, "is a 'transcription' checkpoint (no 'task'"),
             ({"DCN_CLASSIFIER_CHECKPOINT": str(bad_cfg)}, "config does not fit its architecture"),
             ({"DCN_CLASSIFIER_CHECKPOINT": str(tmp_path / "missing.pt")}, "checkpoint not found"),
             ({"DCN_TRANSCRIBER_CHECKPOINT": str(no_task_cls)},
              f"DCN_TRANSCRIBER_CHECKPOINT: {no_task_cls} is a 'image-classification' checkpoint (no 'task'")]
    for env, words in cases:
        env = {**os.environ, "DCN_CLASSIFIER_CHECKPOINT": str(checkpoints[0]),
               "DCN_TRANSCRIBER_CHECKPOINT": str(checkpoints[1]), "DCN_WARMUP": "false", **env}
        proc = subprocess.run([sys.executable, "-c", code, "--port", str(free_port())], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode != 0
        assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
        assert len(errors) <= 2, proc.stderr  # our line and uvicorn's "Application startup failed. Exiting."


@register_architecture("test_half_transcriber")
class HalfTranscriber(torch.nn.Module):
    """A sample_rate and pitches (so it looks like a transcriber), but no hop_length or window geometry."""

    def __init__(self) -> None:
        super().__init__()
        self.sample_rate, self.pitches = 8000, [60, 61]
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_transcriber_without_task_is_inferred_and_logged_once(tmp_path, caplog):
    """A transcriber checkpoint without meta['task'] in the transcriber slot: its architecture says what it is
    (a sample_rate and pitches), so it is served, with one warning line naming the setting and the file; a model
    with only part of the transcriber API is refused in one line."""
    import logging

    from models.checkpoint import CheckpointError, save_checkpoint
    from service.runners import TranscriberRunner

    from .tiny_models import TinyTranscriber
    path = save_checkpoint(tmp_path / "no_task.pt", TinyTranscriber(), "test_tiny_transcriber", {}, {})
    with caplog.at_level(logging.INFO, logger="service"):
        runner = TranscriberRunner(path, torch.device("cpu"))
    assert runner.task == "transcription" and runner.sample_rate == 8000
    lines = [r.getMessage() for r in caplog.records if r.name == "service"]
    assert len(lines) == 1 and caplog.records[0].levelno == logging.WARNING, lines
    assert lines[0].startswith(f"DCN_TRANSCRIBER_CHECKPOINT: {path} has no 'task' in its meta; serving it as "
                               f"'transcription'"), lines
    assert "\n" not in lines[0]

    half = save_checkpoint(tmp_path / "half.pt", HalfTranscriber(), "test_half_transcriber", {}, {})
    with pytest.raises(CheckpointError) as info:
        TranscriberRunner(half, torch.device("cpu"))
    message = str(info.value)
    assert message.startswith(f"DCN_TRANSCRIBER_CHECKPOINT: {half}: not a usable transcriber (AttributeError")
    assert "\n" not in message


def test_content_length_with_transfer_encoding_is_refused_and_closed(server):
    """Request smuggling: CL + TE is a 400 (JSON) and the connection is closed, so the request hidden behind the
    first one's body is never served."""
    url, port, _ = server
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
    s = _raw(port, b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
    reply = _read_all(s)
    s.close()
    assert reply.startswith(b"HTTP/1.1 400") and reply.count(b"HTTP/1.1") == 1, reply
    assert b"Transfer-Encoding" in reply and b"connection: close" in reply.lower()
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["detail"]
    r = httpx.get(f"{url}/healthz", timeout=5)
    assert r.status_code == 200 and "server" not in r.headers  # and no `server: uvicorn`


def test_probes_answer_within_100_ms_with_the_connection_limit_full(checkpoints):
    """520 silent connections against the 512-connection limit: /healthz and /readyz still answer 200 within
    100 ms (probes are exempt from the limit), and an upload gets a slot (the oldest silent connection is evicted);
    more than half the limit open: new silent connections are closed after the tighter header timeout."""
    settings = settings_for(checkpoints, **{**FAST, "header_timeout_s": 30.0, "header_timeout_pressure_s": 1.0,
                                            "max_connections": 512})
    with running(settings) as (url, port, _):
        silent = [_raw(port, b"", timeout=10) for _ in range(520)]
        try:
            time.sleep(0.3)
            with httpx.Client(base_url=url, timeout=5) as c:
                for path in ("/healthz", "/readyz") * 5:
                    t0 = time.perf_counter()
                    r = c.get(path, headers={"Connection": "close"})
                    assert r.status_code == 200 and time.perf_counter() - t0 < 0.1, (path, r.status_code)
                r = c.post("/classify", files={"file": ("x.png", image_bytes())})
                assert r.status_code == 200, r.text
            t0 = time.monotonic()
            assert _read_all(silent[-1]) == b""  # opened under pressure: closed after 1 s, not 30
            assert time.monotonic() - t0 < 3
        finally:
            for s in silent:
                s.close()


def test_host_and_origin_checks(checkpoints):
    """Loopback bind: a foreign Host (DNS rebinding) is 400; a cross-origin POST or WebSocket is 403 unless the
    origin is listed; same-origin and Origin-less requests pass."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    settings = settings_for(checkpoints, **FAST, allowed_origins=["https://app.example"])
    with running(settings) as (url, port, _), httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
        assert c.get("/healthz", headers={"Host": f"localhost:{port}"}).status_code == 200
        files = {"file": ("x.png", image_bytes())}
        r = c.post("/classify", files=files, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "evil.example" in r.json()["detail"]
        assert c.post("/classify", files=files, headers={"Origin": url}).status_code == 200
        assert c.post("/classify", files=files, headers={"Origin": "https://app.example"}).status_code == 200
        assert c.post("/classify", files=files).status_code == 200
        ws_url = url.replace("http://", "ws://") + "/transcribe/stream"
        with pytest.raises(InvalidStatus) as e:
            connect(ws_url, origin="http://evil.example", open_timeout=5)
        assert e.value.response.status_code == 403
        with connect(ws_url, origin=url, open_timeout=5) as ws:
            ws.send(json.dumps({"sample_rate": 8000}))
            assert json.loads(ws.recv(timeout=5))["type"] == "ready"


def test_decode_messages_say_the_truth():
    """2.04 s over a 2 s limit is said as 2.04 s; damaged-image messages carry no heap address."""
    from service.decode import DecodeError, decode_audio_ex, decode_image

    with pytest.raises(DecodeError) as e:
        decode_audio_ex(audio_bytes(np.zeros(int(2.04 * 8000), np.float32), sr=8000), 2.0)
    assert e.value.status_code == 413 and "2.04 s long; the limit is 2 s" in e.value.detail
    png = image_bytes("PNG", size=(64, 64))
    for data in (png[:33], png[:60], png[:29] + bytes([png[29] ^ 0xFF]) + png[30:]):
        with pytest.raises(DecodeError) as e:
            decode_image(data, (32, 32), 10**8)
        assert " at 0x" not in e.value.detail and "object" not in e.value.detail, e.value.detail


def test_image_flood_does_not_starve_audio(slow_checkpoints, monkeypatch):
    """Image and audio uploads decode in separate pools: with both image decoders busy, a small /transcribe is
    decoded at once; a long recording that could not be decoded in time is refused (503) before decoding."""
    import service.runners as runners

    real = runners.decode_image

    def slow_image(*args, **kwargs):
        time.sleep(1.5)
        return real(*args, **kwargs)
    monkeypatch.setattr(runners, "decode_image", slow_image)
    settings = settings_for(slow_checkpoints, **FAST, request_timeout_s=20)
    with running(settings) as (url, _, app), httpx.Client(base_url=url, timeout=30) as c, \
            ThreadPoolExecutor(4) as pool:
        images = [pool.submit(c.post, "/classify", files={"file": ("x.png", image_bytes())}) for _ in range(3)]
        time.sleep(0.3)  # both image decoders are busy, one image waits
        t0 = time.monotonic()
        r = c.post("/transcribe?format=csv", files={"file": ("a.wav", audio_bytes(tone(seconds=0.5, sr=8000),
                                                                               sr=8000))})
        assert r.status_code == 200 and time.monotonic() - t0 < 1.2, (r.status_code, time.monotonic() - t0)
        assert all(f.result().status_code == 200 for f in images)
        from service import decode
        monkeypatch.setattr(decode.AUDIO_COST, "seconds_per_sample", 2e-4)  # 32 s to decode 20 s at 8 kHz
        t0 = time.monotonic()
        r = c.post("/transcribe", files={"file": ("long.wav", audio_bytes(tone(seconds=20, sr=8000), sr=8000))})
        assert r.status_code == 503 and "decoding" in r.json()["detail"] and r.headers["retry-after"], r.text[:200]
        assert time.monotonic() - t0 < 1
