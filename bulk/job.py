"""The Ray side of a bulk job: inputs -> Ray Data ``map_batches`` over an actor pool (one model per worker, retried
when a worker dies) -> manifest rows streamed back to the driver, appended as they arrive -> summary.

The only module of the project that imports Ray (the optional ``batch`` extra), and only inside ``run_job``.
"""
from __future__ import annotations

import glob
import json
import sys
import time
from pathlib import Path
from typing import Any

from .manifest import Manifest, completed, read_manifest
from .workers import is_url


def find_files(inputs: list[str], extensions: tuple[str, ...]) -> list[str]:
    """Files as given (missing ones too: they get a failed row), globs, and folders searched recursively (sorted)
    for ``extensions``; local paths or URLs that pyarrow.fs lists (s3://, gs://, ...). Each file once, in order
    (the same order as the transcription CLI's ``find_audio`` for local inputs, so output names agree)."""
    found, seen = [], set()
    for given in inputs:
        if is_url(given):
            files = _list_url(given, extensions)
        elif Path(given).is_dir():
            files = sorted(str(f) for f in Path(given).rglob("*") if f.is_file() and f.suffix.lower() in extensions)
        elif glob.has_magic(given) and not Path(given).exists():
            files = sorted(glob.glob(given, recursive=True))
        else:
            files = [given]
        for f in files:
            key = f if is_url(f) else str(Path(f).resolve())
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found


def _list_url(url: str, extensions: tuple[str, ...]) -> list[str]:
    import pyarrow.fs
    fs, inner = pyarrow.fs.FileSystem.from_uri(url)
    info = fs.get_file_info(inner)
    if info.type != pyarrow.fs.FileType.Directory:
        return [url]
    scheme = url.split("://", 1)[0]
    infos = fs.get_file_info(pyarrow.fs.FileSelector(inner, recursive=True))
    return sorted(f"{scheme}://{i.path}" for i in infos
                  if i.type == pyarrow.fs.FileType.File and Path(i.path).suffix.lower() in extensions)


def plan(files: list[str], outputs: list[list[str]], manifest_path: str | Path) -> list[dict]:
    """One input row per file: its outputs and, when an earlier run completed it, that run's hash and seconds."""
    previous = read_manifest(manifest_path)
    rows = []
    for f, outs in zip(files, outputs):
        sha, seconds = completed(previous.get(f))
        rows.append({"path": f, "outputs": json.dumps([str(o) for o in outs]), "prev_sha256": sha,
                     "prev_seconds": seconds})
    return rows


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def run_job(rows: list[dict], worker_cls: type, worker_kwargs: dict, manifest_path: str | Path, *,
            address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
            num_gpus: float = 0, files_per_batch: int = 4, progress: bool = True) -> tuple[dict, list[dict]]:
    """Run ``worker_cls`` over ``rows`` on Ray; append each result row to the manifest. Returns (summary, rows).

    ``address``: an existing cluster ("auto", "ray://host:10001", "host:6379"); None starts a local one.
    ``workers``: actors in the pool; None = as many as the cluster's CPUs (or GPUs) allow."""
    import ray
    from tqdm import tqdm

    t_start = time.time()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False if address is None else None,
                 logging_level="WARNING", log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts files and audio, not blocks
    ctx.print_on_execution_start = False
    if workers is None:
        res = ray.cluster_resources()
        workers = int(res.get("GPU", 0) // num_gpus) if num_gpus else int(res.get("CPU", 1) // cpus_per_worker)
    workers = max(1, workers)
    manifest = Manifest(manifest_path)
    results: list[dict] = []
    counts = {"done": 0, "failed": 0, "skipped": 0}
    seconds = {"done": 0.0, "skipped": 0.0}
    work = {"windows": 0, "model_loads": 0}
    bar = tqdm(total=len(rows), unit="file", disable=not progress, file=sys.stderr, desc="bulk")
    t0 = time.time()
    first = None  # seconds to the first row: worker start and model load, what a short job is dominated by
    try:
        if rows:
            ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // files_per_batch)))
            # An actor pool: a dead worker is restarted and its batches run again (Ray Data's defaults for actor
            # pools: max_restarts=-1, max_task_retries=-1; tests/bulk kills one to prove it).
            ds = ds.map_batches(worker_cls, fn_constructor_kwargs=worker_kwargs, batch_size=files_per_batch,
                                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                                num_cpus=cpus_per_worker, num_gpus=num_gpus or None)
            for row in ds.iter_rows():
                first = time.time() - t0 if first is None else first
                row = {k: _plain(v) for k, v in row.items()}
                row["outputs"] = json.loads(row["outputs"])
                manifest.append(row)
                results.append(row)
                counts[row["status"]] += 1
                seconds[row["status"]] = seconds.get(row["status"], 0.0) + row["seconds"]
                for k in work:
                    work[k] += int(row[k])
                bar.update(1)
                bar.set_postfix(failed=counts["failed"], audio_h=f"{(seconds['done'] + seconds['skipped']) / 3600:.2f}")
    finally:
        bar.close()
        manifest.close()
    wall = time.time() - t0
    summary = {**counts, "files": len(rows), "audio_hours_done": round(seconds["done"] / 3600, 4),
               "audio_hours_skipped": round(seconds["skipped"] / 3600, 4), "wall_seconds": round(wall, 2),
               "first_row_seconds": round(first or 0.0, 2),
               "startup_seconds": round(t0 - t_start, 2), "workers": workers, "cpus_per_worker": cpus_per_worker,
               "num_gpus_per_worker": num_gpus,
               "audio_hours_per_worker_hour": round(seconds["done"] / max(wall * workers, 1e-9), 2),
               **work, "manifest": str(manifest_path)}
    if len(results) != len(rows):  # every input gets a row; anything else is a bug worth stopping on
        raise RuntimeError(f"{len(rows)} inputs but {len(results)} manifest rows")
    return summary, results
