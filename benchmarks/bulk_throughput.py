"""Bulk transcription on Ray (``python -m bulk``) against the single-process CLI, on the same generated files.

    python -m benchmarks.bulk_throughput speed [--files 24 --seconds 30]   # audio hours per CPU-hour: CLI, 1, 2 workers
    python -m benchmarks.bulk_throughput target                           # 100 files, 3 corrupt, one worker killed

Both start their own two-node Ray cluster on this machine (one CPU per node, ``ray start``) and stop it, pass or fail.
CPU-hours count the CPUs the model workers hold (1 per worker, torch threads 1; the CLI with --threads 1); Ray's
own processes and the driver are not counted. Also the helpers tests/bulk uses: recordings, cluster, worker kill.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.local_service import free_port

ROOT = Path(__file__).resolve().parent.parent
RAY = [str(Path(sys.executable).parent / "ray")]  # the console script of the interpreter's environment


def make_recordings(folder: Path, n: int, seconds: float, corrupt: int = 0, sr: int = 22050,
                    seed: int = 0) -> list[Path]:
    """``n`` WAV files of random piano-range harmonic notes (so the model finds notes), plus ``corrupt`` files
    whose bytes are not audio. Rate 22050 Hz, so the model's resampler runs as for real recordings."""
    import soundfile as sf
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    note = np.arange(int(0.45 * sr)) / sr  # a note every 0.5 s, 0.45 s long
    files = []
    for i in range(n):
        x = np.zeros(int(seconds * sr))
        for start in range(0, len(x) - len(note), sr // 2):
            f0 = 440 * 2 ** ((rng.integers(40, 85) - 69) / 12)
            x[start: start + len(note)] += sum(np.sin(2 * np.pi * k * f0 * note) / k for k in (1, 2, 3)) * \
                np.exp(-3 * note)
        path = folder / f"rec{i:03d}.wav"
        sf.write(path, (0.1 * x).astype(np.float32), sr, subtype="PCM_16")
        files.append(path)
    for i in range(corrupt):
        path = folder / f"broken{i}.wav"
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + rng.bytes(200))
        files.append(path)
    return files


def ray_env() -> dict:
    # The nodes' workers import this checkout (as the driver does with PYTHONPATH=.); no telemetry. A throwaway
    # cluster bound to 127.0.0.1 needs no token (a real one keeps Ray's default token authentication).
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _ray(args: list[str], env: dict) -> None:
    p = subprocess.run([*RAY, *args], check=False, env=env, capture_output=True, text=True, timeout=120)
    if p.returncode:
        raise RuntimeError(f"ray {' '.join(args)} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")


@contextmanager
def ray_cluster(cpus: tuple[int, ...] = (1, 1)) -> Iterator[str]:
    """A local Ray cluster: a head node and one more node per extra entry, each with its CPU count and its own
    temporary folder; yields the address. ``ray stop --force`` at the end, pass or fail."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix sockets live under it
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = ray_env()
    try:
        _ray(["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", str(cpus[0]), "--num-gpus", "0", "--temp-dir", temp,
                        "--include-dashboard", "false", "--disable-usage-stats"], env)
        for n in cpus[1:]:
            _ray(["start", "--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(n),
                  "--num-gpus", "0"], env)
        yield address
    finally:
        subprocess.run([*RAY, "stop", "--force"], check=False, env=env, capture_output=True, timeout=120)


def worker_pids() -> list[int]:
    """PIDs of the bulk job's model workers (Ray names the actor process ``ray::MapWorker(...)``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::MapWorker"):
                pids.append(int(d.name))
    return sorted(pids)


def manifest_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def kill_worker_mid_run(proc: subprocess.Popen, manifest: Path, timeout: float = 180.0) -> tuple[int, list[int]]:
    """Once the job has written its first manifest row (the workers are busy), freeze one worker (SIGSTOP: the
    batches it holds cannot finish, so the job cannot end without it), let the others write another row, then
    SIGKILL it. Returns its PID and the workers' PIDs at that time; Ray must restart it and run its batches
    again (rows from a PID not in that list show the restarted worker's work)."""
    t0 = time.monotonic()
    while manifest_lines(manifest) == 0 or len(worker_pids()) < 2:
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the job ended (status {proc.returncode}) or stalled before a worker could be killed")
        time.sleep(0.02)
    before = worker_pids()
    victim = before[0]
    try:
        os.kill(victim, signal.SIGSTOP)
    except ProcessLookupError:
        raise RuntimeError("the worker to kill exited first (the job ended?)") from None
    seen = manifest_lines(manifest)
    while manifest_lines(manifest) == seen and time.monotonic() - t0 < timeout and proc.poll() is None:
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    return victim, before


def bulk_command(inputs: list[str], out: Path, address: str, workers: int, formats: str = "mid,csv,npz"
                 ) -> list[str]:
    return [sys.executable, "-m", "bulk", "transcribe", *inputs, "--out", str(out), "--address", address,
            "--workers", str(workers), "--cpus-per-worker", "1", "--format", formats, "--files-per-batch", "1",
            "--no-progress"]


def run_bulk(inputs: list[str], out: Path, address: str, workers: int, kill: bool = False,
             formats: str = "mid,csv,npz", timeout: float = 600) -> tuple[dict, tuple[int, list[int]] | None]:
    """One ``python -m bulk transcribe`` job (optionally killing a worker mid-run): (its summary, what
    ``kill_worker_mid_run`` returned)."""
    proc = subprocess.Popen(bulk_command(inputs, out, address, workers, formats), env=ray_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = kill_worker_mid_run(proc, out / "manifest.jsonl") if kill else None
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"the bulk job printed no summary (status {proc.returncode}):\n{stderr[-3000:]}")
    return json.loads(lines[-1]), killed


def run_cli(inputs: list[str], out: Path, formats: list[str], threads: int = 1, options: tuple[str, ...] = ()
            ) -> tuple[list[str], float]:
    """The single-process CLI (``dcn-transcribe --out-dir OUT --format ...``, its own functions) in this process,
    model loaded once, with more of its ``options`` (--monophonic, ...): (failed inputs, seconds for all files)."""
    import torch

    from models.cli import add_arguments, find_audio, output_paths, transcribe_files
    cli = argparse.ArgumentParser()
    add_arguments(cli)
    args = cli.parse_args([*inputs, "--out-dir", str(out), "--threads", str(threads), *options])
    files = find_audio(inputs)
    before = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        failed = transcribe_files(args, list(zip(files, output_paths(files, out, formats))), [])
    finally:
        torch.set_num_threads(before)
    return failed, time.perf_counter() - t0


def differing_outputs(reference: Path, candidate: Path) -> list[str]:
    """Names of the reference's output files that are missing in ``candidate`` or differ in a byte."""
    names = [p.name for p in sorted(reference.iterdir()) if p.suffix in (".mid", ".csv", ".npz", ".json", ".wav")]
    return [n for n in names if not (candidate / n).is_file() or (candidate / n).read_bytes() != (reference / n)
            .read_bytes()]


def speed(files: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bulk") as tmp:
        tmp = Path(tmp)
        make_recordings(tmp / "in", files, seconds)
        audio_h = files * seconds / 3600
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # the CLI's JSON line per file
            _, cli_s = run_cli([str(tmp / "in")], tmp / "cli", ["mid"])
        rows = {"cli (1 process, 1 thread)": {"wall_s": round(cli_s, 2), "cpus": 1,
                                              "audio_h_per_cpu_h": round(audio_h / (cli_s / 3600), 1)}}
        with ray_cluster((1, 1)) as address:
            for workers in (1, 2):
                summary, _ = run_bulk([str(tmp / "in")], tmp / f"ray{workers}", address, workers, formats="mid")
                rows[f"ray, {workers} worker(s)"] = {
                    "wall_s": summary["wall_seconds"], "first_row_s": summary["first_row_seconds"], "cpus": workers,
                    "audio_h_per_cpu_h": round(audio_h / (summary["wall_seconds"] * workers / 3600), 1),
                    "audio_h_per_h": round(audio_h / (summary["wall_seconds"] / 3600), 1)}
        rows["cli (1 process, 1 thread)"]["audio_h_per_h"] = rows["cli (1 process, 1 thread)"]["audio_h_per_cpu_h"]
        return {"files": files, "seconds_each": seconds, "audio_hours": round(audio_h, 4), "results": rows,
                "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count()}


def target(files: int = 100, corrupt: int = 3, seconds: float = 8.0) -> dict:
    """The issue's target: ``files`` recordings with ``corrupt`` of them broken, one worker killed mid-run: every
    good file's outputs equal the CLI's, one error row per broken file; a re-run does no model work."""
    with tempfile.TemporaryDirectory(prefix="bulk") as tmp:
        tmp = Path(tmp)
        make_recordings(tmp / "in", files - corrupt, seconds, corrupt=corrupt)
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            failed_cli, _ = run_cli([str(tmp / "in")], tmp / "cli", ["mid", "csv", "npz"])
        with ray_cluster((1, 1)) as address:
            first, (victim, before) = run_bulk([str(tmp / "in")], tmp / "out", address, 2, kill=True)
            second, _ = run_bulk([str(tmp / "in")], tmp / "out", address, 2)
        diff = differing_outputs(tmp / "cli", tmp / "out")
        manifest = [json.loads(x) for x in (tmp / "out" / "manifest.jsonl").read_text().splitlines()]
        return {"first_run": first, "killed_worker_pid": victim, "cli_failed": len(failed_cli),
                "outputs_compared": len(list((tmp / "cli").iterdir())), "outputs_differing": diff,
                "rows_by_workers_started_after_the_kill": sum(int(r["worker"].rsplit(":", 1)[1]) not in before
                                                              for r in manifest[: first["files"]]),
                "rerun": second}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bulk_throughput", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--files", type=int, default=24)
    s.add_argument("--seconds", type=float, default=30.0)
    t = sub.add_parser("target")
    t.add_argument("--files", type=int, default=100)
    t.add_argument("--corrupt", type=int, default=3)
    a = ap.parse_args(argv)
    result = speed(a.files, a.seconds) if a.what == "speed" else target(a.files, a.corrupt)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
