"""The service on loopback, for the benchmarks and tests that start it: a free port, and waiting for /readyz."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable


class NotReady(RuntimeError):
    """The service died or did not answer /readyz 200 in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_alive(proc: subprocess.Popen) -> Callable[[], str | None]:
    """An ``alive`` check for wait_ready: None while ``proc`` runs, else why not."""
    return lambda: None if proc.poll() is None else f"the service exited with status {proc.returncode}"


def wait_ready(url: str, alive: Callable[[], str | None] = lambda: None, timeout: float = 300.0,
               poll_s: float = 0.3) -> float:
    """Poll ``url``/readyz until it answers 200; returns the seconds waited. ``alive()`` returns None while the
    server runs, else the reason it stopped (raised at once rather than waiting out the timeout)."""
    t0 = time.monotonic()
    while True:
        why = alive()
        if why is not None:
            raise NotReady(why)
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:  # refused, reset, or 503 while warming up (HTTPError is an OSError)
            pass
        if time.monotonic() - t0 > timeout:
            raise NotReady(f"{url} did not become ready within {timeout:.0f} s")
        time.sleep(poll_s)
