"""``dcn-transcribe``: audio files and folders -> MIDI, CSV, NPZ, JSON, sonified WAV (``models.inference``).

    dcn-transcribe a.wav b.flac some_dir/ --out-dir OUT --format mid,csv      # or: python -m models.cli ...
    dcn-transcribe piece.wav --out piece.mid --out piece.notes.json
    dcn-transcribe songs/ --out-dir OUT --save-midi --sonify-midi --skip-existing   # Basic Pitch's flags

The model is loaded once for all inputs. Folders are searched recursively for .wav, .flac, .ogg, .mp3 and
.opus files. With ``--out-dir`` every input gets ``OUT/<stem><ext>`` per format (a stem seen before gets
``<stem>-2``, ``<stem>-3``, ...). One JSON summary line per file goes to stdout; a file that is missing or cannot
be decoded gets one ``error: ...`` line on stderr and the others are still transcribed; the exit status is then 2.
Thresholds left out take the model's calibrated values, as the service does. Conflicting or out-of-range options
are usage errors (exit 2) before anything is loaded.

Basic Pitch's option names work where they mean the same thing: --onset-threshold, --frame-threshold,
--minimum-note-length (milliseconds, as there), --minimum-frequency, --maximum-frequency, --midi-tempo,
--save-midi, --sonify-midi, --save-model-outputs (our .npz), --save-note-events (our .csv),
--sonification-samplerate. Differences: outputs go to --out-dir (Basic Pitch: a first positional argument);
thresholds default to the model's calibration, not 0.5 / 0.3; --min-note-length is seconds; existing outputs are
overwritten unless --skip-existing (Basic Pitch refuses to overwrite); sonified audio is ``<stem>.sonified.wav``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .inference import (
    AUDIO_EXTENSIONS,
    BOUNDS,
    DEFAULT_CHECKPOINT,
    AudioError,
    load_audio,
    load_transcriber,
    output_kind,
    resolve_decoding,
    transcribe_array,
)

# --format name -> file ending
FORMATS = {"mid": ".mid", "midi": ".mid", "npz": ".npz", "csv": ".csv", "json": ".json", "notes": ".notes.json",
           "wav": ".sonified.wav"}
BASIC_PITCH_FLAGS = {"save_midi": "mid", "sonify_midi": "wav", "save_model_outputs": "npz", "save_note_events": "csv"}


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
    """OUT/<stem><ext> per format; a repeated stem (a.wav and a.flac, x/a.wav and y/a.wav) gets -2, -3, ..."""
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


def transcribe_one(model: torch.nn.Module, meta: dict, audio_path: Path, outs: list[Path], decoding: dict,
                   args: argparse.Namespace) -> dict:
    """One file with a loaded model: write ``outs``, print and return the JSON summary; AudioError when the file
    cannot be read or the model output is not finite (nothing is written then)."""
    if any(o.resolve() == audio_path.resolve() for o in outs if audio_path.exists()):
        raise AudioError("an output would overwrite this input; choose another --out / --out-dir")
    if args.skip_existing and outs and all(o.exists() for o in outs):
        summary = {"audio": str(audio_path), "skipped": "outputs exist (--skip-existing)",
                   "outputs": [str(o) for o in outs]}
        print(json.dumps(summary), flush=True)
        return summary
    audio, sr = load_audio(audio_path)
    t0 = time.time()
    result = transcribe_array(model, meta, audio, sr, decoding, str(audio_path), args.midi_tempo)
    wall = time.time() - t0
    for out in outs:
        result.save(out, args.sonification_samplerate)
    summary = {"audio": str(audio_path), "seconds": round(result.duration, 2), "notes": len(result.notes),
               "frames": len(result.transcription.times), "wall_seconds": round(wall, 3),
               "real_time_factor": round(result.duration / max(wall, 1e-9), 1), "outputs": [str(o) for o in outs]}
    print(json.dumps(summary), flush=True)
    return summary


def transcribe_files(args: argparse.Namespace, jobs: list[tuple[Path, list[Path]]], failed: list[str]) -> list[str]:
    """Load the model once and transcribe every (input, outputs) job; returns the inputs that failed."""
    torch.set_num_threads(args.threads)
    model, meta = load_transcriber(args.checkpoint, args.device)
    decoding = resolve_decoding(model, meta, **decoding_options(args))
    for f, outs in jobs:
        try:
            transcribe_one(model, meta, f, outs, decoding, args)
        except AudioError as e:
            print(f"error: {f}: {e}", file=sys.stderr, flush=True)
            failed.append(str(f))
    return failed


# ------------------------------------------------------------------------------------------------ arguments

def _bounded(name: str, cast=float):
    lo, hi = BOUNDS.get(name, (None, None))

    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if lo is not None and not lo <= v <= hi:
            hint = " (seconds; --minimum-note-length takes milliseconds)" if name == "min_note_length" else ""
            raise argparse.ArgumentTypeError(f"{text} is outside [{lo:g}, {hi:g}]{hint}")
        return v
    return parse


def _in_range(lo: float, hi: float, cast=float, low_open: bool = False):
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if cast is int else ' number'}"
                                             ) from None
        if not (lo < v if low_open else lo <= v) or not v <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside {'(' if low_open else '['}{lo:g}, {hi:g}]")
        return v
    return parse


def _formats(text: str) -> list[str]:
    out = []
    for f in (s.strip().lower() for s in text.split(",") if s.strip()):
        if f not in FORMATS:
            raise argparse.ArgumentTypeError(f"unknown format {f!r}: use {', '.join(FORMATS)} (comma-separated)")
        if FORMATS[f] not in [FORMATS[o] for o in out]:
            out.append(f)
    if not out:
        raise argparse.ArgumentTypeError("no format given")
    return out


def add_arguments(r: argparse.ArgumentParser) -> None:
    """The command's arguments (also the ``transcribe`` subcommand of ``python -m training.musicnet``)."""
    r.add_argument("audio", nargs="+", help="audio files and/or folders (searched recursively for "
                                            + ", ".join(AUDIO_EXTENSIONS) + ")")
    out = r.add_argument_group("outputs")
    out.add_argument("--out-dir", default=None, help="write OUT_DIR/<stem><ext> for every input and format")
    out.add_argument("--format", type=_formats, default=None,
                     help="with --out-dir: comma-separated " + ", ".join(f"{k} ({v})" for k, v in FORMATS.items())
                          + "; default mid")
    for flag, fmt in BASIC_PITCH_FLAGS.items():
        out.add_argument("--" + flag.replace("_", "-"), action="store_true",
                         help=f"with --out-dir: add the {fmt} format (Basic Pitch's flag)")
    out.add_argument("--out", action="append", default=None,
                     help="one input only, repeatable: the file's ending picks the format (.mid, .midi, .csv, .npz, "
                          ".json, .notes.json, .wav)")
    out.add_argument("--skip-existing", action="store_true", help="skip an input whose outputs all exist")
    out.add_argument("--midi-tempo", type=_in_range(0, 1000, low_open=True), default=120.0,
                     help="tempo written in MIDI files, beats per minute (note times are in seconds either way)")
    out.add_argument("--sonification-samplerate", type=_in_range(8000, 192_000, int), default=22050,
                     help="sample rate of sonified .wav outputs (FluidSynth when installed, else a sine synth)")
    m = r.add_argument_group("model")
    m.add_argument("--checkpoint", default=None, help=f"default {DEFAULT_CHECKPOINT.name}")
    m.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    m.add_argument("--threads", type=_in_range(1, 256, int), default=2, help="CPU threads")
    d = r.add_argument_group("decoding (default: the model's calibrated values)")
    d.add_argument("--onset-threshold", type=_bounded("onset_threshold"), default=None)
    d.add_argument("--frame-threshold", type=_bounded("frame_threshold"), default=None)
    d.add_argument("--min-note-length", type=_bounded("min_note_length"), default=None, help="seconds")
    d.add_argument("--minimum-note-length", type=_in_range(0, 10_000), default=None,
                   help="milliseconds (Basic Pitch's unit); not with --min-note-length")
    d.add_argument("--minimum-frequency", type=_bounded("minimum_frequency"), default=None,
                   help="Hz: notes below are dropped")
    d.add_argument("--maximum-frequency", type=_bounded("maximum_frequency"), default=None,
                   help="Hz: notes above are dropped")
    d.add_argument("--monophonic", action="store_true",
                   help="at most one note at a time (a voice, a solo wind or string line)")
    d.add_argument("--pitch-bends", action="store_true",
                   help="each note's fine pitch (vibrato, glides) as pitch-wheel events in the MIDI and per-frame cents "
                        "in the JSON; each note bends on a channel of its own (Basic Pitch's --multiple-pitch-bends)")


def decoding_options(a: argparse.Namespace) -> dict:
    ml = a.min_note_length if a.minimum_note_length is None else a.minimum_note_length / 1000
    return {"onset_threshold": a.onset_threshold, "frame_threshold": a.frame_threshold, "min_note_length": ml,
            "minimum_frequency": a.minimum_frequency, "maximum_frequency": a.maximum_frequency,
            "monophonic": a.monophonic, "pitch_bends": a.pitch_bends}


def check_arguments(a: argparse.Namespace) -> str | None:
    """The first conflict between options, as a usage-error message; None when they agree."""
    flagged = [fmt for flag, fmt in BASIC_PITCH_FLAGS.items() if getattr(a, flag)]
    if (a.out is None) == (a.out_dir is None):
        return "give --out-dir OUT (any number of inputs) or --out FILE (one input)"
    if a.out is not None:
        if a.format is not None or flagged:
            return "--out picks the format from the file name; --format and --save-*/--sonify-midi go with --out-dir"
        if len(a.audio) != 1 or Path(a.audio[0]).is_dir():
            return "--out takes exactly one input file; use --out-dir for several or a folder"
        for o in a.out:
            try:
                output_kind(o)
            except ValueError as e:
                return str(e)
    if a.min_note_length is not None and a.minimum_note_length is not None:
        return "give --min-note-length (seconds) or --minimum-note-length (milliseconds), not both"
    lo, hi = a.minimum_frequency, a.maximum_frequency
    if lo is not None and hi is not None and lo > hi:
        return f"--minimum-frequency {lo:g} exceeds --maximum-frequency {hi:g}"
    if a.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available (use cpu or auto)"
    return None


def run(a: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Execute parsed arguments; the exit status (0, or 2 when any input failed or the options conflict)."""
    def usage_error(msg: str) -> int:
        if parser is not None:
            parser.error(msg)  # exits 2 with the usage line
        print(f"error: {msg}", file=sys.stderr)
        return 2

    problem = check_arguments(a)
    if problem:
        return usage_error(problem)
    failed: list[str] = []
    if a.out is not None:
        jobs = [(Path(a.audio[0]), [Path(o) for o in a.out])]
    else:
        formats = list(a.format or [])
        for flag, fmt in BASIC_PITCH_FLAGS.items():
            if getattr(a, flag) and FORMATS[fmt] not in [FORMATS[f] for f in formats]:
                formats.append(fmt)
        for given in a.audio:
            if Path(given).is_dir() and not find_audio([given]):
                print(f"error: {given}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder",
                      file=sys.stderr)
                failed.append(str(given))
        files = find_audio([g for g in a.audio if str(g) not in failed])
        jobs = list(zip(files, output_paths(files, a.out_dir, formats or ["mid"])))
    try:
        transcribe_files(a, jobs, failed)
    except ValueError as e:  # thresholds that contradict the model; an unreadable checkpoint (CheckpointError)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="dcn-transcribe", description=__doc__.split("\n\n")[0],
                                 epilog="Basic Pitch users: see the module docstring (python -m models.cli) or the "
                                        "README for each option that differs.")
    add_arguments(ap)
    code = run(ap.parse_args(argv), ap)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
