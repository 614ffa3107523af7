"""The targets of issue 21 (hardening, round two), measured against a real ``python -m service`` on loopback.

    python -m benchmarks.hardening [--seconds 30] [--transcriber models/checkpoints/musicnet_complex_v5.pt]

Starts the service (shipped checkpoints, default settings, 127.0.0.1, free port) and runs, one after another:

1. ``abusive_stream``: one stream sends messages at the per-message limit as fast as the server takes them for
   ``--seconds`` (8 kHz int16 at 2 s per message; then 384 kHz float32 at the 1 MiB message size): the server's RSS
   (peak and 5 s after the stream ended) against its baseline, /healthz latency meanwhile. The old attack
   (``"sample_rate": 1``) is tried too: it must be refused (1007).
2. ``idle_connections``: 520 silent TCP connections (the connection limit is 512); /healthz and /readyz latency and
   status, and an upload's status.
3. ``cl_te``: a request with Content-Length and Transfer-Encoding and a request smuggled behind it.
4. ``fast_client``: ``python -m service.client stream FILE --fast`` on a 120 s recording: exit status, summary,
   wall time.
5. ``shutdown``: four real-time streams sending 20 ms messages, then SIGTERM: close codes and summaries.

One JSON line per check; the server is stopped at the end. Loopback only.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.local_service import process_alive, wait_ready
from benchmarks.soak import CKPT, HOST, MB, flood_wait_s, hardware, live_stream, rss_bytes, start_server, stop_server


def _healthz_ms(port: int) -> tuple[int, float]:
    import httpx
    t0 = time.perf_counter()
    r = httpx.get(f"http://{HOST}:{port}/healthz", headers={"Connection": "close"}, timeout=10)
    return r.status_code, (time.perf_counter() - t0) * 1000


def abusive_stream(port: int, pid: int, seconds: float) -> dict:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = f"ws://{HOST}:{port}/transcribe/stream"
    out: dict = {"check": "abusive_stream"}
    with connect(url) as ws:  # the attack of the issue: a few bytes taken for an hour of audio
        ws.send(json.dumps({"sample_rate": 1}))
        try:
            while True:
                ws.recv(timeout=10)
        except ConnectionClosed:
            out["sample_rate_1_close_code"] = ws.close_code
    time.sleep(2)
    base = rss_bytes(pid)
    out["rss_baseline_mb"] = round(base / MB, 1)
    for rate, fmt, size in ((8000, "int16", 2 * 8000 * 2), (384_000, "float32", 1 << 20)):
        peak, lat, sent = base, [], 0
        # No keep-alive pings: the server stops reading this flood, and a ping waiting behind it would time out and
        # make this client drop its own stream (1006), measuring itself instead of the server.
        with connect(url, max_size=None, ping_interval=None) as ws:
            ws.send(json.dumps({"sample_rate": rate, "format": fmt, "frames": False}))
            max_speed = float(json.loads(ws.recv(timeout=30))["limits"]["max_speed"])
            stop = threading.Event()

            def drain(ws=ws, stop=stop) -> None:
                try:
                    for _ in ws:
                        pass
                except ConnectionClosed:
                    pass
                stop.set()
            threading.Thread(target=drain, daemon=True).start()
            payload = (np.random.default_rng(0).standard_normal(size // (2 if fmt == "int16" else 4)) * 0.1)
            payload = (payload * 32767).astype("<i2").tobytes() if fmt == "int16" else payload.astype("<f4").tobytes()
            t0, last = time.monotonic(), 0.0
            try:
                while time.monotonic() - t0 < seconds and not stop.is_set():
                    ws.send(payload)
                    sent += len(payload)
                    if time.monotonic() - last > 0.5:
                        last = time.monotonic()
                        peak = max(peak, rss_bytes(pid) or 0)
                        lat.append(_healthz_ms(port)[1])
                ws.send(json.dumps({"type": "end"}))
            except ConnectionClosed:
                pass
            seconds_sent = sent / (rate * (2 if fmt == "int16" else 4))
            stop.wait(flood_wait_s(seconds_sent, max_speed))  # the queued audio is read at max_speed at most
            code = ws.close_code if stop.is_set() else "client timeout"
        time.sleep(5)
        after = rss_bytes(pid)
        out[f"{rate}Hz_{fmt}"] = {"close_code": code, "audio_sent_s": round(seconds_sent, 1),
                                  "rss_peak_growth_mb": round((peak - base) / MB, 1),
                                  "rss_growth_after_5s_mb": round((after - base) / MB, 1),
                                  "healthz_ms_max": round(max(lat), 1) if lat else None}
    return out


def idle_connections(port: int, n: int = 520) -> dict:
    import httpx
    socks = [socket.create_connection((HOST, port), timeout=10) for _ in range(n)]
    try:
        time.sleep(1.0)
        probes = []
        for path in ("/healthz", "/readyz") * 10:
            t0 = time.perf_counter()
            r = httpx.get(f"http://{HOST}:{port}{path}", headers={"Connection": "close"}, timeout=10)
            probes.append((path, r.status_code, (time.perf_counter() - t0) * 1000))
        import io

        from PIL import Image
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (255, 0, 0)).save(buf, "PNG")
        upload = httpx.post(f"http://{HOST}:{port}/classify", files={"file": ("x.png", buf.getvalue())},
                            timeout=30).status_code
    finally:
        for s in socks:
            s.close()
    return {"check": "idle_connections", "connections": n, "probe_statuses": sorted({p[1] for p in probes}),
            "probe_ms_max": round(max(p[2] for p in probes), 1),
            "probe_ms_median": round(float(np.median([p[2] for p in probes])), 1), "upload_status": upload}


def cl_te(port: int) -> dict:
    s = socket.create_connection((HOST, port), timeout=10)
    s.sendall(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    reply = b""
    try:
        while chunk := s.recv(65536):
            reply += chunk
    except OSError:
        pass
    s.close()
    return {"check": "cl_te", "status_line": reply.split(b"\r\n", 1)[0].decode(), "responses": reply.count(b"HTTP/1.1"),
            "closed": True}


def fast_client(port: int, tmp: Path) -> dict:
    import soundfile as sf
    sr, seconds = 16_000, 120
    t = np.arange(sr * seconds) / sr
    x = 0.2 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    wav = tmp / "long.wav"
    sf.write(wav, x.astype(np.float32), sr, subtype="PCM_16")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "service.client", "stream", str(wav), "--fast", "--url",
                        f"ws://{HOST}:{port}/transcribe/stream"], check=False, capture_output=True, text=True,
                       timeout=300)
    summary = [line for line in p.stdout.splitlines() if line.startswith("# ") and " notes in " in line]
    return {"check": "fast_client", "exit_status": p.returncode, "wall_s": round(time.monotonic() - t0, 1),
            "audio_s": seconds, "summary": summary[-1] if summary else None, "stderr": p.stderr[-300:]}


def shutdown(proc: subprocess.Popen, port: int) -> dict:
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(live_stream(port, "live", 60.0, 0.3)), daemon=True)
               for _ in range(4)]
    for th in threads:
        th.start()
    time.sleep(3.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for th in threads:
        th.join(timeout=60)
    return {"check": "shutdown", "streams": results, "all_got_summary_and_1001": results == ["1001"] * 4,
            "seconds_after_sigterm": round(time.monotonic() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hardening", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="abusive stream duration per format")
    p.add_argument("--classifier", type=Path, default=CKPT / "cifar10_complex.pt")
    p.add_argument("--transcriber", type=Path, default=CKPT / "musicnet_complex_v5.pt")
    p.add_argument("--preload", default=None)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hardening-"))
    os.environ.setdefault("DCN_SHUTDOWN_GRACE_S", "10")
    proc, port = start_server(args, tmp / "server.log")
    try:
        wait_ready(f"http://{HOST}:{port}", process_alive(proc), args.startup_timeout, poll_s=0.5)
        print(json.dumps({"hardware": hardware(), "transcriber": args.transcriber.name}), flush=True)
        for check in (lambda: abusive_stream(port, proc.pid, args.seconds), lambda: idle_connections(port),
                      lambda: cl_te(port), lambda: fast_client(port, tmp), lambda: shutdown(proc, port)):
            print(json.dumps(check()), flush=True)
        proc.wait(timeout=60)
    finally:
        code = stop_server(proc)
    log = (tmp / "server.log").read_text()
    print(json.dumps({"server_exit_status": code, "tracebacks_in_log": log.count("Traceback")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
