"""Audio -> per-frame pitch probabilities -> note events: the one inference API for transcribers, offline
(``decode_notes``) and incremental (``NoteTracker``, the live stream: the same notes a frame at a time).

Used by the offline CLI (training/musicnet.py transcribe) and the service's batcher alike.

Contract every transcriber architecture in models/transcriber.py fulfils (attributes + forward):
    sample_rate: int          model input rate (Hz)
    hop_length: int           samples between frames; frame k is centred at sample k * hop_length
    pitches: list[int]        MIDI numbers of the output columns
    frames_per_window: int    output frames per window
    context: int              extra samples the model sees on each side of a window's frames
    forward(windows)          (B, window_samples) float -> (B, frames_per_window, len(pitches)) logits,
                              or (B, frames_per_window, len(pitches), len(heads)) for multi-head models
    heads: tuple[str, ...]    optional; output heads in order, "frame" first (default ("frame",)). Note-level
                              models add "onset" (and "offset"); notes are then decoded from onsets + frames.
    decoding: dict            optional; the calibrated note-decoding defaults (thresholds), see decode_notes
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
    probabilities: np.ndarray  # (frames, pitches) float32: the frame head, P(pitch sounds at this frame)
    onsets: np.ndarray | None = None   # (frames, pitches) P(a note of this pitch starts at this frame)
    offsets: np.ndarray | None = None  # (frames, pitches) P(a note of this pitch ends at this frame)
    velocities: np.ndarray | None = None  # (frames, pitches) velocity / 127 of a note starting at this frame
    bends: np.ndarray | None = None    # (frames, pitches) semitones + 0.5: where the key's spectral peak lies

    @classmethod
    def from_heads(cls, times: np.ndarray, pitches: np.ndarray, probs: np.ndarray,
                   heads: tuple[str, ...] = ("frame",)) -> Transcription:
        """``probs`` (frames, pitches, len(heads)) or (frames, pitches) -> one array per head."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim == 2:
            probs = probs[..., None]
        by = {h: np.ascontiguousarray(probs[..., i]) for i, h in enumerate(heads)}
        return cls(times, pitches, by["frame"], by.get("onset"), by.get("offset"), by.get("velocity"), by.get("bend"))

    @property
    def frame_rate(self) -> float:
        return float(1.0 / (self.times[1] - self.times[0])) if len(self.times) > 1 else float("nan")


def window_samples(model: nn.Module) -> int:
    return model.frames_per_window * model.hop_length + 2 * model.context


MAX_PEAK = 1e3  # full scale is 1.0; a louder peak is rescaled to 1.0 (see prepare_audio)


def prepare_audio(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """(samples,) or (samples, channels) at any rate -> mono float32 at ``target_rate``.

    Float recordings whose peak exceeds ``MAX_PEAK`` (60 dB over full scale: integer-scaled floats such
    as +-32767, or garbage such as 1e20) are rescaled to a peak of 1.0; at such levels the model's
    spectra overflow float32 and every probability would be NaN. Quieter audio is left as it is.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (samples, channels), got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("audio is empty")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    peak = float(np.abs(audio).max())
    if peak > MAX_PEAK:  # before the mix-down, whose float32 sum could overflow at such levels
        audio = audio / np.float32(peak)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
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


def heads(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "heads", ("frame",)))


def predict_windows(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """(B, window_samples) -> (B, frames_per_window, pitches, heads) probabilities, on the model's device."""
    device = next(model.parameters()).device
    logits = model(windows.to(device)).float()
    if logits.dim() == 3:
        logits = logits.unsqueeze(-1)
    return torch.sigmoid(logits)


def stitch_windows(window_probs: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(W, frames_per_window, P, H) in window order -> (n_frames, P, H)."""
    return window_probs.reshape(-1, *window_probs.shape[2:])[:n_frames]


def frame_times(model: nn.Module, n_frames: int) -> np.ndarray:
    return np.arange(n_frames, dtype=np.float64) * model.hop_length / model.sample_rate


@torch.inference_mode()
def transcribe(model: nn.Module, audio: np.ndarray, sample_rate: int, batch_size: int | None = None) -> Transcription:
    """Offline transcription of a whole recording, ``batch_size`` windows per forward pass (default: 4 on a
    CPU, where small batches stay in cache and ran 1.6x faster than 16 for the note transcriber; 16 on a GPU)."""
    if batch_size is None:
        batch_size = 16 if next(model.parameters()).device.type == "cuda" else 4
    mono = prepare_audio(audio, sample_rate, model.sample_rate)
    windows, n_frames = cut_windows(model, mono)
    probs = torch.cat([predict_windows(model, windows[i: i + batch_size]).cpu()
                       for i in range(0, len(windows), batch_size)])
    return Transcription.from_heads(frame_times(model, n_frames), np.asarray(model.pitches, dtype=np.int64),
                                    stitch_windows(probs, n_frames).numpy(), heads(model))


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


DEFAULT_DECODING = {"onset_threshold": 0.5, "frame_threshold": 0.3, "min_note_length": 0.05}
# Optional, calibrated per model (absent = the onset threshold): an onset peak of a pitch that is still sounding
# starts a new note only if it reaches this, else the held note goes on (a bow change or a breath is not a note).
REONSET_KEY = "reonset_threshold"
OVERTONE_INTERVALS = (12, 19, 24, 28, 31, 36)  # semitones from a note to its 2nd, 3rd, 4th, 5th, 6th, 8th harmonic


def decoding_defaults(model: nn.Module, meta: dict | None = None) -> dict:
    """The model's calibrated note-decoding thresholds (stored in its checkpoint's config, so the model carries
    them; a checkpoint that keeps them only in ``meta["decoding"]`` counts too), else the generic ones."""
    calibrated = getattr(model, "decoding", None) or (meta or {}).get("decoding") or {}
    return {**DEFAULT_DECODING, **dict(calibrated)}


def notes_from_onsets(onsets: np.ndarray, frames: np.ndarray, times: np.ndarray, pitches: np.ndarray,
                      onset_threshold: float = 0.5, frame_threshold: float = 0.3,
                      min_note_length: float = 0.05, max_gap: int = 2, min_gap: int = 2,
                      reonset_threshold: float | None = None, velocities: np.ndarray | None = None) -> list[dict]:
    """Onsets-and-Frames decoding: a note starts at a local peak of the onset head above ``onset_threshold``
    and lasts while the frame head stays above ``frame_threshold`` or until the next onset of the same pitch
    (a re-articulated note); dips below the threshold of up to ``max_gap`` frames (vibrato, tremolo) do not
    end a note, and onset peaks closer than ``min_gap`` frames count once. Frame activity without an onset
    makes no note: that is how harmonics and reverb tails, which sustain but never start, are kept out.
    An onset peak while the pitch still sounds re-articulates it only if it reaches ``reonset_threshold``
    (default: ``onset_threshold``); a weaker one (a bow change, a breath, a vibrato swell) leaves the held note
    whole instead of cutting it in two. Onset times are refined to sub-frame precision by a parabola through
    the peak and its two neighbours. With ``velocities`` each note gets ``velocity`` (1-127) from its onset frame."""
    if not 0 <= frame_threshold <= 1 or not 0 <= onset_threshold <= 1:
        raise ValueError("thresholds must lie in [0, 1]")
    reon = onset_threshold if reonset_threshold is None else float(reonset_threshold)
    onsets, frames = np.asarray(onsets, dtype=np.float32), np.asarray(frames, dtype=np.float32)
    n = len(times)
    if onsets.size == 0 or n == 0:
        return []
    dt = float(times[1] - times[0]) if n > 1 else 0.0
    padded = np.pad(onsets, ((1, 1), (0, 0)), constant_values=-1.0)
    prev, cur, nxt = padded[:-2], padded[1:-1], padded[2:]
    peaks = (cur >= onset_threshold) & (cur >= prev) & (cur > nxt)
    notes = []
    for j in np.flatnonzero(peaks.any(axis=0)):
        starts = np.flatnonzero(peaks[:, j])
        if len(starts) > 1:  # one attack that peaks twice within min_gap frames is one onset
            keep = np.concatenate([[True], np.diff(starts) > min_gap])
            starts = starts[keep]
        col, above = frames[:, j], frames[:, j] >= frame_threshold
        k = 0
        while k < len(starts):
            s = int(starts[k])
            k += 1
            last = s  # the note's last frame so far; the onset frame always belongs to it
            for e in range(s + 1, n):
                alive = above[e] or e - last <= max_gap
                if k < len(starts) and e == starts[k]:
                    if cur[e, j] >= reon or not alive:
                        break  # a re-articulation (or the note had ended): the next note starts here
                    k += 1     # a weak onset inside a held note: the note goes on
                if above[e]:
                    last = e
                elif not alive:
                    break
            e = last + 1
            a, b, c = float(prev[s, j]), float(cur[s, j]), float(nxt[s, j])
            shift = 0.0
            if a >= 0 and c >= 0 and (a - 2 * b + c) < 0:
                shift = float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))
            onset = float(times[s]) + shift * dt
            offset = float(times[e - 1]) + 0.5 * dt
            if offset - onset >= min_note_length:
                note = {"onset": round(max(onset, 0.0), 4), "offset": round(offset, 4),
                        "pitch": int(pitches[j]), "confidence": round(float(col[s:e].mean()), 4)}
                if velocities is not None:
                    note["velocity"] = to_velocity(velocities[s, j])
                notes.append(note)
    notes.sort(key=lambda x: (x["onset"], x["pitch"]))
    return notes


def to_velocity(v: float) -> int:
    """The velocity head's output (velocity / 127) -> a MIDI velocity 1-127."""
    return int(np.clip(round(127 * float(v)), 1, 127))


def decode_notes(tr: Transcription, onset_threshold: float | None = None, frame_threshold: float | None = None,
                 min_note_length: float | None = None, defaults: dict | None = None,
                 monophonic: bool = False, pitch_bends: bool = False) -> list[dict]:
    """Note events of a transcription. Thresholds left as None take ``defaults`` (a model's calibrated
    ``decoding_defaults``), else DEFAULT_DECODING. Models with an onset head decode onsets + frames;
    frame-only models decode runs of frames (notes_from_probabilities). ``monophonic``: at most one note at a
    time (a voice, a solo wind or string line; onset models only), decoded by NoteTracker, the stream's decoder.
    ``pitch_bends``: every note also gets its fine pitch per frame (attach_pitch_bends)."""
    notes = _decode(tr, onset_threshold, frame_threshold, min_note_length, defaults, monophonic)
    return attach_pitch_bends(notes, tr) if pitch_bends else notes


def _decode(tr: Transcription, onset_threshold: float | None, frame_threshold: float | None,
            min_note_length: float | None, defaults: dict | None, monophonic: bool) -> list[dict]:
    d = {**DEFAULT_DECODING, **(defaults or {})}
    on = d["onset_threshold"] if onset_threshold is None else onset_threshold
    fr = d["frame_threshold"] if frame_threshold is None else frame_threshold
    ml = d["min_note_length"] if min_note_length is None else min_note_length
    reon = d.get(REONSET_KEY)
    if reon is not None and onset_threshold is not None:
        reon = max(float(reon), on)  # a user's onset threshold above the calibrated re-onset one still applies
    if monophonic:
        if tr.onsets is None:
            raise ValueError("monophonic decoding needs a model with an onset head")
        step = float(tr.times[1] - tr.times[0]) if len(tr.times) > 1 else 1.0
        rate = 100_000  # NoteTracker counts in samples; any rate that makes the frame period exact will do
        tracker = NoteTracker(tr.pitches, round(step * rate), rate,
                              {"onset_threshold": on, "frame_threshold": fr, "min_note_length": ml, REONSET_KEY: reon},
                              onset_head=True, monophonic=True, times=tr.times)
        tracker.push(tr.probabilities, tr.onsets, tr.velocities)
        tracker.finish()
        return tracker.notes
    if tr.onsets is not None:
        return notes_from_onsets(tr.onsets, tr.probabilities, tr.times, tr.pitches, on, fr, ml,
                                 reonset_threshold=reon, velocities=tr.velocities)
    return notes_from_probabilities(tr.probabilities, tr.times, tr.pitches, max(on, fr), min(on, fr), ml)


def notes_to_csv(notes: list[dict]) -> str:
    """Note events as CSV text, header ``onset,offset,pitch,confidence`` (seconds, MIDI, 0-1), plus ``velocity``
    (1-127) when the notes carry one (models with a velocity head)."""
    if notes and "velocity" in notes[0]:
        return "".join(["onset,offset,pitch,confidence,velocity\n"] + [
            f"{n['onset']},{n['offset']},{n['pitch']},{n['confidence']},{n['velocity']}\n" for n in notes])
    return "".join(["onset,offset,pitch,confidence\n"] + [f"{n['onset']},{n['offset']},{n['pitch']},{n['confidence']}\n"
                                                           for n in notes])


def transcription_npz(tr: Transcription, notes: list[dict], duration: float, sample_rate: int, frame_rate: float,
                      decoding: dict) -> bytes:
    """A NumPy .npz archive (float32 arrays): times, pitches, probabilities (+ onsets), the notes as a record
    array, duration, analysis sample and frame rate, and the decoding thresholds used. The service's format=npz
    and the CLI's .npz output."""
    fields = [("onset", "f8"), ("offset", "f8"), ("pitch", "i8"), ("confidence", "f8")]
    if notes and "velocity" in notes[0]:
        fields.append(("velocity", "i8"))
    note_array = np.array([tuple(n[f] for f, _ in fields) for n in notes], dtype=fields)
    extra = {name: a for name, a in (("onsets", tr.onsets), ("velocities", tr.velocities)) if a is not None}
    buf = io.BytesIO()
    np.savez_compressed(buf, times=tr.times, pitches=tr.pitches, probabilities=tr.probabilities, **extra,
                        notes=note_array, duration=np.float64(duration), sample_rate=np.int64(sample_rate),
                        frame_rate=np.float64(frame_rate),
                        **{k: np.float64(decoding[k]) for k in ("onset_threshold", "frame_threshold",
                                                                "min_note_length")})
    return buf.getvalue()


PITCH_BEND_RANGE = 2.0  # semitones at full pitch-wheel deflection: the General MIDI default, no RPN needed
MIDI_CHANNELS = [c for c in range(16) if c != 9]  # channel 10 (index 9) is percussion in General MIDI


def _bend_channels(notes: list[dict]) -> list[int]:
    """A channel per note such that notes sounding at once never share one (each note bends alone, as in
    MPE); when more notes overlap than there are channels, the channel whose note ended first is reused."""
    free_at = {c: -1.0 for c in MIDI_CHANNELS}
    out = []
    for n in notes:
        c = min(MIDI_CHANNELS, key=lambda ch: (free_at[ch] > n["onset"], free_at[ch], ch))
        free_at[c] = n["offset"]
        out.append(c)
    return out


def notes_to_midi(notes: list[dict], program: int = 0, ticks_per_beat: int = 480, tempo_bpm: float = 120.0,
                  pitch_bends: bool | None = None) -> bytes:
    """A Standard MIDI File (type 0) of the note events; velocity is the note's ``velocity`` (models with a velocity
    head), else it follows confidence. Pitch bends (notes decoded with ``pitch_bends=True``; ``pitch_bends=False``
    leaves them out): each note's fine pitch as pitch-wheel events (+-2 semitones range), every note on a channel
    of its own while it sounds."""
    import mido

    mid = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    tempo = mido.bpm2tempo(tempo_bpm)
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    bending = pitch_bends is not False and any("pitch_bends" in n for n in notes)
    channels = _bend_channels(notes) if bending else [0] * len(notes)
    for c in sorted(set(channels)) or [0]:
        track.append(mido.Message("program_change", program=program, channel=c, time=0))
    events = []  # (seconds, order at equal times, message kwargs): offs, then bends, then ons
    for n, c in zip(notes, channels):
        vel = int(n["velocity"]) if "velocity" in n else int(np.clip(round(40 + 87 * n.get("confidence", 1.0)), 1, 127))
        events.append((n["onset"], 2, {"type": "note_on", "note": int(n["pitch"]), "velocity": vel, "channel": c}))
        events.append((n["offset"], 0, {"type": "note_off", "note": int(n["pitch"]), "velocity": 0, "channel": c}))
        if bending and n.get("pitch_bends"):
            step, last = float(n.get("bend_period", 0.02)), None
            for k, cents in enumerate(n["pitch_bends"]):
                value = int(np.clip(round(cents / (100 * PITCH_BEND_RANGE) * 8192), -8192, 8191))
                if value != last:
                    events.append((n["onset"] + k * step, 1, {"type": "pitchwheel", "pitch": value, "channel": c}))
                    last = value
            events.append((n["offset"], 0, {"type": "pitchwheel", "pitch": 0, "channel": c}))
    events.sort(key=lambda e: (e[0], e[1]))
    now = 0
    for t, _, msg in events:
        tick = int(round(mido.second2tick(t, ticks_per_beat, tempo)))
        track.append(mido.Message(**msg, time=max(tick - now, 0)))
        now = max(tick, now)
    track.append(mido.MetaMessage("end_of_track", time=0))
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def attach_pitch_bends(notes: list[dict], tr: Transcription) -> list[dict]:
    """Each note gets ``pitch_bends``: its fine pitch in cents relative to the key, one value per frame from its
    onset frame to its last frame (``bend_period`` seconds apart), from a model with a ``bend`` output."""
    if tr.bends is None:
        raise ValueError("pitch bends need a model with a fine-pitch output (fine_pitch=True)")
    dt = float(tr.times[1] - tr.times[0]) if len(tr.times) > 1 else 0.02
    column = {int(p): j for j, p in enumerate(tr.pitches)}
    for n in notes:
        s = int(np.clip(round((n["onset"] - tr.times[0]) / dt), 0, len(tr.times) - 1))
        e = int(np.clip(round((n["offset"] - tr.times[0]) / dt), s + 1, len(tr.times)))
        n["pitch_bends"] = [int(round(100 * (float(b) - 0.5))) for b in tr.bends[s:e, column[int(n["pitch"])]]]
        n["bend_period"] = round(dt, 6)
    return notes


def round_list(values: np.ndarray, decimals: int) -> list:
    """An array as nested lists of floats rounded to ``decimals`` (the JSON responses and stream messages)."""
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()


class NoteTracker:
    """``decode_notes``, a frame at a time: the same notes, emitted as ``note_on`` once a note is certain (its
    onset is a confirmed peak, or its run reached the onset threshold, and it is already at least
    ``min_note_length`` long) and ``note_off`` once it has ended. Look-ahead: one frame for an onset peak,
    ``max_gap + 1`` frames to end a note, ``min_note_length`` to start one.

    ``monophonic`` (onset models): at most one note at a time. Of onsets in one frame the strongest starts a
    note; a new note ends the sounding one, except within ``min_gap`` frames of that one's start, where the
    stronger onset of the two wins (the octave or twelfth of a low reed speaks a frame before or after its
    fundamental). Offline monophonic decoding runs this class, so it has one implementation."""

    def __init__(self, pitches: np.ndarray, hop: int, sample_rate: int, decoding: dict[str, float],
                 onset_head: bool, max_gap: int = 2, min_gap: int = 2, monophonic: bool = False,
                 times: np.ndarray | None = None) -> None:
        self.pitches = np.asarray(pitches)
        P = len(self.pitches)
        self.hop, self.sample_rate = hop, sample_rate
        self.times = None if times is None else np.asarray(times, dtype=np.float64)
        self.dt_full = self._time(1) - self._time(0)  # as decode_notes: times[1] - times[0]
        self.onset_head = onset_head
        if monophonic and not onset_head:
            raise ValueError("monophonic decoding needs a model with an onset head")
        self.monophonic = monophonic
        on, fr, ml = decoding["onset_threshold"], decoding["frame_threshold"], decoding["min_note_length"]
        if not onset_head:  # as decode_notes: runs above the lower threshold that reach the higher one
            on, fr = max(on, fr), min(on, fr)
        self.on, self.fr, self.ml = on, fr, ml
        reon = decoding.get(REONSET_KEY)
        self.reon = on if reon is None else float(reon)
        self.max_gap, self.min_gap = max_gap, min_gap
        self.t = 0                     # frames seen
        self.active = np.zeros(P, bool)
        self.start = np.zeros(P, np.int64)
        self.last = np.zeros(P, np.int64)
        self.shift = np.zeros(P)
        self.strength = np.zeros(P, np.float32)  # onset probability at the note's start (monophonic choice)
        self.velocity = np.zeros(P, np.int64)
        self.has_velocity = False
        self.announced = np.zeros(P, bool)
        self.reached = np.zeros(P, bool)  # frame-only: the run reached the onset threshold
        self.values: list[list[float]] = [[] for _ in range(P)]  # frame probabilities of each active note
        self.last_peak = np.full(P, -(10 ** 9), np.int64)
        self.prev_onset = np.full(P, -1.0, np.float32)  # onset head at frame t-2, t-1 (for the peak at t-1)
        self.cur_onset: np.ndarray | None = None
        self.cur_frame: np.ndarray | None = None
        self.cur_velocity: np.ndarray | None = None
        self.notes: list[dict] = []

    def _time(self, k: int) -> float:
        if self.times is not None and 0 <= k < len(self.times):
            return float(self.times[k])  # decode_notes: the transcription's own frame times
        return float(np.float64(k) * self.hop / self.sample_rate)  # as tr.frame_times, to the last bit

    def _onset_time(self, j: int, dt: float) -> float:
        return self._time(int(self.start[j])) + (float(self.shift[j]) * dt if self.onset_head else 0.0)

    def _note(self, j: int, dt: float) -> dict | None:
        s, e = int(self.start[j]), int(self.last[j]) + 1
        if not self.onset_head and not self.reached[j]:
            return None
        onset = self._onset_time(j, dt)
        offset = self._time(e - 1) + (0.5 * dt if self.onset_head else dt)
        if offset - onset < self.ml:
            return None
        vals = np.asarray(self.values[j][: e - s], dtype=np.float32)
        note = {"onset": round(max(onset, 0.0), 4), "offset": round(offset, 4), "pitch": int(self.pitches[j]),
                "confidence": round(float(vals.mean()), 4)}
        if self.has_velocity:
            note["velocity"] = int(self.velocity[j])
        return note

    def _long_enough(self, j: int, dt: float) -> bool:
        offset = self._time(int(self.last[j])) + (0.5 * dt if self.onset_head else dt)
        return offset - self._onset_time(j, dt) >= self.ml

    def _end(self, js: np.ndarray, dt: float, events: list[dict]) -> None:
        for j in js:
            note = self._note(int(j), dt)
            self.active[j] = False
            self.values[j] = []
            if note is None:
                continue
            self.notes.append(note)
            if not self.announced[j]:
                events.append({"type": "note_on", "pitch": note["pitch"], "onset": note["onset"]})
            events.append({"type": "note_off", **note})
            self.announced[j] = False

    def _announce(self, dt: float, events: list[dict]) -> None:
        for j in np.flatnonzero(self.active & ~self.announced & (self.reached | self.onset_head)):
            if self._long_enough(int(j), dt):
                self.announced[j] = True
                events.append({"type": "note_on", "pitch": int(self.pitches[j]),
                               "onset": round(max(self._onset_time(int(j), dt), 0.0), 4)})

    def _overtone(self, upper: np.ndarray | int, lower: int) -> np.ndarray:
        return np.isin(self.pitches[upper] - self.pitches[lower], OVERTONE_INTERVALS)

    def _monophonic(self, u: int, new: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Of the onsets ``new`` at frame u keep at most one; -> (new, notes of other pitches it ends now).
        The strongest wins, except that an overtone (octave, twelfth, ...) never wins over its fundamental
        starting with it (a real flute's or reed's octave often speaks louder at the attack than the note), and
        a sounding note is ended only by an onset above the re-onset threshold, as polyphonic decoding lets only
        such an onset cut a held note of its own pitch (one line: every pitch is the held note's)."""
        if not new.any():
            return new, np.zeros_like(new)
        cand = np.flatnonzero(new)
        j = int(cand[np.argmax(cur[cand])])
        under = cand[self._overtone(j, cand)]
        if len(under):
            j = int(under.min())
        new = np.zeros_like(new)
        others = self.active.copy()
        others[j] = False
        recent = np.flatnonzero(others & (u - self.start <= self.min_gap))
        fundamental_of_recent = self._overtone(recent, j).any()  # a just-started overtone yields to j
        flicker = cur[j] < self.reon and others.any()  # a weak onset inside the held note (overtone, sub-harmonic)
        upstaged = len(recent) and (self._overtone(j, recent).any() or self.strength[recent].max() >= cur[j])
        if not fundamental_of_recent and (flicker or upstaged):
            return new, np.zeros_like(new)
        new[j] = True
        return new, others

    # onset head: frame u is processed when frame u + 1 (its peak's right neighbour) is known
    def _step_onsets(self, u: int, prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray, frame: np.ndarray,
                     velocity: np.ndarray | None, dt: float, events: list[dict]) -> None:
        peak = (cur >= self.on) & (cur >= prev) & (cur > nxt)
        kept = peak & (u - self.last_peak > self.min_gap)
        self.last_peak[peak] = u
        above = frame >= self.fr
        alive = self.active & (above | (u - self.last <= self.max_gap))
        new = kept & ~(alive & (cur < self.reon))  # a weak onset inside a held note does not cut it
        cut = np.zeros_like(new)
        if self.monophonic:
            new, cut = self._monophonic(u, new, cur)
        self._end(np.flatnonzero(cut), dt, events)  # ended by the next note: frame u is not theirs
        ext = self.active & ~new
        ab = ext & above
        self.last[ab] = u
        gap_end = ext & ~above & (u - self.last > self.max_gap)
        for j in np.flatnonzero(ext & ~gap_end):
            self.values[j].append(float(frame[j]))
        self._end(np.flatnonzero((self.active & new) | gap_end), dt, events)
        if new.any():
            ks = np.flatnonzero(new)
            a, b, c = prev[ks].astype(np.float64), cur[ks].astype(np.float64), nxt[ks].astype(np.float64)
            curv = a - 2 * b + c
            ok = (a >= 0) & (c >= 0) & (curv < 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                sh = np.where(ok, np.clip(0.5 * (a - c) / np.where(ok, curv, -1.0), -0.5, 0.5), 0.0)
            self.shift[ks] = sh
            self.start[ks] = u
            self.last[ks] = u
            self.strength[ks] = cur[ks]
            if velocity is not None:
                self.velocity[ks] = [to_velocity(velocity[j]) for j in ks]
            self.active[ks] = True
            self.announced[ks] = False
            for j in ks:
                self.values[j] = [float(frame[j])]
        self._announce(dt, events)

    def _step_frames(self, u: int, frame: np.ndarray, dt: float, events: list[dict]) -> None:
        above = frame >= self.fr
        ending = self.active & ~above
        self._end(np.flatnonzero(ending), dt, events)
        starting = above & ~self.active
        self.start[starting] = u
        self.reached[starting] = False
        self.announced[starting] = False
        self.active |= starting
        for j in np.flatnonzero(self.active):
            self.values[j].append(float(frame[j]))
        self.last[self.active] = u
        self.reached |= self.active & (frame >= self.on)
        self._announce(dt, events)

    def push(self, frames: np.ndarray, onsets: np.ndarray | None, velocities: np.ndarray | None = None) -> list[dict]:
        """Frames (k, P) (and onsets, velocities (k, P)) following the ones pushed before -> events now certain."""
        events: list[dict] = []
        dt = self.dt_full
        self.has_velocity = self.has_velocity or velocities is not None
        for i in range(len(frames)):
            frame = np.asarray(frames[i], np.float32)
            if not self.onset_head:
                self._step_frames(self.t, frame, dt, events)
            else:
                onset = np.asarray(onsets[i], np.float32)
                if self.cur_onset is not None:  # frame t-1 can be decided now
                    self._step_onsets(self.t - 1, self.prev_onset, self.cur_onset, onset, self.cur_frame,
                                      self.cur_velocity, dt, events)
                    self.prev_onset = self.cur_onset
                self.cur_onset, self.cur_frame = onset, frame
                self.cur_velocity = None if velocities is None else np.asarray(velocities[i], np.float32)
            self.t += 1
        return events

    def finish(self) -> list[dict]:
        """The stream ended: decide the last frame and end every note."""
        events: list[dict] = []
        dt = self.dt_full if self.t > 1 else 0.0  # decode_notes: a single frame has no frame period
        if self.onset_head and self.cur_onset is not None:
            self._step_onsets(self.t - 1, self.prev_onset, self.cur_onset,
                              np.full_like(self.cur_onset, -1.0), self.cur_frame, self.cur_velocity, dt, events)
        self._end(np.flatnonzero(self.active), dt, events)
        self.notes.sort(key=lambda n: (n["onset"], n["pitch"]))
        return events
