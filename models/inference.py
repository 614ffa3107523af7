"""Transcribe audio from Python: one call from a file or an array to notes, decoded exactly as the
``dcn-transcribe`` command and the service's ``POST /transcribe`` decode them (the model's calibrated thresholds
unless you pass others), and the writers for every output format.

    from models.inference import transcribe_file
    result = transcribe_file("piece.wav")          # the bundled checkpoint, its calibrated decoding
    result.notes[0]        # a dict: onset, offset (seconds), pitch (MIDI number), confidence (0-1)
    result.save("piece.mid")                       # also .csv, .npz, .json, .notes.json, .wav (sonified)

Decoding options (keyword arguments of ``transcribe_file``, the CLI's options, the service's query parameters):
``onset_threshold``, ``frame_threshold`` (0-1), ``min_note_length`` (seconds, at most 10: Basic Pitch's
``minimum_note_length`` is in milliseconds), ``minimum_frequency`` / ``maximum_frequency`` (Hz: notes outside are
dropped). Anything else is a ValueError, never silently ignored.
"""
from __future__ import annotations

import functools
import io
import json
import math
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .checkpoint import load_checkpoint, resolve_device
from .transcription import (
    REONSET_KEY,
    Transcription,
    decode_notes,
    decoding_defaults,
    heads,
    notes_to_csv,
    notes_to_midi,
    round_list,
    transcribe,
    transcription_npz,
)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "musicnet_complex_v5.pt"  # the served transcriber
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
THRESHOLDS = ("onset_threshold", "frame_threshold", "min_note_length")  # decode_notes' arguments
FREQUENCY_FILTERS = ("minimum_frequency", "maximum_frequency")
FLAGS = ("monophonic", "pitch_bends")  # decode_notes' switches: one note at a time; fine pitch per note
# Inclusive bounds of every decoding option. min_note_length is in seconds; 10 s keeps Basic Pitch's milliseconds
# (default 127.70) from passing as seconds and silently giving no notes.
BOUNDS = {"onset_threshold": (0.0, 1.0), "frame_threshold": (0.0, 1.0), "min_note_length": (0.0, 10.0),
          "minimum_frequency": (1.0, 30_000.0), "maximum_frequency": (1.0, 30_000.0)}
PROBABILITY_DECIMALS = 3  # JSON only (npz keeps float32): 0.0004 -> 0.0, error <= 5e-4
TIME_DECIMALS = 6
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
              "/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/soundfonts/default.sf2")


class AudioError(ValueError):
    """An input that cannot be transcribed: missing, not a file, undecodable, empty or non-finite."""


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and the sample rate; libsndfile first, librosa/audioread for the rest."""
    import soundfile as sf
    path = str(path)
    if not Path(path).is_file():
        raise AudioError("no such file" if not Path(path).exists() else "not a file")
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except RuntimeError:  # formats libsndfile does not read (mp3 on old builds, m4a): librosa/audioread
        import librosa
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "PySoundFile failed. Trying audioread instead."
                audio, sr = librosa.load(path, sr=None, mono=False)
        except Exception as e:  # noqa: BLE001 - audioread and soundfile fail with many types
            raise AudioError(f"cannot decode audio ({type(e).__name__}: {e})".replace("\n", " ")) from None
        audio = np.atleast_2d(audio).T
    return audio, int(sr)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, device: str) -> tuple[nn.Module, dict]:
    model, meta = load_checkpoint(path, device)
    meta.setdefault("name", Path(path).stem)  # as the service names it (GET /models)
    return model, meta


def load_transcriber(checkpoint: str | Path | None = None, device: str | None = None) -> tuple[nn.Module, dict]:
    """(model, meta) of a transcriber checkpoint (default: the bundled one), cached: repeated calls are free."""
    return _load_cached(str(Path(checkpoint or DEFAULT_CHECKPOINT).resolve()), str(resolve_device(device or "cpu")))


def check_decoding_option(name: str, value: float) -> float:
    """``value`` as a float within BOUNDS[name]; ValueError naming the option otherwise."""
    if name not in BOUNDS:
        raise ValueError(f"unknown decoding option {name!r}; known: {', '.join(BOUNDS)}")
    lo, hi = BOUNDS[name]
    v = float(value)
    if not (lo <= v <= hi):  # NaN fails too
        hint = " (seconds; Basic Pitch's minimum_note_length is in milliseconds)" if name == "min_note_length" else ""
        raise ValueError(f"{name}={value:g} is outside [{lo:g}, {hi:g}]{hint}")
    return v


def resolve_decoding(model: nn.Module, meta: dict | None = None, **overrides: float | None) -> dict[str, float]:
    """The decoding to use: explicit values over the model's calibrated ``decoding_defaults``; the frequency
    filters only when given. ValueError for an unknown option, a value out of bounds, a frame-only model's
    frame threshold over its onset threshold, or a minimum frequency over the maximum."""
    flags = {k: overrides.pop(k) for k in FLAGS if k in overrides}
    given = {k: check_decoding_option(k, v) for k, v in overrides.items() if v is not None}
    defaults = decoding_defaults(model, meta)
    d = {k: float(given.get(k, defaults[k])) for k in THRESHOLDS}
    if defaults.get(REONSET_KEY) is not None:  # calibrated with the model; not a user option
        d[REONSET_KEY] = float(defaults[REONSET_KEY])
    if flags.get("monophonic") and "onset" not in heads(model):
        raise ValueError("monophonic decoding needs a model with an onset head")
    if flags.get("pitch_bends") and "bend" not in heads(model):
        raise ValueError("pitch_bends needs a model with a fine-pitch output (musicnet_complex_v3 and later)")
    d.update({k: True for k in FLAGS if flags.get(k)})
    if "onset" not in heads(model) and d["frame_threshold"] > d["onset_threshold"]:
        # Frame-only models: a note is a run above frame_threshold that reaches onset_threshold.
        # With an onset head the two thresholds apply to different heads and are independent.
        raise ValueError(f"frame_threshold ({d['frame_threshold']:g}) must not exceed onset_threshold "
                         f"({d['onset_threshold']:g}) for this frame-only model")
    d.update({k: given[k] for k in FREQUENCY_FILTERS if k in given})
    if d.get("minimum_frequency", 0.0) > d.get("maximum_frequency", math.inf):
        raise ValueError(f"minimum_frequency ({d['minimum_frequency']:g} Hz) exceeds maximum_frequency "
                         f"({d['maximum_frequency']:g} Hz)")
    return d


def midi_to_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


def decode(tr: Transcription, decoding: dict[str, float]) -> list[dict]:
    """Note events as the CLI, the service and ``transcribe_file`` produce them: ``decode_notes`` with the
    resolved thresholds, then the frequency filter (each pitch is decoded on its own, so dropping a pitch's notes
    afterwards equals masking its probabilities before)."""
    notes = decode_notes(tr, *(decoding[k] for k in THRESHOLDS), defaults={REONSET_KEY: decoding.get(REONSET_KEY)},
                         monophonic=bool(decoding.get("monophonic")), pitch_bends=bool(decoding.get("pitch_bends")))
    lo, hi = decoding.get("minimum_frequency", 0.0), decoding.get("maximum_frequency", math.inf)
    return [n for n in notes if lo <= midi_to_hz(n["pitch"]) <= hi]


def transcription_json(model_name: str, duration: float, sample_rate: int, frame_rate: float, tr: Transcription,
                       decoding: dict, notes: list[dict], frames: bool = True, extra: dict[str, Any] | None = None
                       ) -> dict:
    """The JSON body of ``POST /transcribe`` (and the CLI's .json): frame probabilities rounded to 3 decimals,
    or only the notes with ``frames=False``. ``extra`` keys (the file name) come first."""
    body: dict[str, Any] = {**(extra or {}), "model": model_name, "duration": round(duration, TIME_DECIMALS),
                            "sample_rate": sample_rate, "frame_rate": frame_rate}
    if frames:
        body.update(times=round_list(tr.times, TIME_DECIMALS), pitches=tr.pitches.tolist(),
                    probabilities=round_list(tr.probabilities, PROBABILITY_DECIMALS))
        if tr.onsets is not None:
            body["onsets"] = round_list(tr.onsets, PROBABILITY_DECIMALS)
    body.update(decoding=decoding, notes=notes)
    return body


def dumps(body: Any) -> bytes:
    """Compact JSON; ValueError for NaN or infinity (JSON has none)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


# ------------------------------------------------------------------------------------------ sonification

def find_soundfont() -> str | None:
    return next((p for p in SOUNDFONTS if Path(p).is_file()), None)


def sonify(notes: list[dict], sample_rate: int = 22050, synth: str = "auto", tempo_bpm: float = 120.0
           ) -> np.ndarray:
    """The notes as audio, mono float32 in [-1, 1]: rendered by the FluidSynth program with a General MIDI
    SoundFont (piano) when both are installed (``synth="auto"`` or ``"fluidsynth"``), else by a small additive
    synthesiser (``"sine"``: four harmonics, exponential decay, loudness from the note's velocity, or from its
    confidence when a model gives none)."""
    if synth not in ("auto", "fluidsynth", "sine"):
        raise ValueError(f"unknown synth {synth!r}: auto, fluidsynth or sine")
    soundfont, program = find_soundfont(), shutil.which("fluidsynth")
    if synth == "fluidsynth" and not (soundfont and program):
        raise RuntimeError("FluidSynth needs the fluidsynth program and a SoundFont (scripts/install-system-deps.sh)")
    if synth != "sine" and soundfont and program and notes:
        return _fluidsynth(notes, sample_rate, program, soundfont, tempo_bpm)
    return _additive(notes, sample_rate)


def _fluidsynth(notes: list[dict], sample_rate: int, program: str, soundfont: str, tempo_bpm: float) -> np.ndarray:
    import soundfile as sf
    with tempfile.TemporaryDirectory(prefix="dcn-sonify-") as tmp:
        mid, wav = Path(tmp) / "notes.mid", Path(tmp) / "notes.wav"
        mid.write_bytes(notes_to_midi(notes, tempo_bpm=tempo_bpm))
        subprocess.run([program, "-ni", "-q", "-g", "0.6", "-r", str(sample_rate), "-T", "wav", "-F", str(wav),
                        soundfont, str(mid)], check=True, capture_output=True, timeout=600)
        audio, _ = sf.read(wav, dtype="float32", always_2d=True)
    end = math.ceil(max(n["offset"] for n in notes) * sample_rate) + sample_rate  # + 1 s of release
    return np.clip(audio.mean(axis=1)[:end], -1, 1)


def _additive(notes: list[dict], sample_rate: int) -> np.ndarray:
    length = math.ceil((max((n["offset"] for n in notes), default=0.0) + 0.1) * sample_rate)
    out = np.zeros(max(length, 1), np.float64)
    for n in notes:
        a, b = int(n["onset"] * sample_rate), int(n["offset"] * sample_rate)
        t = np.arange(b - a) / sample_rate
        f = midi_to_hz(n["pitch"])
        tone = sum(np.sin(2 * np.pi * k * f * t) / k ** 2 for k in range(1, 5) if k * f < sample_rate / 2)
        envelope = np.exp(-3.0 * t) * np.minimum(1.0, (len(t) - np.arange(len(t))) / (0.01 * sample_rate))
        gain = n["velocity"] / 127 if "velocity" in n else 0.3 + 0.7 * n.get("confidence", 1.0)
        out[a:b] += 0.2 * gain * tone * np.clip(envelope, 0, 1)
    peak = np.abs(out).max()
    return (out / peak * 0.9 if peak > 0.9 else out).astype(np.float32)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ the result

OUTPUT_SUFFIXES = (".mid", ".midi", ".csv", ".npz", ".notes.json", ".json", ".wav")


def output_kind(path: str | Path) -> str:
    """What ``TranscriptionResult.save`` writes for a path, by its ending; ValueError for an unknown one."""
    name = Path(path).name.lower()
    for suffix in OUTPUT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"unknown output type for {Path(path).name!r}: use {', '.join(OUTPUT_SUFFIXES)}")


@dataclass
class TranscriptionResult:
    """A transcribed recording: frame probabilities, the notes decoded from them and how they were decoded.
    Each note is a dict with at least onset, offset (seconds), pitch (MIDI) and confidence; writers pass every
    other key through (velocity, pitch bends) where their format has room for it."""
    transcription: Transcription
    notes: list[dict]
    decoding: dict[str, float]
    duration: float                # seconds of the input
    sample_rate: int               # the model's analysis rate (the input was resampled to it)
    frame_rate: float              # frames per second (sample_rate / the model's hop length)
    model_name: str = "transcriber"
    source: str | None = None      # the file's path, when transcribed from a file
    midi_tempo: float = 120.0      # beats per minute written in MIDI files (timing is in seconds either way)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_midi(self, tempo_bpm: float | None = None) -> bytes:
        return notes_to_midi(self.notes, tempo_bpm=self.midi_tempo if tempo_bpm is None else tempo_bpm)

    def to_csv(self) -> str:
        return notes_to_csv(self.notes)

    def to_npz(self) -> bytes:
        return transcription_npz(self.transcription, self.notes, self.duration, self.sample_rate, self.frame_rate,
                                 self.decoding)

    def to_json(self, frames: bool = True) -> bytes:
        """The service's JSON body; ``frames=False``: notes and decoding only (a few KB instead of MBs)."""
        return dumps(transcription_json(self.model_name, self.duration, self.sample_rate, self.frame_rate,
                                        self.transcription, self.decoding, self.notes, frames))

    def to_wav(self, sample_rate: int = 22050, synth: str = "auto") -> bytes:
        """The notes sonified (``sonify``), as a 16-bit WAV file."""
        return wav_bytes(sonify(self.notes, sample_rate, synth, self.midi_tempo), sample_rate)

    def save(self, path: str | Path, sonification_sample_rate: int = 22050) -> Path:
        """Write one output; the format follows the name: .mid/.midi, .csv, .npz, .json (with frame
        probabilities), .notes.json (notes only), .wav (sonified notes)."""
        p = Path(path)
        kind = output_kind(p)
        data = {".mid": self.to_midi, ".midi": self.to_midi, ".npz": self.to_npz, ".json": self.to_json,
                ".notes.json": lambda: self.to_json(frames=False), ".csv": lambda: self.to_csv().encode(),
                ".wav": lambda: self.to_wav(sonification_sample_rate)}[kind]()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p


def transcribe_array(model: nn.Module, meta: dict, audio: np.ndarray, sample_rate: int, decoding: dict[str, float],
                     source: str | None = None, midi_tempo: float = 120.0) -> TranscriptionResult:
    """With a loaded model and resolved decoding; AudioError for empty or non-finite audio or model output."""
    try:
        tr = transcribe(model, audio, sample_rate)
    except ValueError as e:  # empty, NaN or infinite samples (prepare_audio)
        raise AudioError(str(e)) from None
    return transcription_result(model, meta, tr, len(audio) / sample_rate, decoding, source, midi_tempo)


def transcribe_file(source: str | Path | np.ndarray, sample_rate: int | None = None, *,
                    checkpoint: str | Path | None = None, device: str | None = None, midi_tempo: float = 120.0,
                    **decoding: float | None) -> TranscriptionResult:
    """Transcribe a file (any format soundfile or librosa reads) or an array ((samples,) or (samples, channels),
    any rate: pass ``sample_rate``). ``checkpoint``: a transcriber checkpoint (default: the bundled
    musicnet_complex_v3); ``device``: cpu (default), cuda or auto. ``decoding``: onset_threshold,
    frame_threshold, min_note_length (s), minimum_frequency, maximum_frequency (Hz); left out: the model's
    calibrated values, as the CLI and the service use; ``monophonic=True`` (one note at a time: voice, solo
    lines) and ``pitch_bends=True`` (fine pitch per note, written into MIDI) switch decoding modes. The model is loaded once per checkpoint and device."""
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise ValueError("an array needs its sample_rate")
        audio, sr, name = source, int(sample_rate), None
    else:
        if sample_rate is not None:
            raise ValueError("sample_rate is for arrays; a file's rate is read from the file")
        audio, sr = load_audio(source)
        name = str(source)
    if not 0 < midi_tempo <= 1000:
        raise ValueError(f"midi_tempo={midi_tempo:g} is outside (0, 1000] beats per minute")
    model, meta = load_transcriber(checkpoint, device)
    return transcribe_array(model, meta, audio, sr, resolve_decoding(model, meta, **decoding), name, midi_tempo)


def transcription_result(model: nn.Module, meta: dict, tr: Transcription, duration: float,
                         decoding: dict[str, float], source: str | None = None, midi_tempo: float = 120.0
                         ) -> TranscriptionResult:
    """``transcribe_array``'s result for frame probabilities already computed (bulk/ batches the windows of many
    files through the model together): decoded with ``decoding``; AudioError for non-finite model output."""
    for name, p in (("frame", tr.probabilities), ("onset", tr.onsets)):
        if p is not None and not np.isfinite(p).all():
            raise AudioError(f"the model produced {int((~np.isfinite(p)).sum())} non-finite {name} probabilities")
    return TranscriptionResult(tr, decode(tr, decoding), dict(decoding), duration, int(model.sample_rate),
                               model.sample_rate / model.hop_length, str(meta.get("name") or "transcriber"), source,
                               midi_tempo)
