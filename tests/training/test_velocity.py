"""Velocity from the attack level: the model's unlearned output and the fit that maps it to MIDI velocity."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.note_transcriber import ComplexNoteTranscriber
from models.transcription import decode_notes, transcribe
from training.velocity import fit, fit_line

RATE = 44100


def _tones(amplitudes: list[float], midi: int = 69, seconds: float = 0.5) -> tuple[np.ndarray, list[tuple]]:
    """One tone per amplitude, each followed by silence; labels with velocity rising with the level in dB."""
    n, gap = int(seconds * RATE), int(0.3 * RATE)
    f = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(n) / RATE
    audio, rows = [], []
    for k, a in enumerate(amplitudes):
        start = k * (n + gap)
        audio += [a * (np.sin(2 * np.pi * f * t) + 0.4 * np.sin(4 * np.pi * f * t)) * np.minimum(1, np.arange(n) / 100),
                  np.zeros(gap)]
        vel = int(np.clip(round(100 + 2.0 * 20 * np.log10(a)), 1, 127))  # 2 velocity steps per dB
        rows.append((start, start + n, midi, vel))
    return np.concatenate(audio).astype(np.float32), rows


def test_velocity_output_rises_with_the_level_of_the_attack():
    torch.manual_seed(0)
    model = ComplexNoteTranscriber(level_velocity=(0.2, -30.0)).eval()
    assert model.heads == ("frame", "onset", "velocity")
    audio, rows = _tones([0.02, 0.1, 0.5])
    tr = transcribe(model, audio, RATE)
    j = 69 - 21
    at = [float(tr.velocities[np.searchsorted(tr.times, s / RATE) + 2, j]) for s, *_ in rows]
    assert at[0] < at[1] < at[2]
    # a key that does not sound reads lower than the one that does
    assert float(tr.velocities[np.searchsorted(tr.times, rows[2][0] / RATE) + 2, j + 5]) < at[2]


def test_fit_line_recovers_a_within_file_slope_whatever_each_file_level():
    rng = np.random.default_rng(0)
    per_file = []
    for offset in (-30.0, -10.0, 0.0):  # the same playing recorded at three levels
        db = rng.uniform(-20, 0, 200)
        logit_v = 0.1 * db + 0.5 + rng.normal(0, 0.05, 200)
        per_file.append((db + offset, 127 / (1 + np.exp(-logit_v))))
    slope, level, r = fit_line(per_file)
    assert abs(slope - 0.1) < 0.01 and r > 0.95


def test_fit_writes_a_checkpoint_whose_notes_carry_velocity(tmp_path):
    torch.manual_seed(0)
    model = ComplexNoteTranscriber(decoding={"onset_threshold": 0.5, "frame_threshold": 0.5}).eval()
    src = tmp_path / "model.pt"
    save_checkpoint(src, model, "complex_note_transcriber", {"decoding": model.decoding}, {})
    for split in ("val",):
        (tmp_path / "data" / f"{split}_data").mkdir(parents=True)
        (tmp_path / "data" / f"{split}_labels").mkdir(parents=True)
        for k, amps in enumerate(([0.02, 0.3, 0.08, 0.6], [0.05, 0.5, 0.01, 0.2])):
            audio, rows = _tones(amps, midi=60 + 7 * k)
            sf.write(tmp_path / "data" / f"{split}_data" / f"{k}.wav", audio, RATE, subtype="PCM_16")
            lines = ["start_time,end_time,instrument,note,start_beat,end_beat,note_value,velocity"]
            lines += [f"{s},{e},1,{m},0,1,Quarter,{v}" for s, e, m, v in rows]
            (tmp_path / "data" / f"{split}_labels" / f"{k}.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "fitted.pt"
    report = fit(str(src), [str(tmp_path / "data")], "val", str(out), threads=1)
    assert report["notes"] == 8 and report["slope_per_db"] > 0 and report["level_r_within_file"] > 0.9
    fitted, meta = load_checkpoint(out)
    assert "velocity" in fitted.heads and meta["velocity_fit"]["recordings"] == 2
    audio, rows = _tones([0.02, 0.5])
    tr = transcribe(fitted, audio, RATE)
    # decode with every frame an onset candidate: an untrained model's onsets are noise, velocity is not
    tr.onsets = np.where(tr.probabilities >= 0, 0.0, 0.0).astype(np.float32)
    j = 69 - 21
    for s, *_ in rows:
        tr.onsets[np.searchsorted(tr.times, s / RATE), j] = 1.0
    tr.probabilities[:, j] = 1.0
    notes = [n for n in decode_notes(tr, onset_threshold=0.5, frame_threshold=0.5) if n["pitch"] == 69]
    assert len(notes) >= 2 and all(1 <= n["velocity"] <= 127 for n in notes)
    assert notes[0]["velocity"] < notes[-1]["velocity"]
