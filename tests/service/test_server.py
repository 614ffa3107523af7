"""The service behind a real uvicorn on a free loopback port: ``python -m service``, limits on the wire, disconnects."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from service.app import create_app

from .conftest import audio_bytes, free_port, image_bytes, metric, serve, settings_for, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "dcn-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _raw_request(port: int, path: str, body: bytes, content_type: str, content_length: int | None = None
                 ) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if content_length is None else content_length}\r\n\r\n")
    s.sendall(head.encode() + body)
    return s


def test_real_server_routes_and_limits(checkpoints):
    app = create_app(settings_for(checkpoints, max_upload_bytes=100_000))
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        r = c.post("/classify", files=[("file", ("a.jpg", image_bytes("JPEG", (255, 0, 0)))),
                                       ("file", ("b.webp", image_bytes("WEBP", (0, 255, 0))))])
        assert [x["label"] for x in r.json()["results"]] == ["red", "green"]
        r = c.post("/transcribe", params={"format": "midi"}, files={"file": ("a.flac", audio_bytes(fmt="FLAC"))})
        assert r.status_code == 200 and r.content.startswith(b"MThd")
        # A declared body over the limit is refused before it is read.
        port = int(url.rsplit(":", 1)[1])
        s = _raw_request(port, "/classify", b"x" * 100, "multipart/form-data; boundary=b", content_length=10**9)
        s.settimeout(10)
        reply = s.recv(65536).decode()
        s.close()
        assert reply.startswith("HTTP/1.1 413") and "application/json" in reply
        assert "limit of 100000 bytes" in json.loads(reply.split("\r\n\r\n", 1)[1])["detail"]
        assert c.get("/readyz").status_code == 200  # still serving others
        assert metric(c.get("/metrics").text, "dcn_requests_total", route="/classify", status="413") == 1


def test_client_disconnect_leaves_no_work_in_the_queue(slow_checkpoints):
    app = create_app(settings_for(slow_checkpoints, classify_max_batch_size=1, classify_max_batch_delay_ms=0,
                                  warmup=False))
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        port = int(url.rsplit(":", 1)[1])
        first = threading.Thread(target=lambda: c.post("/classify", files={"file": ("a.png", image_bytes())}))
        first.start()  # keeps the worker busy for 0.4 s
        time.sleep(0.1)
        body, ctype = _multipart([(f"{i}.png", image_bytes()) for i in range(3)])
        s = _raw_request(port, "/classify", body, ctype)
        deadline = time.monotonic() + 5
        while metric(c.get("/metrics").text, "dcn_queue_depth", model="classifier") < 3:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.01)
        s.close()  # the client goes away while its 3 images wait
        first.join()
        deadline = time.monotonic() + 5
        while metric(text := c.get("/metrics").text, "dcn_rejected_total", reason="disconnected") < 1:
            assert time.monotonic() < deadline, "disconnect not noticed"
            time.sleep(0.05)
        time.sleep(0.5)
        text = c.get("/metrics").text
        assert metric(text, "dcn_queue_depth", model="classifier") == 0
        assert metric(text, "dcn_items_total", model="classifier") == 1  # the 3 images were never run
        r = c.post("/classify", files={"file": ("c.png", image_bytes())})  # and the service carries on
        assert r.status_code == 200


def _python_m_service(env: dict[str, str], port: int) -> subprocess.Popen:
    # The tiny test architectures must be registered in the child too, so import them before running main().
    code = "import tests.service.tiny_models; from service.__main__ import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, "--port", str(port)], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_python_m_service_fails_fast_on_missing_checkpoint(tmp_path):
    env = {"DCN_CLASSIFIER_CHECKPOINT": str(tmp_path / "nope.pt"), "DCN_DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "service", "--port", str(free_port())], cwd=ROOT, timeout=120,
                          env={**os.environ, **env}, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert f"DCN_CLASSIFIER_CHECKPOINT: checkpoint not found: {tmp_path / 'nope.pt'}" in proc.stderr


def test_python_m_service_serves(checkpoints):
    port = free_port()
    env = {"DCN_CLASSIFIER_CHECKPOINT": str(checkpoints[0]), "DCN_TRANSCRIBER_CHECKPOINT": str(checkpoints[1]),
           "DCN_CLASSIFY_MAX_BATCH_SIZE": "4"}
    proc = _python_m_service(env, port)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}")
        r = httpx.post(f"http://127.0.0.1:{port}/classify", files={"file": ("x.bmp", image_bytes("BMP", (0, 0, 255)))})
        assert r.json()["results"][0]["label"] == "blue"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says how it ended
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in out, out
