"""The project's transcriber against Spotify's Basic Pitch: accuracy and CPU speed on the same audio.

    python -m benchmarks.transcribe_compare --data DIR [--split test] [--checkpoint PATH] [--threads 2]
        [--max-files N] [--max-seconds S] [--group-by FIELD] [--json OUT.json] [--markdown]

e.g. ``python -m benchmarks.transcribe_compare --data /work/data/musicnet-rendered --group-by group
--json compare.json --markdown``.

``--data`` is either a MusicNet-layout folder (``DIR/{split}_data/ID.wav`` + ``DIR/{split}_labels/ID.csv``,
label times in samples at 44.1 kHz; optional ``DIR/metadata.jsonl`` with one ``{"id": ID, ...}`` per line)
or a plain folder of audio files (wav/flac/ogg/mp3), each with a same-stem ``.csv`` of notes with the
header ``onset,offset,pitch`` (seconds, MIDI) -- the project's note CSV; a ``metadata.jsonl`` next to them
is read too. ``--group-by FIELD`` repeats every metric per value of that metadata field (plus "all").

Both systems run in this one process, on the same files, interleaved (file i: project then Basic Pitch
when i is even, the other way round when odd), after one untimed warm-up each, with the same number of
threads and with spin-waiting off (OMP_WAIT_POLICY=PASSIVE for torch, ``allow_spinning=0`` for ONNX
Runtime), so neither steals the other's cores while idle and the speed ratio measures the models.

* Project: ``models.checkpoint.load_checkpoint`` + ``models.transcription.transcribe`` + ``decode_notes``
  with the checkpoint's calibrated ``decoding_defaults``.
* Basic Pitch (``basic-pitch`` 0.4.x, its ICASSP 2022 ONNX model shipped inside the package; nothing is
  downloaded): its own ``Model.predict``, ``window_audio_file``, ``unwrap_output`` (= ``run_inference``,
  fed the in-memory audio resampled exactly as its ``librosa.load(path, sr=22050)`` does) and
  ``note_creation.model_output_to_notes`` with the defaults ``predict()`` uses (onset 0.5, frame 0.3,
  minimum note length 127.7 ms = 11 frames, melodia trick, pitch bends), on our own ONNX Runtime session
  (threads, spinning off). Frame probabilities = its "note" output, onsets = its "onset" output, frame
  times = its ``model_frames_to_time`` (nominally 22050 / 256 = 86.13 fps; the project runs at 50 fps).

Timing per file and system: from reading the file (soundfile; the same reader for both) through cropping,
down-mixing, resampling, inference and note decoding to the note list. Speed = audio seconds / wall
seconds; reported as the median over files and as total audio / total wall, and the project / Basic Pitch
ratio of each.

Metrics per system (training/metrics.py):
* frame AP: micro average precision over every (frame, pitch) cell, MIDI 21-108, all files pooled; the
  targets are the label notes sounding at each frame's time (start <= t < end), each system at its own
  frame times;
* frame F1 at threshold 0.5 (mir_eval.multipitch via ``frame_metrics``) and the best frame F1 over all
  thresholds (with that threshold; micro over cells, which is what mir_eval computes on a shared grid);
* note onset P/R/F1 (mir_eval.transcription, 50 ms onset tolerance) and with offsets (offset_ratio 0.2):
  MICRO-pooled, i.e. true positives, estimated and reference note counts summed over files before
  dividing (the JSON also holds ``*_wavg``: per-file scores averaged with reference-note-count weights, as
  training/musicnet.py ``score()`` pools them);
* note counts (estimated vs reference), the median onset and offset error of notes matched on onset, and the
  false notes by kind (``note_errors``: harmonic, fragment of a held note, short, other);
* where the labels carry velocities (the renders do): note F1 with velocity (mir_eval.transcription_velocity,
  micro-pooled, onset only and with offsets) and the Pearson r of onset-matched notes' velocities within each
  file, averaged with matched-note weights (recording levels differ, so r across files means little). Basic
  Pitch's velocity is what its MIDI writes, round(127 * amplitude).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / onnxruntime / numpy start thread pools

import argparse
import csv
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.inference import DEFAULT_CHECKPOINT
from models.transcription import decode_notes, decoding_defaults, transcribe
from training.data.musicnet import MUSICNET_RATE, Labels
from training.data.render import group_value

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
PITCH_LO, PITCH_HI = 21, 108
SYSTEMS = ("project", "basic_pitch")
NAMES = {"project": "project", "basic_pitch": "Basic Pitch"}


# ------------------------------------------------------------------------------------------------ data

@dataclass
class Item:
    id: str
    audio: Path
    labels: Labels                    # sample units at 44.1 kHz (MusicNet semantics)
    meta: dict = field(default_factory=dict)


def _read_metadata(path: Path) -> dict[str, dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                out[str(d.get("id"))] = d
    return out


def _labels_from_note_csv(path: Path) -> Labels:
    """The project's note CSV (onset,offset,pitch in seconds / MIDI) as sample-unit Labels."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append((round(float(r["onset"]) * MUSICNET_RATE), round(float(r["offset"]) * MUSICNET_RATE),
                         round(float(r["pitch"])), 0))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    dur = int((arr[:, 1] - arr[:, 0]).max()) if len(arr) else 0
    return Labels(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], dur)


def find_items(data: str | os.PathLike, split: str = "test") -> list[Item]:
    root = Path(data)
    meta = _read_metadata(root / "metadata.jsonl")
    items = []
    if (root / f"{split}_data").is_dir() and (root / f"{split}_labels").is_dir():
        for wav in sorted((root / f"{split}_data").iterdir()):
            lab = root / f"{split}_labels" / f"{wav.stem}.csv"
            if wav.suffix.lower() in AUDIO_SUFFIXES and lab.is_file():
                items.append(Item(wav.stem, wav, Labels.from_csv(lab), meta.get(wav.stem, {})))
    elif root.is_dir():
        for audio in sorted(root.iterdir()):
            lab = audio.with_suffix(".csv")
            if audio.suffix.lower() in AUDIO_SUFFIXES and lab.is_file():
                items.append(Item(audio.stem, audio, _labels_from_note_csv(lab), meta.get(audio.stem, {})))
    if not items:
        raise SystemExit(f"{data}: no labelled audio (neither {split}_data/ + {split}_labels/ nor AUDIO + same-stem .csv)")
    return items


def read_audio(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and its rate, cropped to ``max_seconds``. Same reader for both systems."""
    import soundfile as sf
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError:  # formats libsndfile does not read (mp3 on old builds): librosa/audioread
        import librosa
        audio, sr = librosa.load(str(path), sr=None, mono=False)
        audio = np.atleast_2d(audio).T
    if max_seconds:
        audio = audio[: round(max_seconds * sr)]
    return np.ascontiguousarray(audio, dtype=np.float32), int(sr)


def reference(item: Item, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference notes (intervals seconds, MIDI) in MIDI 21-108 that start before ``duration`` (offsets clipped)."""
    intervals, pitches = item.labels.notes(MUSICNET_RATE)
    keep = (pitches >= PITCH_LO) & (pitches <= PITCH_HI) & (intervals[:, 0] < duration)
    return np.minimum(intervals[keep], duration), pitches[keep]


def frame_targets(item: Item, times: np.ndarray) -> np.ndarray:
    positions = np.round(np.asarray(times, dtype=np.float64) * MUSICNET_RATE).astype(np.int64)
    return item.labels.active(np.maximum(positions, 0), np.arange(PITCH_LO, PITCH_HI + 1))


# ------------------------------------------------------------------------------------------------ systems

@dataclass
class Output:
    times: np.ndarray           # (frames,) seconds
    probabilities: np.ndarray   # (frames, 88) MIDI 21..108
    notes: list[dict]           # {"onset", "offset", "pitch", ...}
    wall: float                 # seconds, file read -> notes
    seconds: float              # audio seconds


class Project:
    name = "project"

    def __init__(self, checkpoint: str, threads: int, monophonic: bool = False) -> None:
        torch.set_num_threads(threads)
        self.monophonic = monophonic
        self.model, self.meta = load_checkpoint(checkpoint)
        self.defaults = decoding_defaults(self.model)
        pitches = [int(p) for p in self.model.pitches]
        if pitches != list(range(PITCH_LO, PITCH_HI + 1)):
            raise SystemExit(f"{checkpoint}: model pitches {pitches[0]}..{pitches[-1]} ({len(pitches)}), need MIDI 21..108")

    def run(self, path: Path, max_seconds: float | None) -> Output:
        t0 = time.perf_counter()
        audio, sr = read_audio(path, max_seconds)
        tr = transcribe(self.model, audio, sr)
        notes = decode_notes(tr, defaults=self.defaults, monophonic=self.monophonic)
        wall = time.perf_counter() - t0
        return Output(tr.times, tr.probabilities, notes, wall, len(audio) / sr)


def _import_basic_pitch():
    """basic_pitch's modules, without its start-up warnings about the TF / CoreML / TFLite back ends we do not use."""
    logging.disable(logging.WARNING)
    try:
        import basic_pitch
        import basic_pitch.inference as bp_inference
        import basic_pitch.note_creation as bp_notes
        from basic_pitch import constants as bp_constants
    finally:
        logging.disable(logging.NOTSET)
    return basic_pitch, bp_inference, bp_notes, bp_constants


class BasicPitch:
    name = "basic_pitch"

    def __init__(self, threads: int) -> None:
        import onnxruntime as ort
        bp, self.inf, self.notes_mod, self.c = _import_basic_pitch()
        self.model_path = Path(bp.__file__).parent / "saved_models" / "icassp_2022" / "nmp.onnx"
        if not self.model_path.is_file():
            raise SystemExit(f"Basic Pitch ONNX model missing: {self.model_path}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        model = self.inf.Model.__new__(self.inf.Model)  # Model() would build its own session (spinning, all cores)
        model.model_type = self.inf.Model.MODEL_TYPES.ONNX
        model.model = ort.InferenceSession(str(self.model_path), sess_options=so, providers=["CPUExecutionProvider"])
        self.model = model
        # predict()'s defaults
        min_note_len = int(np.round(127.70 / 1000 * (self.c.AUDIO_SAMPLE_RATE / self.c.FFT_HOP)))  # 11 frames
        self.note_kwargs = {"onset_thresh": 0.5, "frame_thresh": 0.3, "min_note_len": min_note_len, "min_freq": None,
                            "max_freq": None, "multiple_pitch_bends": False, "melodia_trick": True, "midi_tempo": 120}

    def inference(self, audio: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        """basic_pitch.inference.run_inference on in-memory audio: librosa.load's down-mix + soxr_hq resampling,
        then the same padding, windowing, batching and unwrapping."""
        import librosa
        c = self.c
        y = librosa.to_mono(np.asarray(audio, dtype=np.float32).T) if audio.ndim == 2 else audio
        if sr != c.AUDIO_SAMPLE_RATE:
            y = librosa.resample(y, orig_sr=sr, target_sr=c.AUDIO_SAMPLE_RATE, res_type="soxr_hq")
        n_overlapping_frames = 30
        overlap_len = n_overlapping_frames * c.FFT_HOP
        hop_size = c.AUDIO_N_SAMPLES - overlap_len
        original_length = y.shape[0]
        y = np.concatenate([np.zeros((overlap_len // 2,), dtype=np.float32), y.astype(np.float32)])
        output: dict[str, list] = {"note": [], "onset": [], "contour": []}
        for window, _ in self.inf.window_audio_file(y, hop_size):
            for k, v in self.model.predict(np.expand_dims(window, axis=0)).items():
                output[k].append(v)
        return {k: self.inf.unwrap_output(np.concatenate(v), original_length, n_overlapping_frames)
                for k, v in output.items()}

    def run(self, path: Path, max_seconds: float | None) -> Output:
        t0 = time.perf_counter()
        audio, sr = read_audio(path, max_seconds)
        out = self.inference(audio, sr)
        _, events = self.notes_mod.model_output_to_notes(out, **self.note_kwargs)
        wall = time.perf_counter() - t0
        # velocity as Basic Pitch writes it into its MIDI: round(127 * amplitude)
        notes = [{"onset": float(s), "offset": float(e), "pitch": int(p), "confidence": float(a),
                  "velocity": int(np.clip(round(127 * float(a)), 1, 127))} for s, e, p, a, *_ in events]
        times = self.notes_mod.model_frames_to_time(out["note"].shape[0])
        return Output(np.asarray(times, dtype=np.float64), np.asarray(out["note"], dtype=np.float32), notes, wall,
                      len(audio) / sr)


# ------------------------------------------------------------------------------------------------ scoring

def _note_counts(item: Item, out: Output) -> dict:
    from training.metrics import note_errors, note_metrics, pearson_r, velocity_metrics
    ref_i, ref_p = reference(item, out.seconds)
    m = note_metrics(ref_i, ref_p, out.notes)
    n_ref, n_est = len(ref_p), len(out.notes)
    c = {"n_ref": n_ref, "n_est": n_est, "errors": note_errors(ref_i, ref_p, out.notes)}
    for k in ("note", "note_with_offset"):
        c[f"{k}_tp"] = round(m[f"{k}_recall"] * n_ref)
        c[k] = m
    intervals, pitches, velocities = item.labels.notes_with_velocity(MUSICNET_RATE)
    keep = (pitches >= PITCH_LO) & (pitches <= PITCH_HI) & (intervals[:, 0] < out.seconds) & (velocities > 0)
    if keep.any() and any("velocity" in n for n in out.notes):  # rendered labels know how hard each note was played
        v = velocity_metrics(np.minimum(intervals[keep], out.seconds), pitches[keep], velocities[keep], out.notes)
        c["velocity"] = {"n_ref": v["n_ref"], "n_est": v["n_est"], "pairs": len(v["velocity_pairs"]),
                         "r": pearson_r(v["velocity_pairs"]),
                         **{f"{k}_tp": round(v[f"note_{k}_recall"] * v["n_ref"])
                            for k in ("velocity", "velocity_with_offset")}}
    return c


def _prf(tp: int, n_est: int, n_ref: int) -> tuple[float, float, float]:
    p = tp / n_est if n_est else 0.0
    r = tp / n_ref if n_ref else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def best_f1(targets: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Highest micro F1 over all thresholds and that threshold."""
    from sklearn.metrics import precision_recall_curve
    t, s = np.asarray(targets).ravel(), np.asarray(scores).ravel()
    if t.sum() == 0:
        return float("nan"), float("nan")
    p, r, th = precision_recall_curve(t, s)
    f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)[:-1]
    i = int(np.argmax(f))
    return float(f[i]), float(th[i])


def score(records: list[dict], system: str) -> dict:
    """All metrics of one system over ``records`` (one per file: item, outputs, targets, note counts)."""
    from training.metrics import average_precision, frame_metrics
    outs = [r["out"][system] for r in records]
    probs = np.concatenate([o.probabilities for o in outs])
    targets = np.concatenate([r["targets"][system] for r in records])
    starts = np.cumsum([0.0] + [(o.times[-1] if len(o.times) else 0.0) + 1.0 for o in outs[:-1]])
    times = np.concatenate([o.times - o.times[0] + t0 if len(o.times) else o.times for t0, o in zip(starts, outs)])
    fm = frame_metrics(targets, probs, times, np.arange(PITCH_LO, PITCH_HI + 1), 0.5)
    bf, bt = best_f1(targets, probs)
    m = {"frame_ap": average_precision(targets, probs), "frame_f1_best": bf, "frame_best_threshold": bt,
         "frame_f1_at_0.5": fm["frame_f1"], "frame_precision_at_0.5": fm["frame_precision"],
         "frame_recall_at_0.5": fm["frame_recall"], "frames": len(probs),
         "frame_rate": float(len(probs) / sum(o.seconds for o in outs))}
    counts = [r["notes"][system] for r in records]
    n_ref, n_est = sum(c["n_ref"] for c in counts), sum(c["n_est"] for c in counts)
    w = np.array([max(c["n_ref"], 1) for c in counts], dtype=np.float64)
    for k in ("note", "note_with_offset"):
        p, r, f = _prf(sum(c[f"{k}_tp"] for c in counts), n_est, n_ref)
        m.update({f"{k}_precision": p, f"{k}_recall": r, f"{k}_f1": f})
        for q in ("precision", "recall", "f1"):
            m[f"{k}_{q}_wavg"] = float(np.average([c[k][f"{k}_{q}"] for c in counts], weights=w))
    m.update({"notes_est": n_est, "notes_ref": n_ref})
    off = [x for c in counts for x in c["errors"]["offset_errors"]]
    ons = [x for c in counts for x in c["errors"]["onset_errors"]]
    vel = [c["velocity"] for c in counts if "velocity" in c]
    if vel and len(vel) == len(counts):  # velocity F1 micro-pooled; r within each file (levels differ per file)
        for k in ("velocity", "velocity_with_offset"):
            m[f"note_{k}_f1"] = _prf(sum(v[f"{k}_tp"] for v in vel), sum(v["n_est"] for v in vel),
                                     sum(v["n_ref"] for v in vel))[2]
        rs = [(v["r"], v["pairs"]) for v in vel if np.isfinite(v["r"])]
        m["velocity_r_within_file"] = float(np.average([r for r, _ in rs], weights=[n for _, n in rs])) if rs \
            else float("nan")
    m["offset_error_median_ms"] = 1000 * float(np.median(off)) if off else float("nan")
    m["onset_error_median_ms"] = 1000 * float(np.median(ons)) if ons else float("nan")
    for k in ("harmonic", "fragment", "short", "other"):
        m[f"false_{k}"] = sum(c["errors"]["false"][k] for c in counts)
    rtf = [o.seconds / max(o.wall, 1e-9) for o in outs]
    audio_s, wall_s = sum(o.seconds for o in outs), sum(o.wall for o in outs)
    m.update({"speed_median": statistics.median(rtf), "speed_total": audio_s / max(wall_s, 1e-9),
              "audio_seconds": audio_s, "wall_seconds": wall_s})
    return m


def summarize(records: list[dict], group_by: str | None) -> dict:
    groups = {"all": records}
    if group_by:
        for r in records:
            groups.setdefault(f"{group_by}={group_value(r['item'].meta, group_by)}", []).append(r)
    out = {}
    for g, recs in groups.items():
        d = {"files": len(recs), **{s: score(recs, s) for s in SYSTEMS}}
        p, b = d["project"], d["basic_pitch"]
        d["speed_ratio_total"] = p["speed_total"] / max(b["speed_total"], 1e-12)
        d["speed_ratio_median"] = p["speed_median"] / max(b["speed_median"], 1e-12)
        out[g] = d
    return out


# ------------------------------------------------------------------------------------------------ report

ROWS = [("frame AP", "frame_ap", "{:.3f}"), ("frame F1 best", "frame_f1_best", "{:.3f}"),
        ("  at threshold", "frame_best_threshold", "{:.2f}"), ("frame F1 @0.5", "frame_f1_at_0.5", "{:.3f}"),
        ("note onset P", "note_precision", "{:.3f}"), ("note onset R", "note_recall", "{:.3f}"),
        ("note onset F1", "note_f1", "{:.3f}"), ("note+offset F1", "note_with_offset_f1", "{:.3f}"),
        ("note+velocity F1", "note_velocity_f1", "{:.3f}"),
        ("note+offset+velocity F1", "note_velocity_with_offset_f1", "{:.3f}"),
        ("velocity r (matched notes, within file)", "velocity_r_within_file", "{:.3f}"),
        ("notes est / ref", None, None), ("matched: median offset error (ms)", "offset_error_median_ms", "{:+.0f}"),
        ("matched: median onset error (ms)", "onset_error_median_ms", "{:+.0f}"),
        ("false notes: harmonic (8ve/12th/15th)", "false_harmonic", "{:d}"),
        ("false notes: fragment of a held note", "false_fragment", "{:d}"), ("false notes: short (<100 ms)", "false_short", "{:d}"),
        ("false notes: other", "false_other", "{:d}"), ("frames per second", "frame_rate", "{:.2f}"),
        ("speed median (x RT)", "speed_median", "{:.1f}"), ("speed total (x RT)", "speed_total", "{:.1f}")]


def _cell(m: dict, key: str | None, fmt: str | None) -> str:
    if key is None:
        return f"{m['notes_est']} / {m['notes_ref']}"
    v = m.get(key, float("nan"))  # velocity rows: only where labels and notes carry velocities
    return "nan" if isinstance(v, float) and not np.isfinite(v) else fmt.format(v)


def table(summary: dict, markdown: bool = False) -> str:
    lines = []
    for g, d in summary.items():
        head = f"{g}: {d['files']} files, {d['project']['audio_seconds']:.1f} s audio"
        body = [(label, _cell(d["project"], k, f), _cell(d["basic_pitch"], k, f)) for label, k, f in ROWS]
        ratio = f"project / Basic Pitch speed: {d['speed_ratio_total']:.2f}x total, {d['speed_ratio_median']:.2f}x median"
        if markdown:
            lines += [f"**{head}**", "", "| metric | project | Basic Pitch |", "| --- | ---: | ---: |"]
            lines += [f"| {a} | {b} | {c} |" for a, b, c in body] + ["", ratio, ""]
        else:
            w = max(len(a) for a, *_ in body)
            lines += [head, f"  {'':<{w}}  {'project':>12}  {'Basic Pitch':>12}"]
            lines += [f"  {a:<{w}}  {b:>12}  {c:>12}" for a, b, c in body] + [f"  {ratio}", ""]
    return "\n".join(lines)


def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def hardware() -> str:
    from training.loop import hardware_string
    return hardware_string(torch.device("cpu"))


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, float):
        return round(x, 5) if np.isfinite(x) else None
    return x


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="MusicNet-layout folder or folder of AUDIO + same-stem .csv notes")
    ap.add_argument("--split", default="test")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--threads", type=int, default=2, help="threads for both systems")
    ap.add_argument("--max-files", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=None, help="crop each file to its first S seconds")
    ap.add_argument("--group-by", default=None, help="metadata.jsonl field to break the metrics down by (kind: piano, solo line, ensemble)")
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    ap.add_argument("--quiet", action="store_true", help="no per-file progress on stderr")
    ap.add_argument("--monophonic", action="store_true", help="decode the project's notes one at a time (solo lines)")
    a = ap.parse_args(argv)

    items = find_items(a.data, a.split)[: a.max_files]
    systems = {"project": Project(a.checkpoint, a.threads, a.monophonic), "basic_pitch": BasicPitch(a.threads)}
    torch.set_num_threads(a.threads)
    warm = min(a.max_seconds or 10.0, 10.0)
    for s in systems.values():  # untimed warm-up: allocators, kernels, lazy imports (librosa, soxr, numba)
        s.run(items[0].audio, warm)

    records = []
    for i, item in enumerate(items):
        order = SYSTEMS if i % 2 == 0 else SYSTEMS[::-1]
        out = {s: systems[s].run(item.audio, a.max_seconds) for s in order}
        rec = {"item": item, "out": out, "targets": {s: frame_targets(item, o.times) for s, o in out.items()},
               "notes": {s: _note_counts(item, o) for s, o in out.items()}}
        records.append(rec)
        if not a.quiet:
            print(f"[{i + 1}/{len(items)}] {item.id}: {out['project'].seconds:.1f} s, "
                  + ", ".join(f"{NAMES[s]} {o.wall:.2f} s wall / {len(o.notes)} notes" for s, o in out.items()),
                  file=sys.stderr)

    summary = summarize(records, a.group_by)
    text = table(summary, a.markdown)
    info = (f"{len(items)} files from {a.data} | threads {a.threads} | {hardware()} | onnxruntime "
            f"{_version('onnxruntime')} | basic-pitch {_version('basic-pitch')} | checkpoint {a.checkpoint}")
    print(info + "\n\n" + text)
    result = {"command": " ".join([Path(sys.executable).name, "-m", "benchmarks.transcribe_compare",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "data": str(a.data), "split": a.split, "checkpoint": a.checkpoint, "threads": a.threads,
              "max_files": a.max_files, "max_seconds": a.max_seconds, "group_by": a.group_by,
              "hardware": hardware(), "platform": platform.platform(),
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "onnxruntime": _version("onnxruntime"), "basic-pitch": _version("basic-pitch"),
                           "numpy": np.__version__, "librosa": _version("librosa")},
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "project_decoding": systems["project"].defaults, "basic_pitch_decoding": systems["basic_pitch"].note_kwargs,
              "summary": summary,
              "files": [{"id": r["item"].id, "meta": r["item"].meta, "audio_seconds": r["out"]["project"].seconds,
                         **{s: {"wall_seconds": o.wall, "notes_est": len(o.notes), "notes_ref": r["notes"][s]["n_ref"],
                                "note_f1": r["notes"][s]["note"]["note_f1"]} for s, o in r["out"].items()}}
                        for r in records]}
    result = _jsonable(result)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
