"""Soak test of the model-serving service: mixed traffic for minutes, RSS over time, a verdict on memory growth.

    python -m benchmarks.soak [--minutes 15] [--clients 4] [--max-growth-mb 50] [--json OUT]

It starts ``python -m service`` on a free 127.0.0.1 port (loopback only) with ``--classifier`` (default the shipped
models/checkpoints/cifar10_complex.pt) and ``--transcriber`` (default models/checkpoints/musicnet_complex.pt), waits
for /readyz, then ``--clients`` threads each send one request after another (keep-alive) until ``--minutes`` are
over (or ``--max-requests`` per client), a mix of:

- /classify with 1-8 small PNG/JPEG images, /transcribe with 1-20 s WAV/FLAC clips (generated, tones and noise);
- malformed uploads: truncated images and audio, wrong types (text as an image, an image as audio), a missing
  file field, request heads over the size limit or with too many headers (raw socket: 431);
- clients that go away mid-request: half an upload then close, or a whole /transcribe request and close before
  the answer;
- /readyz, /healthz and /metrics polls;
- live streams over WebSocket /transcribe/stream (each a few seconds): real-time, faster than real time, tiny
  messages, pings without audio, malformed messages, and messages at the size limit as fast as the socket takes
  them (minutes of audio in the kernel's buffers: the client waits up to twice the server's documented pace); the
  status recorded is the close code (1000 with a summary is success; 1007/1003/1008/1009 expected for the abusive
  ones; 1011 is a failure). At the end two live streams are open while the server gets SIGTERM: each must get its
  summary and 1001.

Every ``--sample-s`` seconds it samples the server process's RSS (psutil when installed, else /proc/PID/status
VmRSS). It prints a table per minute (RSS, requests by status class, p50/p99 latency of the HTTP answers) and a
verdict: RSS growth after the warm-up (``--warmup-minutes``, default 2, at most half the run) below
``--max-growth-mb``, the server alive to the end and no 500 answers -> exit 0, else exit 1 (2: the server did
not start). Growth = median of the last three samples minus the first sample after the warm-up; the peak is
reported too. The server is stopped at the end (SIGTERM, then kill). The server process inherits this one's
environment (DCN_* settings, OMP_NUM_THREADS, niceness); DCN_SHUTDOWN_GRACE_S defaults to 5 here.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.local_service import NotReady, free_port, process_alive, wait_ready

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "models" / "checkpoints"
HOST = "127.0.0.1"  # loopback only, on purpose
MB = 2**20


# ---------------------------------------------------------------------------------------------- payloads

def make_images(rng: np.random.Generator, n: int) -> list[tuple[str, bytes, str]]:
    from PIL import Image
    out = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(16, 129, 2))
        base = rng.integers(0, 256, 3)
        noise = rng.integers(-40, 41, (h, w, 3))
        arr = np.clip(base + noise + np.linspace(0, 60, w)[None, :, None], 0, 255).astype(np.uint8)
        fmt, ext, mime = ("PNG", "png", "image/png") if i % 2 else ("JPEG", "jpg", "image/jpeg")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        out.append((f"img{i}.{ext}", buf.getvalue(), mime))
    return out


def make_clips(rng: np.random.Generator, n: int) -> list[tuple[str, bytes, str]]:
    import soundfile as sf
    out = []
    for i in range(n):
        seconds = float(rng.uniform(1, 20)) if i else 1.0
        sr = int(rng.choice([16_000, 22_050, 44_100]))
        t = np.arange(int(seconds * sr)) / sr
        x = 0.01 * rng.standard_normal(t.size)
        for _ in range(int(rng.integers(1, 6))):  # a few notes at random times
            f = 440 * 2 ** ((int(rng.integers(40, 80)) - 69) / 12)
            a, b = sorted(rng.uniform(0, seconds, 2))
            x += 0.3 * np.sin(2 * np.pi * f * t) * ((t >= a) & (t < b))
        fmt, ext, mime = ("FLAC", "flac", "audio/flac") if i % 2 else ("WAV", "wav", "audio/wav")
        buf = io.BytesIO()
        sf.write(buf, x.astype(np.float32), sr, format=fmt, subtype="PCM_16")
        out.append((f"clip{i}_{seconds:.0f}s.{ext}", buf.getvalue(), mime))
    return out


def multipart(files: list[tuple[str, str, bytes, str]]) -> tuple[str, bytes]:
    """(field, filename, data, mime) parts -> (content type, body)."""
    boundary = "soak" + os.urandom(8).hex()
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                    f"Content-Type: {mime}\r\n\r\n".encode() + data + b"\r\n" for field, name, data, mime in files)
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def raw_request(port: int, head: bytes, body: bytes = b"", read: bool = True, timeout: float = 30) -> str:
    """Send over a fresh socket; the answer's status code as a string (or what happened instead)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(head + body)
        except OSError:  # the server answered early and closed (e.g. 431 while we were still sending)
            pass
        if not read:
            return "disconnect"
        try:
            data = s.recv(64)
        except OSError:
            return "reset"
    parts = data.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and data.startswith(b"HTTP/") else "closed"


def post_head(port: int, path: str, content_type: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{extra}Connection: close\r\n\r\n").encode()


# ---------------------------------------------------------------------------------------------- traffic

class Traffic:
    """One client's choices; each action returns (kind, status) and is timed by the caller."""

    def __init__(self, port: int, images, clips, seed: int, streams: bool = True) -> None:
        import httpx
        self.port, self.images, self.clips = port, images, clips
        self.rng = random.Random(seed)
        self.url = f"http://{HOST}:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(90, connect=10))
        self.actions = [(self.classify, 30), (self.transcribe, 16), (self.poll, 20), (self.malformed, 16),
                        (self.headers, 6), (self.disconnect, 12)] + ([(self.stream, 12)] if streams else [])

    def close(self) -> None:
        self.http.close()

    def step(self) -> tuple[str, str]:
        action = self.rng.choices([a for a, _ in self.actions], [w for _, w in self.actions])[0]
        return action()

    def _post(self, path: str, files: list) -> str:
        return str(self.http.post(path, files=files).status_code)

    def classify(self) -> tuple[str, str]:
        picks = self.rng.sample(self.images, self.rng.randint(1, 8))
        return "classify", self._post("/classify", [("file", p) for p in picks])

    def transcribe(self) -> tuple[str, str]:
        clip = self.rng.choice(self.clips)
        fmt = self.rng.choice(["json", "json", "csv", "midi", "npz"])
        return "transcribe", self._post(f"/transcribe?format={fmt}", [("file", clip)])

    def poll(self) -> tuple[str, str]:
        path = self.rng.choice(["/readyz", "/readyz", "/metrics", "/metrics", "/healthz"])
        return "poll", str(self.http.get(path).status_code)

    def malformed(self) -> tuple[str, str]:
        name, data, mime = self.rng.choice(self.images)
        cname, cdata, cmime = self.rng.choice(self.clips)
        case = self.rng.randrange(6)
        if case == 0:  # truncated image
            return "malformed", self._post("/classify", [("file", (name, data[:max(8, len(data) // 3)], mime))])
        if case == 1:  # truncated audio
            return "malformed", self._post("/transcribe", [("file", (cname, cdata[:max(44, len(cdata) // 5)], cmime))])
        if case == 2:  # text as an image
            return "malformed", self._post("/classify", [("file", ("notes.txt", b"not an image " * 50, "text/plain"))])
        if case == 3:  # an image as audio
            return "malformed", self._post("/transcribe", [("file", (name, data, mime))])
        if case == 4:  # empty file
            return "malformed", self._post("/classify", [("file", ("empty.png", b"", "image/png"))])
        return "malformed", str(self.http.post("/transcribe", data={"nofile": "x"}).status_code)  # no file: 422

    def headers(self) -> tuple[str, str]:
        """Request heads over the limits on a raw socket: one 40 KB header, or 200 headers."""
        if self.rng.random() < 0.5:
            extra = "X-Big: " + "a" * 40_000 + "\r\n"
        else:
            extra = "".join(f"X-H{i}: {i}\r\n" for i in range(200))
        ctype, body = multipart([("file", *self.rng.choice(self.images))])
        return "headers", raw_request(self.port, post_head(self.port, "/classify", ctype, len(body), extra), body)

    def disconnect(self) -> tuple[str, str]:
        """Half an upload then close; or a whole /transcribe request and close before the answer."""
        if self.rng.random() < 0.5:
            clip = self.rng.choice(self.clips)
            ctype, body = multipart([("file", *clip)])
            raw_request(self.port, post_head(self.port, "/transcribe", ctype, len(body)), body[:len(body) // 2],
                        read=False)
        else:
            clip = max(self.rng.sample(self.clips, 3), key=lambda c: len(c[1]))
            ctype, body = multipart([("file", *clip)])
            with socket.create_connection((HOST, self.port), timeout=30) as s:
                s.sendall(post_head(self.port, "/transcribe", ctype, len(body)) + body)
                time.sleep(self.rng.uniform(0.05, 0.5))  # the server is decoding or in the queue: gone
        return "disconnect", "disconnect"


    def stream(self) -> tuple[str, str]:
        case = self.rng.choice(["live", "live", "fast", "tiny", "ping", "malformed", "big"])
        return f"stream_{case}", live_stream(self.port, case, self.rng.uniform(1.0, 4.0), self.rng.random())


def flood_wait_s(audio_s: float, max_speed: float) -> float:
    """How long a client that has written ``audio_s`` of audio waits for its summary: the server reads a stream at
    most ``max_speed`` x real time, so twice that, plus 30 s; longer is a failure ("client timeout")."""
    return 2 * audio_s / max_speed + 30


def live_stream(port: int, case: str, seconds: float, seed: float) -> str:
    """One stream of the given kind; returns its close code ("1000" only after a summary), or the error.

    The wait for the end is bounded by the audio sent: a client that writes as fast as the socket takes it has
    minutes of audio in the kernel's buffers (up to net.ipv4.tcp_rmem's maximum on the server side), which the
    server by design reads at most ``max_speed`` x real time. A fixed wait would close such a stream itself
    (1006, the server still reading its audio) and blame the server; past twice the server's own pace the
    result is "client timeout", a failure. For the same reason that client sends no keep-alive pings."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    rate = 16_000
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 440 * (1 + seed) * t) * 32767).astype("<i2").tobytes()
    got: dict[str, Any] = {"summary": False, "code": None, "max_speed": 10.0}
    sent_s = 0.0
    # The big case floods on purpose, so the server stops reading it: a keep-alive ping from this client would wait
    # behind that audio, its pong come too late and the client drop its own stream (1006), measuring itself.
    ping_interval = None if case == "big" else 20
    with connect(f"ws://{HOST}:{port}/transcribe/stream", open_timeout=30, max_size=None,
                 ping_interval=ping_interval) as ws:
        def read() -> None:
            try:
                for raw in ws:
                    message = json.loads(raw)
                    got["summary"] |= message.get("type") == "summary"
                    if message.get("type") == "ready":
                        got["max_speed"] = float(message["limits"]["max_speed"])
            except ConnectionClosed:
                pass
            got["code"] = ws.close_code

        def send_audio(chunk: bytes) -> None:
            nonlocal sent_s
            ws.send(chunk)
            sent_s += len(chunk) / 2 / rate

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            header: Any = {"type": "start", "sample_rate": rate, "frames": case != "fast"}
            if case == "malformed":
                header = {"sample_rate": 1} if seed < 0.5 else "[" * 2000 + "]" * 2000
            ws.send(header if isinstance(header, str) else json.dumps(header))
            t0 = time.monotonic()
            if case in ("live", "fast"):
                for k, i in enumerate(range(0, len(pcm), 640)):  # 20 ms messages
                    send_audio(pcm[i:i + 640])
                    if case == "live":
                        time.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
            elif case == "tiny":  # 2-byte messages, 500 a second (the server reads 200 a second)
                for k in range(500):
                    send_audio(b"\0\0")
                    time.sleep(max(0.0, t0 + (k + 1) * 0.002 - time.monotonic()))
            elif case == "ping":
                while time.monotonic() - t0 < 1.0:
                    ws.send(json.dumps({"type": "ping", "time": time.monotonic()}))
                    time.sleep(0.05)
            elif case == "big":  # messages at the limit of seconds per message, as fast as the socket takes them
                while time.monotonic() - t0 < 2.0:
                    send_audio(pcm[:2 * rate * 2] if len(pcm) >= 4 * rate else pcm)
            if case != "malformed":
                ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        wait_s = max(60.0, flood_wait_s(sent_s, got["max_speed"]))
        reader.join(timeout=wait_s)
        if reader.is_alive():
            return f"client timeout after {wait_s:.0f} s"
    code = got["code"]
    return str(code) if got["summary"] or code not in (1000, 1001) else f"{code} without summary"


# ---------------------------------------------------------------------------------------------- server

def rss_bytes(pid: int) -> int | None:
    try:
        import psutil
        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - gone
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port(HOST)
    env = {**os.environ, "DCN_CLASSIFIER_CHECKPOINT": str(args.classifier),
           "DCN_TRANSCRIBER_CHECKPOINT": str(args.transcriber)}
    env.setdefault("DCN_SHUTDOWN_GRACE_S", "5")
    if args.preload:  # architectures registered by a module (tests: tiny models)
        cmd = [sys.executable, "-c", f"import {args.preload}; from service.__main__ import main; main()"]
    else:
        cmd = [sys.executable, "-m", "service"]
    cmd += ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, port


def stop_server(proc: subprocess.Popen, timeout_s: float = 30) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


# ---------------------------------------------------------------------------------------------- report

def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def status_class(status: str) -> str:
    return f"{status[0]}xx" if status.isdigit() else "other"


def summarize(records: list[tuple[float, str, str, float]], samples: list[tuple[float, int]], run_s: float,
              bucket_s: float) -> list[dict[str, Any]]:
    rows = []
    for b in range(max(1, int(np.ceil(run_s / bucket_s - 1e-9)))):
        lo, hi = b * bucket_s, (b + 1) * bucket_s
        recs = [r for r in records if lo <= r[0] < hi]
        rss = [v for t, v in samples if lo <= t < hi]
        lat = [r[3] for r in recs if r[2].isdigit()]
        classes = Counter(status_class(r[2]) for r in recs)
        rows.append({"t_end_min": round(hi / 60, 2), "rss_mb": round(rss[-1] / MB, 1) if rss else None,
                     "rss_max_mb": round(max(rss) / MB, 1) if rss else None, "requests": len(recs),
                     **{k: classes.get(k, 0) for k in ("2xx", "4xx", "5xx", "other")},
                     "p50_ms": round(pct(lat, 50) * 1000) if lat else None,
                     "p99_ms": round(pct(lat, 99) * 1000) if lat else None})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("t_end_min", "min"), ("rss_mb", "RSS MB"), ("rss_max_mb", "max MB"), ("requests", "reqs"),
            ("2xx", "2xx"), ("4xx", "4xx"), ("5xx", "5xx"), ("other", "other"), ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms")]
    print(" ".join(f"{h:>8}" for _, h in cols))
    for r in rows:
        print(" ".join(f"{'-' if r[k] is None else r[k]:>8}" for k, _ in cols))


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="traffic duration (default 15)")
    p.add_argument("--clients", type=int, default=4, help="concurrent loopback clients (default 4)")
    p.add_argument("--max-growth-mb", type=float, default=50.0, help="RSS growth allowed after the warm-up")
    p.add_argument("--warmup-minutes", type=float, default=2.0, help="not counted for growth (at most half the run)")
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    p.add_argument("--max-requests", type=int, default=200_000, help="per client, a bound besides the time")
    p.add_argument("--classifier", type=Path, default=CKPT / "cifar10_complex.pt")
    p.add_argument("--transcriber", type=Path, default=CKPT / "musicnet_complex.pt")
    p.add_argument("--preload", default=None, help="module the server imports first (registers architectures)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /readyz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the samples, table and verdict here")
    args = p.parse_args(argv)
    if args.minutes <= 0 or not 1 <= args.clients <= 64:
        p.error("--minutes must be > 0 and --clients in 1..64")

    rng = np.random.default_rng(args.seed)
    images, clips = make_images(rng, 24), make_clips(rng, 10)
    run_s = args.minutes * 60
    warmup_s = min(args.warmup_minutes * 60, run_s / 2)
    sample_s = min(args.sample_s, max(run_s / 12, 0.5))
    bucket_s = 60.0 if run_s >= 180 else run_s / 6

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    log_path = tmp / "server.log"
    t_start = time.monotonic()
    proc, port = start_server(args, log_path)
    print(f"soak: server pid {proc.pid} on {HOST}:{port}; {args.classifier.name} + {args.transcriber.name}; "
          f"{args.clients} client(s), {args.minutes:g} min, warm-up {warmup_s / 60:.2g} min", flush=True)
    shutdown_streams: list[str] = []
    streams: list[threading.Thread] = []
    streams_on = False
    try:
        try:
            wait_ready(f"http://{HOST}:{port}", process_alive(proc), args.startup_timeout, poll_s=0.5)
        except NotReady as e:
            print(f"soak: {e}; its log:\n" + log_path.read_text()[-4000:], file=sys.stderr)
            return 2
        startup_s = time.monotonic() - t_start
        import httpx
        stream_doc = httpx.get(f"http://{HOST}:{port}/transcribe/stream", timeout=30).json()
        streams_on = bool(stream_doc["limits"]["max_streams"] and stream_doc["latency"])
        records: list[tuple[float, str, str, float]] = []  # (t since traffic start, kind, status, seconds)
        samples: list[tuple[float, int]] = []
        lock = threading.Lock()
        t0 = time.monotonic()
        end = t0 + run_s
        stop = threading.Event()

        def client(i: int) -> None:
            traffic = Traffic(port, images, clips, args.seed * 1000 + i, streams_on)
            try:
                for _ in range(args.max_requests):
                    if time.monotonic() >= end or stop.is_set():
                        break
                    s = time.monotonic()
                    try:
                        kind, status = traffic.step()
                    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
                        kind, status = "error", type(e).__name__
                    with lock:
                        records.append((s - t0, kind, status, time.monotonic() - s))
            finally:
                traffic.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for th in threads:
            th.start()
        next_print = t0 + bucket_s
        while time.monotonic() < end and proc.poll() is None:
            v = rss_bytes(proc.pid)
            if v is not None:
                samples.append((time.monotonic() - t0, v))
            if time.monotonic() >= next_print:
                with lock:
                    n = len(records)
                print(f"  {(time.monotonic() - t0) / 60:5.1f} min: RSS {v / MB if v else 0:.0f} MB, "
                      f"{n} requests", flush=True)
                next_print += bucket_s
            time.sleep(max(0.0, min(sample_s, end - time.monotonic())))
        v = rss_bytes(proc.pid)
        if v is not None:
            samples.append((time.monotonic() - t0, v))
        for th in threads:
            th.join(timeout=120)  # each request has a 90 s client timeout
        stop.set()
        alive = proc.poll() is None
        # shutdown with live streams open: each must be told to end, get its summary and 1001
        streams = [threading.Thread(target=lambda: shutdown_streams.append(live_stream(port, "live", 30.0, 0.5)),
                                    daemon=True) for _ in range(2 if streams_on else 0)]
        for th in streams:
            th.start()
        time.sleep(2.0)
    finally:
        code = stop_server(proc)
        for th in streams:
            th.join(timeout=30)
    log_text = log_path.read_text()

    rows = summarize(records, samples, run_s, bucket_s)
    print()
    print_table(rows)
    after = [v for t, v in samples if t >= warmup_s]
    baseline = after[0] if after else None
    final = statistics.median(v for _, v in samples[-3:]) if samples else None
    growth = (final - baseline) / MB if after else None
    peak = (max(after) - baseline) / MB if after else None
    statuses = Counter(f"{kind} {status}" for _, kind, status, _ in records)
    n500 = sum(c for k, c in statuses.items() if k.endswith(" 500"))
    tracebacks = log_text.count("Traceback")
    lat = {k: [r[3] for r in records if r[1] == k and r[2] == "200"] for k in ("classify", "transcribe", "poll")}
    stream_failures = sum(c for k, c in statuses.items() if k.startswith("stream_") and (
        k.endswith((" 1011", " None", " 1006")) or "without summary" in k or "client timeout" in k
        or (k.startswith("stream_live") and not k.endswith(" 1000"))))
    checks = {"rss_growth": growth is not None and growth < args.max_growth_mb, "server_alive": alive,
              "no_500": n500 == 0}
    if streams_on:  # the server offers live streams (DCN_STREAM_MAX_CONCURRENT > 0)
        checks.update(streams=stream_failures == 0, shutdown_streams=shutdown_streams == ["1001", "1001"])
    ok = all(checks.values())
    print(f"\nrequests: {len(records)} in {run_s / 60:.1f} min; by kind and status: "
          + ", ".join(f"{k}: {c}" for k, c in sorted(statuses.items())))
    for k, v in lat.items():
        if v:
            print(f"  {k} 200: n={len(v)}, p50 {pct(v, 50) * 1000:.0f} ms, p99 {pct(v, 99) * 1000:.0f} ms")
    print(f"RSS: {baseline / MB if baseline else 0:.1f} MB after warm-up, {final / MB if final else 0:.1f} MB at "
          f"the end (median of the last 3 samples), growth {growth if growth is not None else float('nan'):+.1f} MB "
          f"(peak {peak if peak is not None else float('nan'):+.1f} MB); {len(samples)} samples every "
          f"{sample_s:g} s")
    print(f"server: startup {startup_s:.0f} s, alive to the end: {alive}, exit status after SIGTERM {code}, "
          f"tracebacks in its log: {tracebacks}")
    print(f"hardware: {hardware()}")
    if streams_on:
        print(f"shutdown with 2 live streams open: {shutdown_streams} (1001 after a summary expected)")
    print(f"verdict: {'PASS' if ok else 'FAIL'} ({', '.join(f'{k}: {v}' for k, v in checks.items())})")
    if not alive or tracebacks:
        print("server log (tail):\n" + log_text[-3000:])
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:] if argv is None else argv),
            "minutes": args.minutes, "clients": args.clients, "warmup_minutes": warmup_s / 60,
            "classifier": args.classifier.name, "transcriber": args.transcriber.name, "hardware": hardware(),
            "startup_s": startup_s, "rss_samples": [[round(t, 2), v] for t, v in samples], "table": rows,
            "statuses": dict(statuses), "rss_baseline_mb": baseline / MB if baseline else None,
            "rss_growth_mb": growth, "rss_peak_growth_mb": peak, "max_growth_mb": args.max_growth_mb,
            "checks": checks, "server_exit_status": code, "server_tracebacks": tracebacks,
            "verdict": "pass" if ok else "fail"}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
