"""python -m bulk transcribe IN... --out DIR | python -m bulk classify IMAGES... --out results.parquet

Inputs: files, folders (searched recursively), globs, or URLs pyarrow.fs reads (s3://, gs://, ...). Outputs go to a
local or shared file system. One manifest row per input (``DIR/manifest.jsonl``; for classify
``results.manifest.jsonl`` next to the results); a re-run skips inputs whose outputs exist and whose bytes still
hash as recorded. Prints a JSON summary line; exit status 2 when any input failed (the others are all done).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.cli import FORMATS, _bounded, _formats, _in_range, decoding_options, output_paths
from models.inference import AUDIO_EXTENSIONS, DEFAULT_CHECKPOINT, load_transcriber, resolve_decoding

from .manifest import read_manifest

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_CLASSIFIER = Path(__file__).resolve().parent.parent / "models" / "checkpoints" / "cifar10_complex.pt"


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto, host:6379, ray://host:10001); "
                                                   "default: start a local one")
    p.add_argument("--workers", type=int, default=None, help="model workers (actors); default: as many as the "
                                                             "cluster's CPUs (or GPUs with --num-gpus) allow")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs per worker, also its torch threads; outputs "
                                                                  "equal the CLI's with --threads of this value")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per worker (0: CPU workers)")
    p.add_argument("--files-per-batch", type=int, default=4, help="input files per worker call; their windows "
                                                                  "(images) are batched together")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--no-progress", action="store_true")


def _job(a: argparse.Namespace) -> dict:
    return {"address": a.address, "workers": a.workers, "cpus_per_worker": a.cpus_per_worker,
            "num_gpus": a.num_gpus, "files_per_batch": a.files_per_batch, "progress": not a.no_progress}


def transcribe(a: argparse.Namespace) -> int:
    from .job import find_files, plan, run_job
    from .workers import Transcriber

    checkpoint = str(a.checkpoint or DEFAULT_CHECKPOINT)
    try:
        if a.min_note_length is not None and a.minimum_note_length is not None:
            raise ValueError("give --min-note-length (seconds) or --minimum-note-length (milliseconds), not both")
        model, meta = load_transcriber(checkpoint)  # here too: bad options are a usage error before any job starts
        decoding = resolve_decoding(model, meta, **decoding_options(a))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = find_files(a.inputs, AUDIO_EXTENSIONS)
    out = Path(a.out)
    outputs = output_paths([Path(f) for f in files], out, a.format)
    rows = plan(files, outputs, out / "manifest.jsonl")
    summary, _ = run_job(rows, Transcriber, {"checkpoint": checkpoint, "decoding": decoding,
                                             "threads": a.cpus_per_worker, "batch_size": a.batch_size,
                                             "device": "cuda" if a.num_gpus else "cpu", "midi_tempo": a.midi_tempo,
                                             "sonification_samplerate": a.sonification_samplerate},
                         out / "manifest.jsonl", **_job(a))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)
    return 2 if summary["failed"] else 0


def write_results(path: Path, rows: list[dict]) -> None:
    """Parquet (list columns) or, for a .csv path, CSV (lists as JSON)."""
    if path.suffix == ".csv":
        import csv
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["path"])
            w.writeheader()
            w.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)


def classify(a: argparse.Namespace) -> int:
    from models.checkpoint import load_checkpoint

    from .job import find_files, plan, run_job
    from .workers import Classifier

    out = Path(a.out)
    if out.suffix not in (".parquet", ".csv"):
        print(f"error: --out {out}: use a .parquet or .csv file", file=sys.stderr)
        return 2
    checkpoint = str(a.checkpoint or DEFAULT_CLASSIFIER)
    _, meta = load_checkpoint(checkpoint)  # here too: a checkpoint without labels is an error before any job
    if not meta.get("class_names"):
        print(f"error: {checkpoint} has no class_names in its meta (not a classifier?)", file=sys.stderr)
        return 2
    manifest = out.with_name(out.stem + ".manifest.jsonl")
    previous = read_manifest(manifest)
    files = find_files(a.inputs, IMAGE_EXTENSIONS)
    rows = plan(files, [[] for _ in files], manifest)
    summary, results = run_job(rows, Classifier, {"checkpoint": checkpoint,
                                                  "input_size": tuple(meta.get("input_size", (32, 32))),
                                                  "threads": a.cpus_per_worker, "top_k": a.top_k,
                                                  "device": "cuda" if a.num_gpus else "cpu"}, manifest, **_job(a))
    table = []
    for r in results:  # a skipped image keeps the labels of the run that classified it
        src = previous[r["path"]] if r["status"] == "skipped" else r
        table.append({"path": r["path"], "status": "failed" if r["status"] == "failed" else "done",
                      "reason": r["reason"], "sha256": r["sha256"], "labels": json.loads(src["labels"]),
                      "probabilities": json.loads(src["probabilities"])})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(out, table)
    print(json.dumps({**summary, "results": str(out)}), flush=True)
    return 2 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bulk", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transcribe", help="audio files -> one MIDI / CSV / npz / ... per file and format (the bytes "
                                                       "dcn-transcribe writes)")
    t.add_argument("inputs", nargs="+")
    t.add_argument("--out", required=True, help="output folder: <stem>.<ext> per format, manifest.jsonl, "
                                                "summary.json")
    t.add_argument("--format", type=_formats, default=["mid"], help="comma-separated " + ", ".join(sorted(FORMATS)))
    t.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (from any files); "
                                                                "default 4 on CPU, 16 on GPU")
    # dcn-transcribe's decoding and output options, parsed by its own functions (same names, bounds and meaning)
    t.add_argument("--midi-tempo", type=_in_range(0, 1000, low_open=True), default=120.0)
    t.add_argument("--sonification-samplerate", type=_in_range(8000, 192_000, int), default=22050)
    for name in ("onset_threshold", "frame_threshold", "min_note_length", "minimum_frequency", "maximum_frequency"):
        t.add_argument("--" + name.replace("_", "-"), type=_bounded(name), default=None)
    t.add_argument("--minimum-note-length", type=_in_range(0, 10_000), default=None, help="milliseconds")
    t.add_argument("--monophonic", action="store_true")
    t.add_argument("--pitch-bends", action="store_true")
    _cluster_arguments(t)
    c = sub.add_parser("classify", help="images -> one Parquet/CSV of top-k labels")
    c.add_argument("inputs", nargs="+")
    c.add_argument("--out", required=True, help="results .parquet or .csv")
    c.add_argument("--top-k", type=int, default=5)
    _cluster_arguments(c)
    a = ap.parse_args(argv)
    code = transcribe(a) if a.command == "transcribe" else classify(a)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
