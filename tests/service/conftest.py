"""Fixtures for the service tests: tiny checkpoints, apps built from settings, media files, metric parsing."""
from __future__ import annotations

import io
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import uvicorn
from fastapi import FastAPI

with warnings.catch_warnings():  # starlette suggests httpx2 for its test client; httpx is what we have
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
from PIL import Image

from benchmarks import local_service
from service.app import create_app
from service.settings import Settings

from .tiny_models import make_checkpoints


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def slow_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Forward passes that take 0.2 s (classifier: 0.4 s per classify call, flip TTA runs it twice)."""
    return make_checkpoints(tmp_path_factory.mktemp("slow"), classifier_delay_s=0.2, transcriber_delay_s=0.05)


def settings_for(ckpts: tuple[Path, Path], **overrides) -> Settings:
    return Settings(classifier_checkpoint=ckpts[0], transcriber_checkpoint=ckpts[1], **overrides)


@pytest.fixture(scope="module")
def client(checkpoints) -> Iterator[TestClient]:
    """The app on tiny checkpoints, default settings, lifespan running."""
    with TestClient(create_app(settings_for(checkpoints))) as c:
        yield c


def image_bytes(fmt: str = "PNG", color=(255, 0, 0), size=(40, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size, color if mode == "RGB" else None)
    img.save(buf, fmt)
    return buf.getvalue()


def tone(seconds: float = 1.0, sr: int = 22050, start: float = 0.25, stop: float = 0.75, channels: int = 1,
         ) -> np.ndarray:
    """Silence with a loud 440 Hz tone from ``start`` to ``stop`` seconds."""
    x = np.zeros(int(seconds * sr), np.float32)
    a, b = int(start * sr), int(stop * sr)
    x[a:b] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(x[a:b])) / sr)
    return np.stack([x] * channels, 1) if channels > 1 else x


def audio_bytes(audio: np.ndarray | None = None, sr: int = 22050, fmt: str = "WAV", subtype: str | None = None
                ) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(sr=sr) if audio is None else audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in Prometheus text output."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def wait_ready(proc, url: str, timeout: float = 120.0) -> None:
    """Poll ``url``/readyz until 200, failing with the server's output if the process dies or time runs out."""
    try:
        local_service.wait_ready(url, local_service.process_alive(proc), timeout, poll_s=0.2)
    except local_service.NotReady as e:
        output = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""  # a live pipe would block
        raise AssertionError(f"{e}\n{output}") from None


free_port = local_service.free_port


@contextmanager
def serve(app: FastAPI, service_config: bool = False) -> Iterator[str]:
    """A real uvicorn on a free loopback port, in a thread (so the test architectures are registered).
    ``service_config``: the service's own uvicorn settings (service.server: header/message limits, timeouts)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if service_config:
        from service.server import uvicorn_config
        config = uvicorn_config(app, app.state.service.settings, "127.0.0.1", port, log_level="warning")
    else:
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
