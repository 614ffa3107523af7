"""Offline transcription of audio files with a transcriber checkpoint: the ``transcribe`` CLI.

    python -m training.musicnet transcribe a.wav b.flac some_dir/ --out-dir OUT --format mid,npz,csv
    python -m training.musicnet transcribe piece.wav --out piece.mid --out piece.npz --out piece.csv

The model is loaded once for all inputs. Folders are searched recursively for .wav, .flac, .ogg, .mp3 and
.opus files. With ``--out-dir`` every input gets ``OUT/<stem>.<ext>`` per format (a stem seen before gets
``<stem>-2``, ``<stem>-3``, ...). One JSON summary line per transcribed file goes to stdout; a file that is
missing or cannot be decoded gets one ``error: ...`` line on stderr and the others are still transcribed;
the exit status is then 2. Thresholds left out take the model's calibrated defaults
(``models.transcription.decoding_defaults``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.checkpoint import load_checkpoint
from models.transcription import (
    Transcription,
    decode_notes,
    decoding_defaults,
    heads,
    notes_to_csv,
    notes_to_midi,
    transcribe,
    transcription_npz,
)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "checkpoints" / "musicnet_complex_v2.pt"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
FORMATS = {"mid": ".mid", "midi": ".mid", "npz": ".npz", "csv": ".csv"}


class TranscribeError(Exception):
    """One input could not be transcribed (missing, undecodable, or non-finite model output)."""


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and the sample rate; libsndfile first, librosa/audioread for the rest."""
    import soundfile as sf
    path = str(path)
    if not Path(path).is_file():
        raise TranscribeError("no such file" if not Path(path).exists() else "not a file")
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except RuntimeError:  # formats libsndfile does not read (mp3 on old builds, m4a): librosa/audioread
        import librosa
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "PySoundFile failed. Trying audioread instead."
                audio, sr = librosa.load(path, sr=None, mono=False)
        except Exception as e:  # noqa: BLE001 - audioread and soundfile fail with many types
            raise TranscribeError(f"cannot decode audio ({type(e).__name__}: {e})".replace("\n", " ")) from None
        audio = np.atleast_2d(audio).T
    return audio, int(sr)


def model_decoding(model: nn.Module, meta: dict) -> dict:
    """The model's calibrated thresholds (``models.transcription.decoding_defaults``)."""
    return decoding_defaults(model, meta)


def resolve_decoding(model: nn.Module, meta: dict, onset_threshold: float | None = None,
                     frame_threshold: float | None = None, min_note_length: float | None = None) -> dict:
    """Explicit values over the calibrated defaults; ValueError for a frame-only model's frame > onset."""
    given = {"onset_threshold": onset_threshold, "frame_threshold": frame_threshold,
             "min_note_length": min_note_length}
    defaults = model_decoding(model, meta)
    d = {k: float(defaults[k] if v is None else v) for k, v in given.items()}
    if "onset" not in heads(model) and d["frame_threshold"] > d["onset_threshold"]:
        raise ValueError(f"frame threshold {d['frame_threshold']:g} exceeds onset threshold {d['onset_threshold']:g};"
                         " a frame-only model needs frame <= onset")
    return d


def write_outputs(outs: list[str | Path], tr: Transcription, notes: list[dict], duration: float,
                  sample_rate: int, decoding: dict) -> None:
    for out in outs:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix in (".mid", ".midi"):
            p.write_bytes(notes_to_midi(notes))
        elif p.suffix == ".npz":
            p.write_bytes(transcription_npz(tr, notes, duration, sample_rate, tr.frame_rate, decoding))
        elif p.suffix == ".csv":
            p.write_text(notes_to_csv(notes))
        else:
            raise ValueError(f"unknown output type {p.suffix!r}: use .mid, .npz or .csv")


def transcribe_one(model: nn.Module, audio_path: str | Path, outs: list[str | Path], decoding: dict) -> dict:
    """One file with a loaded model: write ``outs``, print and return the JSON summary; TranscribeError if the
    file cannot be read or the model output is not finite (nothing is written then)."""
    audio, sr = load_audio(audio_path)
    t0 = time.time()
    try:
        tr = transcribe(model, audio, sr)
    except ValueError as e:  # empty, NaN or infinite samples (prepare_audio)
        raise TranscribeError(str(e)) from None
    for name, p in (("frame", tr.probabilities), ("onset", tr.onsets)):
        if p is not None and not np.isfinite(p).all():
            raise TranscribeError(f"the model produced {int((~np.isfinite(p)).sum())} non-finite {name} "
                                  "probabilities; nothing written")
    notes = decode_notes(tr, **decoding)
    wall = time.time() - t0
    seconds = len(audio) / sr
    write_outputs(outs, tr, notes, seconds, int(model.sample_rate), decoding)
    summary = {"audio": str(audio_path), "seconds": round(seconds, 2), "notes": len(notes), "frames": len(tr.times),
               "wall_seconds": round(wall, 3), "real_time_factor": round(seconds / max(wall, 1e-9), 1),
               "outputs": [str(o) for o in outs]}
    print(json.dumps(summary), flush=True)
    return summary


def load_model(checkpoint: str | Path | None = None, threads: int = 2) -> tuple[nn.Module, dict]:
    torch.set_num_threads(threads)
    return load_checkpoint(checkpoint or DEFAULT_CHECKPOINT)


def transcribe_file(audio_path: str, outs: list[str], checkpoint: str | None = None, threads: int = 2,
                    onset_threshold: float | None = None, frame_threshold: float | None = None,
                    min_note_length: float | None = None) -> dict:
    """Load the model and transcribe one file into ``outs`` (.mid / .npz / .csv); None = calibrated default."""
    model, meta = load_model(checkpoint, threads)
    decoding = resolve_decoding(model, meta, onset_threshold, frame_threshold, min_note_length)
    return transcribe_one(model, audio_path, outs, decoding)


def find_audio(inputs: list[str | Path]) -> list[Path]:
    """Files as given (missing ones too: they fail later, with the others still transcribed) and the audio files
    under folders, recursively, in sorted order; each file once."""
    found, seen = [], set()
    for given in inputs:
        p = Path(given)
        files = (sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
                 if p.is_dir() else [p])
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found


def output_paths(files: list[Path], out_dir: str | Path, formats: list[str]) -> list[list[Path]]:
    """OUT/<stem>.<ext> per format; a repeated stem (a.wav and a.flac, x/a.wav and y/a.wav) gets -2, -3, ..."""
    used: set[str] = set()
    paths = []
    for f in files:
        stem, k = f.stem, 1
        while stem in used:
            k += 1
            stem = f"{f.stem}-{k}"
        used.add(stem)
        paths.append([Path(out_dir) / (stem + FORMATS[fmt]) for fmt in formats])
    return paths


def transcribe_files(inputs: list[str | Path], out_dir: str | Path, formats: list[str], checkpoint: str | None = None,
                     threads: int = 2, onset_threshold: float | None = None, frame_threshold: float | None = None,
                     min_note_length: float | None = None) -> list[str]:
    """Many files and folders, one model load; returns the inputs that failed (each reported on stderr)."""
    failed = []
    for given in inputs:
        if Path(given).is_dir() and not find_audio([given]):
            print(f"error: {given}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder", file=sys.stderr)
            failed.append(str(given))
    files = find_audio([g for g in inputs if str(g) not in failed])
    model, meta = load_model(checkpoint, threads)
    decoding = resolve_decoding(model, meta, onset_threshold, frame_threshold, min_note_length)
    for f, outs in zip(files, output_paths(files, out_dir, formats)):
        try:
            transcribe_one(model, f, outs, decoding)
        except TranscribeError as e:
            print(f"error: {f}: {e}", file=sys.stderr, flush=True)
            failed.append(str(f))
    return failed


# ------------------------------------------------------------------------------------------------ CLI

def _probability(text: str) -> float:
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return v


def _formats(text: str) -> list[str]:
    out = []
    for f in (s.strip().lower() for s in text.split(",") if s.strip()):
        if f not in FORMATS:
            raise argparse.ArgumentTypeError(f"unknown format {f!r}: use mid, npz, csv (comma-separated)")
        if FORMATS[f] not in [FORMATS[o] for o in out]:
            out.append(f)
    if not out:
        raise argparse.ArgumentTypeError("no format given")
    return out


def add_arguments(r: argparse.ArgumentParser) -> None:
    """The ``transcribe`` subcommand's arguments (training/musicnet.py builds the subparser)."""
    r.add_argument("audio", nargs="+", help="audio files and/or folders (searched recursively for "
                                            + ", ".join(AUDIO_EXTENSIONS) + ")")
    r.add_argument("--out-dir", default=None, help="write OUT_DIR/<stem>.<ext> for every input and format")
    r.add_argument("--format", type=_formats, default=["mid"], help="with --out-dir: comma-separated mid, npz, csv "
                                                                     "(default mid)")
    r.add_argument("--out", action="append", default=None,
                   help="one input only, repeatable: OUT.mid, OUT.npz, OUT.csv (the single-file form)")
    r.add_argument("--checkpoint", default=None, help=f"default {DEFAULT_CHECKPOINT.name}")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--onset-threshold", type=_probability, default=None, help="default: the model's calibrated one")
    r.add_argument("--frame-threshold", type=_probability, default=None, help="default: the model's calibrated one")
    r.add_argument("--min-note-length", type=float, default=None, help="seconds; default: the model's calibrated one")


def run(a: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Execute parsed ``transcribe`` arguments; the exit status (0, or 2 when any input failed)."""
    def usage_error(msg: str) -> int:
        if parser is not None:
            parser.error(msg)  # exits 2 with the usage line
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if (a.out is None) == (a.out_dir is None):
        return usage_error("give --out-dir OUT (any number of inputs) or --out FILE (one input)")
    thresholds = {"onset_threshold": a.onset_threshold, "frame_threshold": a.frame_threshold,
                  "min_note_length": a.min_note_length}
    try:
        if a.out is not None:
            if len(a.audio) != 1 or Path(a.audio[0]).is_dir():
                return usage_error("--out takes exactly one input file; use --out-dir for several or a folder")
            bad = [o for o in a.out if Path(o).suffix not in (".mid", ".midi", ".npz", ".csv")]
            if bad:
                return usage_error(f"unknown output type {Path(bad[0]).suffix!r} ({bad[0]}): use .mid, .npz or .csv")
            try:
                transcribe_file(a.audio[0], a.out, a.checkpoint, a.threads, **thresholds)
            except TranscribeError as e:
                print(f"error: {a.audio[0]}: {e}", file=sys.stderr)
                return 2
            return 0
        failed = transcribe_files(a.audio, a.out_dir, a.format, a.checkpoint, a.threads, **thresholds)
    except ValueError as e:  # thresholds that contradict the model
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.transcribe", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    code = run(ap.parse_args(argv), ap)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
