"""Load test of the model-serving service: dynamic batching vs batch size 1, same run, same machine.

    python -m benchmarks.serve [--concurrency 64] [--duration 10] [--routes classify transcribe]

It starts ``python -m service`` twice on free loopback ports (DCN_* environment variables select
checkpoints and batching: ``max_batch_size`` 64/16, and 1), then per route alternates between them in
``--rounds`` rounds, each keeping ``--concurrency`` clients busy (one request after another over
each client's keep-alive connection), ``--duration`` seconds per route and mode in all. It prints
throughput and p50/p99 latency of the successful requests, then the batched / unbatched ratios.

Checkpoints, per model: ``--classifier`` / ``--transcriber`` when given, else the shipped one
(models/checkpoints/) when present, else a small random-weight model of the shipped architecture written
to a temporary folder (``--tiny`` forces those).
The clients speak HTTP/1.1 over raw asyncio streams with prebuilt requests: a full HTTP client
costs as much CPU per request as the server's parsing, and on a 2-core machine it would be measuring itself.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.local_service import NotReady, free_port, process_alive, wait_ready

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = (ROOT / "models" / "checkpoints" / "cifar10_complex.pt", ROOT / "models" / "checkpoints" / "musicnet_complex_v5.pt")


def tiny_checkpoints(folder: Path) -> tuple[Path, Path]:
    """Small random-weight models of the shipped architectures (the service cost, not the model's, dominates)."""
    from models.checkpoint import save_checkpoint
    from models.cifar import ComplexResNet9
    from models.transcriber import ComplexFrameTranscriber

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    ccfg = {"widths": [8, 16, 32, 64], "num_classes": 10}
    cls = save_checkpoint(folder / "cifar_tiny.pt", ComplexResNet9(**ccfg), "complex_resnet9", ccfg,
                          {"task": "image-classification", "class_names": names, "input_size": [32, 32]})
    tcfg = {"channels": 4, "hidden": 32}
    m = ComplexFrameTranscriber(**tcfg)
    tr = save_checkpoint(folder / "musicnet_tiny.pt", m, "complex_frame_transcriber", tcfg,
                         {"task": "transcription", "sample_rate": m.sample_rate, "hop_length": m.hop_length,
                          "pitches": m.pitches})
    return cls, tr


def multipart_request(path: str, filename: str, data: bytes) -> bytes:
    boundary = "benchmarkboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def sample_requests(audio_seconds: float) -> dict[str, bytes]:
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    img = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img, "PNG")
    t = np.arange(int(audio_seconds * 16000)) / 16000
    wav = io.BytesIO()
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
    return {"classify": multipart_request("/classify", "x.png", img.getvalue()),
            "transcribe": multipart_request("/transcribe", "x.wav", wav.getvalue())}


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep-alive) of one response; the body is read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers.get("connection") != "close"


async def _client(port: int, request: bytes, stop_at: float, latencies: list[float], errors: dict[int, int]) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        writer.write(request)
        await writer.drain()
        status, keep_alive = await _read_response(reader)
        if status == 200:
            latencies.append(time.perf_counter() - t0)
        else:
            errors[status] = errors.get(status, 0) + 1
        if not keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def load(port: int, request: bytes, concurrency: int, seconds: float) -> dict:
    """Latencies (s) of the successful requests, error count and wall time of one round."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, request, start + seconds, latencies, errors) for _ in range(concurrency)))
    # the wall time includes the requests still in flight at the stop time
    return {"latencies": latencies, "errors": sum(errors.values()), "elapsed": time.perf_counter() - start}


def summarize(rounds: list[dict]) -> dict[str, float]:
    latencies = [x for r in rounds for x in r["latencies"]]
    lat = np.array(latencies or [float("nan")]) * 1000
    return {"requests": len(latencies), "errors": sum(r["errors"] for r in rounds),
            "rps": len(latencies) / sum(r["elapsed"] for r in rounds),
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}


def start_service(env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env={**os.environ, **env})
    try:
        wait_ready(f"http://127.0.0.1:{port}", process_alive(proc), timeout=300)
    except NotReady as e:
        proc.kill()
        raise SystemExit(str(e)) from None
    return proc, port


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {gpu}, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per route and mode")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load first")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two modes per route")
    p.add_argument("--routes", nargs="+", default=["classify", "transcribe"], choices=["classify", "transcribe"])
    p.add_argument("--audio-seconds", type=float, default=4.0, help="length of the /transcribe upload")
    p.add_argument("--classify-batch", type=int, default=64, help="DCN_CLASSIFY_MAX_BATCH_SIZE when batching")
    p.add_argument("--transcribe-batch", type=int, default=16, help="DCN_TRANSCRIBE_MAX_BATCH_SIZE when batching")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--torch-threads", type=int, default=0, help="DCN_TORCH_THREADS (0: torch's default)")
    p.add_argument("--tiny", action="store_true", help="small random-weight models even if shipped ones exist")
    p.add_argument("--classifier", type=Path, help="classifier checkpoint (default: shipped, else tiny)")
    p.add_argument("--transcriber", type=Path, help="transcriber checkpoint (default: shipped, else tiny)")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory()
    tiny = tiny_checkpoints(Path(tmp.name))
    ckpts = tuple(given or (ship if ship.is_file() and not args.tiny else small)
                  for given, ship, small in zip((args.classifier, args.transcriber), SHIPPED, tiny))
    requests = sample_requests(args.audio_seconds)
    print(f"hardware: {hardware()}")
    print(f"models: classifier {ckpts[0]}, transcriber {ckpts[1]} (*_tiny.pt: small random-weight "
          f"ComplexResNet9 / ComplexFrameTranscriber)")
    print(f"load: {args.concurrency} concurrent clients, {args.duration:g} s per route and mode "
          f"in {args.rounds} alternating rounds (+{args.warmup:g} s warm-up); /transcribe uploads "
          f"{args.audio_seconds:g} s of audio; torch threads: {args.torch_threads or 'default'}\n", flush=True)

    modes = {"batched": (args.classify_batch, args.transcribe_batch), "batch size 1": (1, 1)}
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    rounds: dict[tuple[str, str], list[dict]] = {(m, r): [] for m in modes for r in args.routes}
    try:
        for mode, (cbs, tbs) in modes.items():
            servers[mode] = start_service({
                "DCN_CLASSIFIER_CHECKPOINT": str(ckpts[0]), "DCN_TRANSCRIBER_CHECKPOINT": str(ckpts[1]),
                "DCN_DEVICE": args.device, "DCN_TORCH_THREADS": str(args.torch_threads),
                "DCN_CLASSIFY_MAX_BATCH_SIZE": str(cbs),
                "DCN_TRANSCRIBE_MAX_BATCH_SIZE": str(tbs), "DCN_REQUEST_TIMEOUT_S": "300",
                "DCN_MAX_QUEUE_SIZE": str(max(1024, 4 * args.concurrency))})
        # Both services run side by side but only one is loaded at a time. The modes alternate in short
        # rounds, so a change in background load (a shared machine) hits both alike.
        for route in args.routes:
            for mode in modes:
                asyncio.run(load(servers[mode][1], requests[route], args.concurrency, args.warmup))
            for _ in range(args.rounds):
                for mode in modes:
                    rounds[mode, route].append(asyncio.run(load(
                        servers[mode][1], requests[route], args.concurrency, args.duration / args.rounds)))
            for mode in modes:
                r = summarize(rounds[mode, route])
                print(f"  {mode:>12} /{route:<10} {r['rps']:8.1f} req/s  p50 {r['p50']:8.1f} ms  "
                      f"p99 {r['p99']:8.1f} ms  ({r['requests']} ok, {r['errors']} errors)", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in servers.values():
            proc.wait(timeout=60)
    results = {key: summarize(value) for key, value in rounds.items()}

    print("\n| route | mode | max batch | req/s | p50 ms | p99 ms | ok | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for route in args.routes:
        for mode, sizes in modes.items():
            r = results[mode, route]
            print(f"| /{route} | {mode} | {sizes[route == 'transcribe']} | {r['rps']:.1f} | {r['p50']:.1f} | "
                  f"{r['p99']:.1f} | {r['requests']} | {r['errors']} |")
    print()
    for route in args.routes:
        b, u = results["batched", route], results["batch size 1", route]
        print(f"/{route}: batching gives {b['rps'] / u['rps']:.1f}x the throughput of batch size 1 "
              f"(p99 {b['p99']:.0f} ms vs {u['p99']:.0f} ms) at {args.concurrency} concurrent clients")
    tmp.cleanup()


if __name__ == "__main__":
    main()
