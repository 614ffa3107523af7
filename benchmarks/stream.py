"""Live transcription latency and capacity: N concurrent real-time streams over WebSocket /transcribe/stream.

    python -m benchmarks.stream                      # starts `python -m service` pinned to one CPU, ramps N
    python -m benchmarks.stream --streams 8 --cpus 0,1 --seconds 20
    python -m benchmarks.stream --url ws://host:8000/transcribe/stream --streams 8   # a running server

Each stream sends audio in real time in 20 ms messages (a synthetic melody, or --wav), staggered; the latency of
frame k is the time from sending the message that holds frame k's centre sample to receiving frame k (end to end,
loopback); that of a note_on, from sending its onset sample to receiving the note_on. Reports p50 / p99 / max per N, and the largest N whose p99 stays under --target seconds with no
stream refused or closed early ("real-time streams one CPU sustains" with --cpus 0: the server pinned to one core,
DCN_TORCH_THREADS=1). One JSON line per N, then a summary line; with a started server also its CPU seconds per
second of audio streamed (server_cpu_s_per_stream_s) and 1 / that (streams a fully used core carries).
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.local_service import NotReady, free_port, process_alive, wait_ready


def melody(sr: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    x = np.zeros_like(t)
    for start in np.arange(0.0, seconds, 0.25):
        f = 440.0 * 2 ** (rng.integers(-12, 13) / 12)
        m = (t >= start) & (t < start + 0.4)
        x[m] += 0.3 * np.sin(2 * np.pi * f * (t[m] - start)) * np.exp(-3 * (t[m] - start))
    return x.astype(np.float32)


async def one_stream(url: str, pcm: bytes, sr: int, chunk_ms: float, delay: float, result: dict) -> None:
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    step = int(sr * chunk_ms / 1000) * 2
    sends: list[tuple[int, float]] = []  # (samples sent after the message, when)
    lat: list[float] = []
    note_lat: list[float] = []
    async with connect(url, max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": sr, "channels": 1, "format": "int16"}))
        ready = json.loads(await ws.recv())
        if ready["type"] != "ready":
            result.update(error=ready)
            return
        result["algorithmic_latency_s"] = ready["latency"]["algorithmic_latency_s"]

        async def sender() -> None:
            t0 = time.monotonic()
            for i in range(0, len(pcm), step):
                wait = t0 + i / 2 / sr - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await ws.send(pcm[i:i + step])
                sends.append((min(len(pcm), i + step) // 2, time.monotonic()))
            await ws.send(json.dumps({"type": "end"}))

        task = asyncio.create_task(sender())
        try:
            async for raw in ws:
                now = time.monotonic()
                m = json.loads(raw)
                if m["type"] == "frames":
                    keys = [n for n, _ in sends]
                    for t in m["times"]:
                        i = bisect.bisect_right(keys, round(t * sr))
                        if i < len(sends):
                            lat.append(now - sends[i][1])
                elif m["type"] == "note_on":
                    keys = [n for n, _ in sends]
                    i = bisect.bisect_right(keys, round(m["onset"] * sr))
                    if i < len(sends):
                        note_lat.append(now - sends[i][1])
                elif m["type"] == "summary":
                    result.update(summary_latency=m["latency"], notes=len(m["notes"]))
                    break
                elif m["type"] == "error":
                    result.update(error=m)
        finally:
            task.cancel()
    result["latencies"] = lat
    result["note_latencies"] = note_lat


async def uploader(url: str, wav: bytes, stop: asyncio.Event, counts: dict) -> None:
    """POST /transcribe the same recording again and again until ``stop`` (the streams share its batcher)."""
    import httpx

    base = url.replace("ws://", "http://").replace("wss://", "https://").rsplit("/transcribe/stream", 1)[0]
    async with httpx.AsyncClient(timeout=120) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            r = await client.post(f"{base}/transcribe", files={"file": ("a.wav", wav, "audio/wav")})
            counts.setdefault(r.status_code, 0)
            counts[r.status_code] += 1
            counts.setdefault("seconds", []).append(time.monotonic() - t0)


async def run_level(url: str, n: int, pcm: bytes, sr: int, chunk_ms: float, uploads: int = 0,
                    upload_wav: bytes = b"") -> dict:
    results = [{} for _ in range(n)]
    t0 = time.monotonic()
    stop, counts = asyncio.Event(), {}
    loaders = [asyncio.create_task(uploader(url, upload_wav, stop, counts)) for _ in range(uploads)]
    outs = await asyncio.gather(*(one_stream(url, pcm, sr, chunk_ms, 0.2 * i / n, r)
                                  for i, r in enumerate(results)), return_exceptions=True)
    stop.set()
    await asyncio.gather(*loaders, return_exceptions=True)
    up = counts.pop("seconds", [])
    upload_stats = {"uploads": uploads, "upload_status": {str(k): v for k, v in counts.items()},
                    "upload_p50_s": round(float(np.percentile(up, 50)), 2) if up else None} if uploads else {}
    errors = [repr(o) for o in outs if isinstance(o, BaseException)] + [str(r["error"]) for r in results
                                                                         if "error" in r]
    lat = np.concatenate([r.get("latencies", []) for r in results]) if results else np.zeros(0)
    nlat = np.concatenate([r.get("note_latencies", []) for r in results]) if results else np.zeros(0)
    return {"streams": n, "errors": errors[:3], "n_errors": len(errors), "frames": int(lat.size),
            "p50_s": round(float(np.percentile(lat, 50)), 4) if lat.size else None,
            "p99_s": round(float(np.percentile(lat, 99)), 4) if lat.size else None,
            "max_s": round(float(lat.max()), 4) if lat.size else None,
            "note_on_p50_s": round(float(np.percentile(nlat, 50)), 4) if nlat.size else None,
            "note_on_p99_s": round(float(np.percentile(nlat, 99)), 4) if nlat.size else None,
            "algorithmic_latency_s": next((r["algorithmic_latency_s"] for r in results
                                           if "algorithmic_latency_s" in r), None),
            "wall_s": round(time.monotonic() - t0, 1), **upload_stats}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its threads (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def start_server(port: int, cpus: str, checkpoint: str | None, block: int, max_streams: int,
                 torch_threads: int = 1) -> subprocess.Popen:
    env = {**os.environ, "DCN_TORCH_THREADS": str(torch_threads),
           "OMP_NUM_THREADS": "1", "DCN_WARMUP": "false", "DCN_STREAM_BLOCK_FRAMES": str(block),
           "DCN_STREAM_MAX_CONCURRENT": str(max_streams), "DCN_LOG_LEVEL": "warning"}
    if checkpoint:
        env["DCN_TRANSCRIBER_CHECKPOINT"] = checkpoint
    cmd = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = subprocess.Popen(cmd, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process_alive(proc), timeout=180)
    except NotReady as e:
        proc.terminate()
        raise SystemExit(str(e)) from None
    return proc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server's stream URL (default: start one)")
    p.add_argument("--streams", type=str, default="1,2,4,8,12,16,24,32", help="concurrent streams, one level each")
    p.add_argument("--seconds", type=float, default=15.0, help="audio per stream")
    p.add_argument("--chunk-ms", type=float, default=20.0)
    p.add_argument("--cpus", default="0", help="taskset CPU list for the started server ('' = no pinning)")
    p.add_argument("--checkpoint", help="DCN_TRANSCRIBER_CHECKPOINT for the started server")
    p.add_argument("--torch-threads", type=int, default=1, help="DCN_TORCH_THREADS for the started server (1: "
                                                                 "streams' small batches gain nothing from more)")
    p.add_argument("--block-frames", type=int, default=10, help="DCN_STREAM_BLOCK_FRAMES for the started server")
    p.add_argument("--wav", help="stream this file (mono int16 at its rate) instead of the synthetic melody")
    p.add_argument("--uploads", type=int, default=0, help="concurrent POST /transcribe clients during each level")
    p.add_argument("--upload-seconds", type=float, default=10.0, help="length of each uploaded recording")
    p.add_argument("--target", type=float, default=0.5, help="p99 latency target, seconds")
    p.add_argument("--stop-after-fail", action="store_true", default=True)
    args = p.parse_args(argv)
    if args.wav:
        import soundfile as sf
        audio, sr = sf.read(args.wav, dtype="float32", always_2d=True)
        audio = audio.mean(1)[: int(sr * args.seconds)]
    else:
        sr = 16000
        audio = melody(sr, args.seconds)
    pcm = (np.clip(audio, -1, 1 - 2 ** -15) * 32768).astype("<i2").tobytes()
    levels = [int(x) for x in args.streams.split(",")]
    upload_wav = b""
    if args.uploads:
        import io

        import soundfile as sf
        buf = io.BytesIO()
        sf.write(buf, melody(44100, args.upload_seconds), 44100, format="WAV", subtype="PCM_16")
        upload_wav = buf.getvalue()
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        proc = start_server(port, args.cpus, args.checkpoint, args.block_frames, max(levels), args.torch_threads)
        url = f"ws://127.0.0.1:{port}/transcribe/stream"
    best = 0
    try:
        for n in levels:
            cpu0 = cpu_seconds(proc.pid) if proc else None
            r = asyncio.run(run_level(url, n, pcm, sr, args.chunk_ms, args.uploads, upload_wav))
            cpu1 = cpu_seconds(proc.pid) if proc else None
            if cpu0 is not None and cpu1 is not None and not args.uploads:
                # server CPU per second of audio streamed: 1 / this = streams one fully used core could carry
                per = (cpu1 - cpu0) / (n * len(pcm) / 2 / sr)
                r["server_cpu_s_per_stream_s"] = round(per, 4)
                r["streams_per_core_by_cpu"] = round(1 / per, 1) if per > 0 else None
            r["cpus"] = args.cpus if proc else None
            print(json.dumps(r), flush=True)
            ok = not r["n_errors"] and r["p99_s"] is not None and r["p99_s"] < args.target
            if ok:
                best = n
            elif args.stop_after_fail:
                break
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(json.dumps({"real_time_streams_within_target": best, "target_p99_s": args.target,
                      "cpus": args.cpus if proc else None}), flush=True)


if __name__ == "__main__":
    main()
