"""Audio -> per-frame pitch probabilities -> note events: the one inference API for transcribers.

Used by the offline CLI (training/musicnet.py transcribe) and the service's batcher alike.

Contract every transcriber architecture in models/transcriber.py fulfils (attributes + forward):
    sample_rate: int          model input rate (Hz)
    hop_length: int           samples between frames; frame k is centred at sample k * hop_length
    pitches: list[int]        MIDI numbers of the output columns
    frames_per_window: int    output frames per window
    context: int              extra samples the model sees on each side of a window's frames
    forward(windows)          (B, window_samples) float -> (B, frames_per_window, len(pitches)) logits
with window_samples = frames_per_window * hop_length + 2 * context. Window j holds the samples
[j*F*hop - context, (j+1)*F*hop + context) (zero outside the audio) and yields frames
j*F ... (j+1)*F - 1, so windows never overlap in output, are independent (batchable across
requests), and a recording of any length is processed in bounded memory.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Transcription:
    times: np.ndarray          # (frames,) seconds, frame centres
    pitches: np.ndarray        # (pitches,) MIDI numbers
    probabilities: np.ndarray  # (frames, pitches) float32

    @property
    def frame_rate(self) -> float:
        return float(1.0 / (self.times[1] - self.times[0])) if len(self.times) > 1 else float("nan")


def window_samples(model: nn.Module) -> int:
    return model.frames_per_window * model.hop_length + 2 * model.context


def prepare_audio(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """(samples,) or (samples, channels) at any rate -> mono float32 at ``target_rate``."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1:
        raise ValueError(f"audio must be (samples,) or (samples, channels), got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("audio is empty")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    if sample_rate != target_rate:
        import librosa  # soxr resampler; imported lazily, it is slow to import
        audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=target_rate, res_type="soxr_hq")
    return np.ascontiguousarray(audio, dtype=np.float32)


def count_frames(model: nn.Module, n_samples: int) -> int:
    return n_samples // model.hop_length + 1


def cut_windows(model: nn.Module, audio: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mono audio at the model rate -> (windows (W, window_samples) float32, number of frames)."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    n_frames = count_frames(model, x.numel())
    step = model.frames_per_window * model.hop_length
    n_windows = -(-n_frames // model.frames_per_window)
    total = n_windows * step + 2 * model.context
    padded = torch.zeros(total)
    padded[model.context: model.context + x.numel()] = x
    return padded.unfold(0, window_samples(model), step)[:n_windows].contiguous(), n_frames


def predict_windows(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """(B, window_samples) -> (B, frames_per_window, pitches) probabilities, on the model's device."""
    device = next(model.parameters()).device
    return torch.sigmoid(model(windows.to(device)).float())


def stitch_windows(window_probs: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(W, frames_per_window, P) in window order -> (n_frames, P)."""
    return window_probs.reshape(-1, window_probs.shape[-1])[:n_frames]


def frame_times(model: nn.Module, n_frames: int) -> np.ndarray:
    return np.arange(n_frames, dtype=np.float64) * model.hop_length / model.sample_rate


@torch.inference_mode()
def transcribe(model: nn.Module, audio: np.ndarray, sample_rate: int, batch_size: int = 16) -> Transcription:
    """Offline transcription of a whole recording, ``batch_size`` windows per forward pass."""
    mono = prepare_audio(audio, sample_rate, model.sample_rate)
    windows, n_frames = cut_windows(model, mono)
    probs = torch.cat([predict_windows(model, windows[i: i + batch_size]).cpu()
                       for i in range(0, len(windows), batch_size)])
    return Transcription(frame_times(model, n_frames), np.asarray(model.pitches, dtype=np.int64),
                         stitch_windows(probs, n_frames).numpy().astype(np.float32))


def notes_from_probabilities(probabilities: np.ndarray, times: np.ndarray, pitches: np.ndarray,
                             onset_threshold: float = 0.5, frame_threshold: float = 0.3,
                             min_note_length: float = 0.05) -> list[dict]:
    """Note events: runs of frames above ``frame_threshold`` that reach ``onset_threshold`` somewhere.

    A run that dips and rises again past ``onset_threshold`` stays one note (a repeated note needs the
    probability to fall below ``frame_threshold`` in between). Offsets are the end of the last frame.
    """
    if not 0 <= frame_threshold <= onset_threshold <= 1:
        raise ValueError("need 0 <= frame_threshold <= onset_threshold <= 1")
    probabilities = np.asarray(probabilities)
    if probabilities.size == 0:
        return []
    dt = float(times[1] - times[0]) if len(times) > 1 else 0.0
    notes = []
    active = probabilities >= frame_threshold
    padded = np.zeros((active.shape[0] + 2, active.shape[1]), dtype=np.int8)
    padded[1:-1] = active
    edges = np.diff(padded, axis=0)
    for j in range(probabilities.shape[1]):
        starts = np.flatnonzero(edges[:, j] == 1)
        ends = np.flatnonzero(edges[:, j] == -1)
        for s, e in zip(starts, ends):
            run = probabilities[s:e, j]
            onset, offset = float(times[s]), float(times[e - 1]) + dt
            if run.max() >= onset_threshold and offset - onset >= min_note_length:
                notes.append({"onset": round(onset, 4), "offset": round(offset, 4), "pitch": int(pitches[j]),
                              "confidence": round(float(run.mean()), 4)})
    notes.sort(key=lambda n: (n["onset"], n["pitch"]))
    return notes


def notes_to_midi(notes: list[dict], program: int = 0, ticks_per_beat: int = 480, tempo_bpm: float = 120.0) -> bytes:
    """A Standard MIDI File (type 0) of the note events; velocity follows confidence."""
    import mido

    mid = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    tempo = mido.bpm2tempo(tempo_bpm)
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    track.append(mido.Message("program_change", program=program, time=0))
    events = []
    for n in notes:
        vel = int(np.clip(round(40 + 87 * n.get("confidence", 1.0)), 1, 127))
        events.append((n["onset"], 1, "note_on", n["pitch"], vel))
        events.append((n["offset"], 0, "note_off", n["pitch"], 0))  # offs first at equal times
    events.sort(key=lambda e: (e[0], e[1]))
    now = 0
    for t, _, kind, pitch, vel in events:
        tick = int(round(mido.second2tick(t, ticks_per_beat, tempo)))
        track.append(mido.Message(kind, note=int(pitch), velocity=vel, time=max(tick - now, 0)))
        now = max(tick, now)
    track.append(mido.MetaMessage("end_of_track", time=0))
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()
