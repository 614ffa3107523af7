"""The GPU check: everything that needs a GPU, in one bounded command for a lent GPU machine (README, "GPU check").

    python -m benchmarks.gpu_check --prepare .gpu           # here: wheels + CIFAR-10 pack, prints the device commands
    python -m benchmarks.gpu_check --out $OUT --cifar-pack .gpu/cifar --budget 330     # on the GPU: the checks
    python -m benchmarks.gpu_check --out $OUT --cifar-pack .gpu/cifar --train-only     # on the GPU: CIFAR training
    python -m benchmarks.gpu_check --cpu --out runs/gpu_check_cpu                      # dry run: tiny, on the CPU

Stages, in this order, each with its own time budget (cut to what is left of --budget); a stage that fails or runs
out of time is recorded with its error and the next one starts. After every stage the results so far are written
to OUT/gpu_check.json and OUT/gpu_check.md (one Markdown table, the device in every row), so a command killed at
its limit still returns what it measured.

  env            Python, torch, the GPU; the service's packages importable; CIFAR-10 parts (--cifar-pack) unpacked
                 into --cifar-cache, where they survive between calls while the machine stays warm
  cuda_tests     pytest -m cuda: every test marked cuda (complex BN channels_last / bf16, the service on cuda)
  classify       the service (python -m service) on the device with the shipped checkpoints, dynamic batching
                 (max batch 64) against batch size 1, at 1, 16 and 64 concurrent clients: req/s, p50, p99
                 (benchmarks.serve's clients)
  transcribe     /transcribe throughput with 60 s uploads, in audio hours per hour
  stream         live WebSocket streams (benchmarks.stream's clients) in rising numbers: the most sustained at
                 p99 frame latency < 0.5 s with no error
  complex_speed  benchmarks.complex_speed on the device: complex BN old/new, complex vs real at equal FLOPs and
                 equal parameters, eager, BN compiled, whole networks compiled
  train          (--train / --train-only) the CIFAR-10 complex ResNet-9 and its real twin, one recipe, epochs
                 chosen from the training throughput measured right before so the complex run fits
                 --train-seconds; checkpoints and logs into OUT

--cpu is the dry run the test suite runs: the same stages on the CPU with tiny random-weight models, short loads
and a tiny training run, to prove the script before a GPU is lent.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.local_service import free_port, process_alive, wait_ready

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar-10-batches-py"
CHECK_STAGES = ("env", "cuda_tests", "classify", "transcribe", "stream", "complex_speed")
# Seconds per stage on the GPU (caps; --budget cuts the last ones). The service stages include starting servers.
GPU_BUDGETS = {"env": 40, "cuda_tests": 90, "classify": 110, "transcribe": 45, "stream": 75, "complex_speed": 200,
               "train": 560}
# What the service needs beyond the GPU image's own packages (benchmarks/KINDS list: torch, numpy, pillow,
# httpx, anyio, h11, click, prometheus-client, scipy, numba, joblib, lazy-loader, msgpack, pytest ... are there).
# Versions from constraints.txt. typing-extensions: pydantic wants a recent one.
DEVICE_WHEELS = ("fastapi", "starlette", "pydantic", "pydantic-core", "pydantic-settings", "python-dotenv",
                 "annotated-types", "annotated-doc", "typing-inspection", "typing-extensions", "uvicorn",
                 "python-multipart", "websockets", "soundfile", "cffi", "pycparser", "soxr", "librosa", "audioread",
                 "decorator", "pooch", "platformdirs", "mido")
SERVICE_MODULES = ("fastapi", "starlette", "pydantic", "pydantic_settings", "uvicorn", "multipart", "websockets",
                   "soundfile", "soxr", "librosa", "mido", "PIL", "prometheus_client", "httpx")
UPLOAD_LIMIT = 64 * 2**20  # the device tool's limit on what travels with one call


class StageTimeout(Exception):
    """A stage used up its time budget (raised by SIGALRM in the main thread)."""


def _alarm(_signum, _frame) -> None:
    raise StageTimeout("stage time budget used up")


# ---------------------------------------------------------------------------------------------------------------
# Plumbing: logs, subprocesses, the service


class Run:
    """Settings, the output folder, the log and the children that must not outlive the check."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        self.args = args
        self.cpu = args.cpu
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu_check.log"
        self.device = "cpu" if args.cpu else "cuda"
        from training.loop import hardware_string
        self.hardware = hardware_string(torch.device(self.device)) if (args.cpu or torch.cuda.is_available()) \
            else "no CUDA device"
        self.children: list[subprocess.Popen] = []
        self.servers: dict[str, tuple[subprocess.Popen, int]] = {}
        self.tmp = tempfile.TemporaryDirectory(prefix="gpu_check_")
        self.cifar_status: dict[str, Any] = {}

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def command(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None,
                log: Path | None = None) -> tuple[int, str]:
        """Run ``cmd`` from the repository root with a time limit; its output goes to the log (and is returned).
        The whole process group is killed on timeout or when the stage is interrupted."""
        self.log(f"\n$ {shlex.join(cmd)}  (limit {timeout:.0f} s)")
        path = log or self.log_path
        with open(path, "a") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                rc = 124
            finally:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        text = path.read_text(errors="replace")
        start = text.rfind(f"$ {shlex.join(cmd)}") if path == self.log_path else 0
        return rc, text[start:]

    def start_service(self, name: str, env: dict[str, str]) -> None:
        """Start ``python -m service`` as ``name`` unless it runs already; ready() waits for it."""
        if name in self.servers and self.servers[name][0].poll() is None:
            return
        port = free_port()
        with open(self.log_path, "a") as f:
            proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"],
                                    cwd=ROOT, env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT)
        self.servers[name] = (proc, port)  # registered at once: an interrupted stage still stops it

    def ready(self, name: str, timeout: float) -> int:
        proc, port = self.servers[name]
        wait_ready(f"http://127.0.0.1:{port}", process_alive(proc), timeout=timeout)
        return port

    def close(self) -> None:
        for proc, _ in self.servers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in self.servers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.servers.clear()
        self.tmp.cleanup()


def served_devices(port: int) -> set[str]:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=10) as r:
        return {m["device"] for m in json.load(r)["models"]}


def checkpoints(run: Run) -> tuple[str, str]:
    """The shipped models on the GPU; tiny random-weight ones of the same architectures in the dry run."""
    from benchmarks.serve import SHIPPED, tiny_checkpoints
    if run.cpu:
        return tuple(str(p) for p in tiny_checkpoints(Path(run.tmp.name)))
    missing = [str(p) for p in SHIPPED if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"shipped checkpoints missing: {missing}")
    return tuple(str(p) for p in SHIPPED)


def service_env(run: Run, classify_batch: int, transcribe_batch: int) -> dict[str, str]:
    cls, tr = checkpoints(run)
    return {"DCN_CLASSIFIER_CHECKPOINT": cls, "DCN_TRANSCRIBER_CHECKPOINT": tr, "DCN_DEVICE": run.device,
            "DCN_CLASSIFY_MAX_BATCH_SIZE": str(classify_batch), "DCN_TRANSCRIBE_MAX_BATCH_SIZE": str(transcribe_batch),
            "DCN_REQUEST_TIMEOUT_S": "120", "DCN_MAX_QUEUE_SIZE": "4096", "DCN_STREAM_MAX_CONCURRENT": "512",
            "DCN_WARMUP": "false" if run.cpu else "true"}


def batched_server(run: Run, timeout: float) -> int:
    run.start_service("batched", service_env(run, 64, 16))
    port = run.ready("batched", timeout)
    if served_devices(port) != {run.device}:
        raise RuntimeError(f"the service runs on {served_devices(port)}, not {run.device}")
    return port


def load_round(port: int, request: bytes, clients: int, seconds: float) -> dict:
    from benchmarks.serve import load
    # bounded even if the server stops answering: the clients' own loop waits for each response
    return asyncio.run(asyncio.wait_for(load(port, request, clients, seconds), timeout=seconds + 60))


# ---------------------------------------------------------------------------------------------------------------
# Stages: each returns {"rows": [(measurement, value), ...], ...raw data}; raising marks the stage failed.


def stage_env(run: Run, budget: float) -> dict:
    import torch
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                            "hardware": run.hardware}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                       "multiprocessors": p.multi_processor_count}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    versions, missing = {}, []
    for mod in SERVICE_MODULES:
        try:
            versions[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - any import failure means the package must travel as a wheel
            missing.append(f"{mod} ({type(e).__name__})")
    info["packages"] = versions
    rows = [("Python / torch / CUDA", f"{info['python']} / {info['torch']} / {info['torch_cuda']}")]
    if "gpu" in info:
        rows.append(("GPU", f"{info['gpu']['name']}, {info['gpu']['memory_gib']} GiB, "
                            f"{info['gpu']['multiprocessors']} SMs"))
    if run.args.cifar_pack:
        from training.data.cifar import unpack_cifar10
        run.cifar_status = unpack_cifar10(run.args.cifar_pack, run.args.cifar_cache)
        info["cifar"] = run.cifar_status
        rows.append(("CIFAR-10 parts unpacked", f"{len(run.cifar_status['present'])} of {run.cifar_status['parts']}"
                                                f"{' (complete)' if run.cifar_status['complete'] else ''}"))
    rows.append(("service packages", "all importable" if not missing else "MISSING " + ", ".join(missing)))
    info["rows"] = rows
    if not run.cpu and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch")
    if missing and not run.args.train_only:
        raise RuntimeError(f"service packages missing: {missing}; carry the wheels (--prepare)")
    return info


def cuda_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text(errors="replace"))


def stage_cuda_tests(run: Run, budget: float) -> dict:
    files = cuda_test_files()
    rc, out = run.command([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *files],
                          timeout=budget - 5)
    summary = next((line for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", line)),
                   "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    result = {"files": files, "returncode": rc, "counts": counts, "summary": summary.strip("= "),
              "rows": [("pytest -m cuda", f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
                                          f"{counts.get('skipped', 0)} skipped (rc {rc})")]}
    # on the GPU every cuda test must run and pass; in the dry run they skip
    passed = rc == 0 if run.cpu else rc == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    if not passed:
        raise RuntimeError(f"pytest -m cuda: {summary.strip() or f'exit {rc}'}")
    return result


def stage_classify(run: Run, budget: float) -> dict:
    from benchmarks.serve import sample_requests, summarize
    t_end = time.monotonic() + budget
    seconds, levels = (0.6, (1, 4)) if run.cpu else (6.0, (1, 16, 64))
    run.start_service("batch 1", service_env(run, 1, 1))  # both start at once; batched_server starts the other
    ports = {"batched": batched_server(run, budget - 10)}
    ports["batch 1"] = run.ready("batch 1", t_end - time.monotonic() - 10)
    modes = list(ports)
    request = sample_requests(1.0)["classify"]
    results: dict[str, dict] = {}
    rows = []
    for clients in levels:
        rounds: dict[str, list] = {m: [] for m in modes}
        for mode in modes:  # unrecorded warm-up at this concurrency
            load_round(ports[mode], request, clients, 0.2 if run.cpu else 1.0)
        for _ in range(2):  # the modes alternate, so a change in load hits both
            for mode in modes:
                rounds[mode].append(load_round(ports[mode], request, clients, seconds / 2))
        for mode in modes:
            r = summarize(rounds[mode])
            results[f"{mode} {clients}"] = r
            rows.append((f"/classify {mode}, {clients} clients",
                         f"{r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {r['errors']} errors"))
        b, u = results[f"batched {clients}"], results[f"batch 1 {clients}"]
        ratio = b["rps"] / u["rps"] if u["rps"] else float("nan")
        results[f"ratio {clients}"] = ratio
        rows.append((f"/classify batched / batch 1, {clients} clients", f"{ratio:.1f}x throughput"))
    return {"levels": list(levels), "seconds_per_mode": seconds, "results": results, "rows": rows}


def stage_transcribe(run: Run, budget: float) -> dict:
    from benchmarks.serve import sample_requests, summarize
    audio_s, clients, seconds = (2.0, 2, 1.0) if run.cpu else (60.0, 16, 10.0)
    port = batched_server(run, budget - 5)
    request = sample_requests(audio_s)["transcribe"]
    load_round(port, request, clients, min(seconds / 3, 3.0))  # warm-up
    r = summarize([load_round(port, request, clients, seconds)])
    # throughput from the requests finished within the timed wall time, each audio_s long
    audio_hours_per_hour = r["rps"] * audio_s
    return {"audio_seconds": audio_s, "clients": clients, **r, "audio_hours_per_hour": audio_hours_per_hour,
            "rows": [(f"/transcribe, {clients} clients x {audio_s:g} s uploads",
                      f"{audio_hours_per_hour:.0f} audio-hours per hour ({r['rps']:.2f} req/s, p50 "
                      f"{r['p50'] / 1000:.2f} s, p99 {r['p99'] / 1000:.2f} s, {r['errors']} errors)")]}


def stage_stream(run: Run, budget: float) -> dict:
    import numpy as np

    from benchmarks.stream import melody, run_level
    t_end = time.monotonic() + budget
    audio_s, levels = (2.0, (1, 2)) if run.cpu else (8.0, (16, 64, 128, 256))
    port = batched_server(run, budget - 5)
    url = f"ws://127.0.0.1:{port}/transcribe/stream"
    sr = 16000
    pcm = (np.clip(melody(sr, audio_s), -1, 1 - 2 ** -15) * 32768).astype("<i2").tobytes()
    best, rows, results = 0, [], []
    for n in levels:
        if time.monotonic() + audio_s + 15 > t_end:
            rows.append((f"{n} live streams", "not run: stage budget"))
            break
        cpu0, t0 = time.process_time(), time.monotonic()
        r = asyncio.run(asyncio.wait_for(run_level(url, n, pcm, sr, 20.0), timeout=audio_s + 60))
        # the clients share this one process: near 1.0 they, not the server, may be what limits
        r["client_cpu_share"] = round((time.process_time() - cpu0) / (time.monotonic() - t0), 2)
        results.append(r)
        ok = not r["n_errors"] and r["p99_s"] is not None and r["p99_s"] < 0.5
        rows.append((f"{n} live streams", f"frame latency p50 {r['p50_s']} s, p99 {r['p99_s']} s, "
                                          f"{r['n_errors']} errors, client CPU {r['client_cpu_share']}"))
        if not ok:
            break
        best = n
    rows.append(("live streams sustained at p99 < 0.5 s", f"{best} (of levels {', '.join(map(str, levels))})"))
    return {"levels": results, "sustained": best, "rows": rows}


def _json_tail(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line)
    raise RuntimeError("no JSON result line in the output")


def stage_complex_speed(run: Run, budget: float) -> dict:
    t_end = time.monotonic() + budget
    base = ["--device", "cpu", "--batch-size", "2", "--steps", "1", "--repeats", "1"] if run.cpu else \
        ["--device", "cuda", "--batch-size", "512", "--steps", "20", "--repeats", "5"]
    variants = {"eager": [], "BN compiled": ["--compiled-bn", "--skip-bn"], "whole nets compiled": ["--compile",
                                                                                                  "--skip-bn"]}
    if run.cpu:  # compiling on the 2-core CPU takes minutes; the dry run proves the eager path
        variants = {"eager": []}
    results, rows = {}, []
    for name, extra in variants.items():
        left = t_end - time.monotonic()
        if left < 20:
            rows.append((f"complex_speed {name}", "not run: stage budget"))
            continue
        rc, out = run.command([sys.executable, "-m", "benchmarks.complex_speed", *base, *extra], timeout=left - 5)
        if rc != 0:
            rows.append((f"complex_speed {name}", f"failed (exit {rc}; log)"))
            results[name] = {"returncode": rc}
            continue
        res = results[name] = _json_tail(out)
        by = {r["model"]: r for r in res["training"]}
        if "bn" in res:
            rows.append(("complex BN fwd+bwd, old / new (4 shapes)", f"{res['bn']['old_over_new']:.2f}x"))
            rows.append(("complex BN new / real BatchNorm2d", f"{res['bn']['new_over_real']:.2f}x"))
        if "old_bn_over_new_bn_training" in res:
            rows.append(("complex_resnet9 training step, old BN / new BN",
                         f"{res['old_bn_over_new_bn_training']:.2f}x"))
        rows.append((f"training images/s, {name}: complex_resnet9 / real equal FLOPs / real equal params",
                     " / ".join(f"{by[m]['images_per_s']:.0f}" for m in ("complex_resnet9", "real, equal FLOPs",
                                                                           "real, equal params"))))
        rows.append((f"complex / real time per epoch, {name}", f"{res['complex_over_real_equal_flops']:.2f}x at "
                     f"equal FLOPs, {res['complex_over_real_equal_params']:.2f}x at equal parameters"))
    if "eager" in results and "training" in results["eager"]:
        eager = next(r for r in results["eager"]["training"] if r["model"] == "complex_resnet9")["images_per_s"]
        for name in ("BN compiled", "whole nets compiled"):
            if "training" in results.get(name, {}):
                ips = next(r for r in results[name]["training"] if r["model"] == "complex_resnet9")["images_per_s"]
                rows.append((f"complex_resnet9 {name} / eager", f"{ips / eager:.2f}x images/s"))
    if not any("training" in r for r in results.values()):
        raise RuntimeError("no complex_speed run finished")
    return {"batch": base[3], "results": results, "rows": rows}


def stage_train(run: Run, budget: float) -> dict:
    """The complex ResNet-9, then its real twin with the same flags, through training.cifar's CLI."""
    a = run.args
    t_end = time.monotonic() + budget
    data = a.cifar or run.cifar_status.get("folder") or (str(SHARED_CIFAR) if SHARED_CIFAR.is_dir() else None)
    if not data:
        raise RuntimeError(f"no complete CIFAR-10: {run.cifar_status or 'no --cifar / --cifar-pack'}")
    extra = shlex.split(a.train_args)
    rows: list[tuple[str, str]] = []
    epochs, ips = a.train_epochs, None
    if not epochs:  # as the shipped model's epochs were chosen: a budget at the throughput measured right before
        from benchmarks.complex_speed import EPOCH_IMAGES
        rc, out = run.command([sys.executable, "-m", "benchmarks.cifar_throughput", "--arch", "complex_resnet9",
                               "--batch-size", "2" if run.cpu else "512", "--steps", "1" if run.cpu else "20",
                               "--device", run.device, *(["--compile"] if "--compile" in extra else [])],
                              timeout=min(240, budget / 3))
        if rc != 0:
            raise RuntimeError(f"throughput measurement failed (exit {rc})")
        ips = _json_tail(out)["images_per_s"]
        epochs = max(1, min(300, int(a.train_seconds * ips / EPOCH_IMAGES)))
        rows.append(("complex_resnet9 training throughput before the run", f"{ips:.0f} images/s -> {epochs} epochs "
                                                                            f"in {a.train_seconds:g} s"))
    # warm-up over the first 21% of the run, as the shipped recipe (9.8 of 47 epochs)
    recipe = ["--preset", "fast", "--epochs", str(epochs), "--warmup-epochs", f"{0.21 * epochs:.1f}",
              "--eval-every", str(max(1, epochs // 4)), "--no-progress", *extra]
    if run.cpu:
        recipe += ["--device", "cpu", "--threads", "1", "--batch-size", "32", "--val-size", "64", "--train-limit",
                   "128", "--cutout", "0"]
    # the real twin at the complex net's parameter budget: a complex conv of C channels has 2 C^2 k^2 weights
    widths = [4, 8, 8, 16] if run.cpu else a.train_widths
    results = {}
    for name, arch, scale in (("complex", "complex_resnet9", 1.0), ("real", "real_resnet9", 2 ** 0.5)):
        left = t_end - time.monotonic()
        if left < 30:
            rows.append((f"cifar10 {name}", "not run: stage budget"))
            continue
        save = run.out / f"cifar10_{name}.pt"
        cmd = [sys.executable, "-m", "training.cifar", "train", "--arch", arch, "--data", str(data), *recipe,
               "--out", str(Path(run.tmp.name) / name), "--save", str(save)]
        if widths:
            cmd += ["--arch-config", json.dumps({"widths": [round(scale * w) for w in widths]})]
        log = run.out / f"train_{name}.log"
        rc, out = run.command(cmd, timeout=left - 10, log=log)
        run.log(f"(training output in {log.name})")
        if rc != 0:
            rows.append((f"cifar10 {name}", f"failed (exit {rc}; {log.name})"))
            results[name] = {"returncode": rc, "command": shlex.join(cmd)}
            continue
        final = next((json.loads(line) for line in reversed(out.splitlines()) if '"event": "final"' in line), None)
        if final is None:
            raise RuntimeError(f"{log.name}: no final line")
        results[name] = {**final, "command": shlex.join(cmd)}
        rows.append((f"cifar10 {arch} val accuracy (flip TTA / none / final weights)",
                     f"{100 * final['val_accuracy']:.2f}% / {100 * final['val_accuracy_no_tta']:.2f}% / "
                     + (f"{100 * final['val_accuracy_final_weights']:.2f}%" if "val_accuracy_final_weights" in final
                        else "-")))
        rows.append((f"cifar10 {arch} training", f"{final['epochs']} epochs, {final['training_time_s']:.1f} s, "
                                                 f"{final['images_per_s']:.0f} images/s, {final['params']:,} params, "
                                                 f"{save.stat().st_size / 1e6:.1f} MB"))
    if "val_accuracy" not in results.get("complex", {}):
        raise RuntimeError("the complex training run did not finish")
    return {"data": str(data), "epochs": epochs, "throughput_images_per_s": ips, "results": results, "rows": rows}


STAGES: dict[str, Callable[[Run, float], dict]] = {
    "env": stage_env, "cuda_tests": stage_cuda_tests, "classify": stage_classify, "transcribe": stage_transcribe,
    "stream": stage_stream, "complex_speed": stage_complex_speed, "train": stage_train}


# ---------------------------------------------------------------------------------------------------------------
# Report


def markdown(report: dict) -> str:
    lines = [f"GPU check, {report['started']}, `{report['command']}`", "",
             "| stage | measurement | result | device |", "|---|---|---|---|"]
    for s in report["stages"]:
        for measurement, value in s.get("rows") or ([] if s["status"] != "ok" else [("status", "ok")]):
            lines.append(f"| {s['stage']} | {measurement} | {value} | {report['hardware']} |")
        if s["status"] != "ok":
            lines.append(f"| {s['stage']} | **{s['status']}** after {s['seconds']:.0f} s | "
                         f"{s.get('error', '')[:300].replace('|', '/')} | {report['hardware']} |")
    return "\n".join(lines) + "\n"


def write_report(run: Run, report: dict) -> None:
    for name, text in (("gpu_check.json", json.dumps(report, indent=1, default=str)),
                       ("gpu_check.md", markdown(report))):
        tmp = run.out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, run.out / name)


def run_stages(args: argparse.Namespace) -> dict:
    run = Run(args)
    stages = ["env", "train"] if args.train_only else list(args.stages or CHECK_STAGES) + (["train"] if args.train
                                                                                            else [])
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                              "command": shlex.join(["python", "-m", "benchmarks.gpu_check", *args.argv]),
                              "hardware": run.hardware, "budget_s": args.budget, "stages": []}
    t_end = time.monotonic() + args.budget
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for name in stages:
            cap = (args.train_seconds * 1.6 + 180) if name == "train" and not args.cpu else \
                GPU_BUDGETS[name] * (args.budget_scale if not args.cpu else 1)
            budget = min(cap, t_end - time.monotonic()) if name != "train" else cap  # training has its own limit
            entry: dict[str, Any] = {"stage": name, "budget_s": round(budget, 1)}
            t0 = time.monotonic()
            if name != "train" and t_end - time.monotonic() < 5:
                entry.update(status="skipped", seconds=0.0, error="no time left in --budget")
            else:
                signal.setitimer(signal.ITIMER_REAL, budget)
                try:
                    entry.update(STAGES[name](run, budget), status="ok")
                except StageTimeout as e:
                    entry.update(status="timeout", error=str(e))
                except (Exception, SystemExit) as e:  # noqa: BLE001 - record and carry on with the next stage
                    entry.update(status="failed", error=f"{type(e).__name__}: {e}")
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                entry["seconds"] = round(time.monotonic() - t0, 1)
            report["stages"].append(entry)
            print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']:.0f} s"
                  + (f" ({entry.get('error')})" if entry["status"] != "ok" else ""), flush=True)
            write_report(run, report)
    finally:
        signal.signal(signal.SIGALRM, old)
        run.close()
    print(markdown(report), flush=True)
    return report


# ---------------------------------------------------------------------------------------------------------------
# --prepare: on this machine, what must travel with the working tree


def _constraint_versions() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def tree_bytes() -> int:
    """What travels without carry: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def device_commands(rel: str, check_budget: float, train_seconds: float, calls: int) -> list[str]:
    """The ``command`` of each device call: the checks (wheels installed first), data-only calls, the training."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    env = f"export GIT_COMMIT={commit} PYTHONUNBUFFERED=1;"
    pack = f"--cifar-pack {rel}/cifar --cifar-cache /tmp/dcn-cifar"
    first = (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
             f"{rel}/wheels/*.whl && export PYTHONPATH=/tmp/site || exit; {env} "
             f"python3 -m benchmarks.gpu_check --out $OUT {pack} --budget {check_budget:g}")
    middle = f"{env} python3 -m training.data.cifar unpack {rel}/cifar --cache /tmp/dcn-cifar"
    last = f"{env} python3 -m benchmarks.gpu_check --out $OUT {pack} --train-only --train-seconds {train_seconds:g}"
    return [first] + [middle] * (calls - 2) + [last]


def prepare(dest: Path, cifar: Path, parts: int, check_budget: float = 330, train_seconds: float = 200) -> dict:
    """Download the wheels the GPU image lacks and pack CIFAR-10 into ``dest``; plan the device calls so that each
    stays under the upload limit: the first (the checks) carries the wheels and the parts that fit beside them, the
    next ones the rest (on a machine kept warm, /tmp survives between calls), the last one trains."""
    from training.data.cifar import PACK_MANIFEST, pack_cifar10
    dest = dest if dest.is_absolute() else ROOT / dest
    pins = _constraint_versions()
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "manylinux1_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(wheels),
                    *(f"{n}=={pins[n]}" for n in DEVICE_WHEELS)], check=True)
    if not (dest / "cifar" / PACK_MANIFEST).is_file():
        pack_cifar10(cifar, dest / "cifar", parts)
    rel = str(dest.relative_to(ROOT))
    tree = tree_bytes()
    manifest = dest / "cifar" / PACK_MANIFEST
    parts_on_disk = sorted((dest / "cifar").glob("part-*.webp"), key=lambda p: int(p.stem.split("-")[1]))
    calls: list[dict] = []
    for part in parts_on_disk:
        size = part.stat().st_size
        if not calls or calls[-1]["bytes"] + size > UPLOAD_LIMIT or len(calls[-1]["carry"]) >= 8:
            base = tree + manifest.stat().st_size + (sum(w.stat().st_size for w in wheels.glob("*.whl"))
                                                     if not calls else 0)
            calls.append({"carry": ([f"{rel}/wheels"] if not calls else []) + [f"{rel}/cifar/{PACK_MANIFEST}"],
                          "bytes": base})
            if base + size > UPLOAD_LIMIT:
                raise SystemExit(f"{part.name} does not fit beside the working tree ({tree / 1e6:.1f} MB) in one "
                                 f"call of {UPLOAD_LIMIT / 2**20:.0f} MiB; pack more parts (--parts)")
        calls[-1]["carry"].append(f"{rel}/cifar/{part.name}")
        calls[-1]["bytes"] += size
    if len(calls) == 1:  # everything fits in one call: the checks, then a training call carrying no parts
        calls.append({"carry": [f"{rel}/cifar/{PACK_MANIFEST}"], "bytes": tree + manifest.stat().st_size})
    for call, command in zip(calls, device_commands(rel, check_budget, train_seconds, len(calls))):
        call.update(command=command, mb=round(call.pop("bytes") / 1e6, 2))
    return {"tree_mb": round(tree / 1e6, 2), "limit_mb": round(UPLOAD_LIMIT / 1e6, 2), "calls": calls}


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="results folder (default $OUT)")
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU: tiny models, short loads, tiny training")
    p.add_argument("--budget", type=float, default=None, help="seconds for the check stages (default 450; --cpu 240)")
    p.add_argument("--stages", type=lambda s: s.split(","), help=f"comma list of {','.join(CHECK_STAGES)}")
    p.add_argument("--train", action="store_true", help="after the checks, the CIFAR-10 training stage")
    p.add_argument("--train-only", action="store_true", help="env (unpacking the CIFAR parts) and training only")
    p.add_argument("--cifar", help="a CIFAR-10 folder (default: the unpacked pack, else ../shared/data)")
    p.add_argument("--cifar-pack", action="append", default=[], help="folder with manifest.json and part-K.webp")
    p.add_argument("--cifar-cache", default="/tmp/dcn-cifar", help="where parts are decoded (kept between calls)")
    p.add_argument("--train-seconds", type=float, default=200.0,
                   help="training time of the complex run; its epochs follow from the throughput measured first")
    p.add_argument("--train-epochs", type=int, default=0, help="fixed epochs instead (0: from --train-seconds)")
    p.add_argument("--train-args", default="--ema 0.995", help="more training.cifar flags for both runs")
    p.add_argument("--train-widths", type=lambda s: [int(w) for w in s.split(",")],
                   help="complex widths, e.g. 40,80,160,320 (default 32,64,128,256); the real twin gets sqrt(2) x")
    p.add_argument("--prepare", type=Path, metavar="DIR",
                   help="here: download the device's missing wheels and pack CIFAR-10 into DIR; print the calls")
    p.add_argument("--prepare-cifar", type=Path, default=SHARED_CIFAR)
    p.add_argument("--parts", type=int, default=8, help="CIFAR-10 pack parts (--prepare)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv = argv
    if args.prepare:
        plan = prepare(args.prepare, args.prepare_cifar, args.parts, args.budget or 330, args.train_seconds)
        print(json.dumps(plan, indent=1))
        return plan
    args.budget = args.budget or (240.0 if args.cpu else 450.0)
    # the per-stage caps are sized for 450 s; a smaller --budget shrinks them alike
    args.budget_scale = min(1.0, args.budget / 450.0) if not args.cpu else 1.0
    return run_stages(args)


if __name__ == "__main__":
    report = main()
    sys.exit(0 if all(s.get("status") == "ok" for s in report.get("stages", [{"status": "ok"}])) else 1)
