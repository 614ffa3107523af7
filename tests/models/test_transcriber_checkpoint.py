"""The shipped transcriber checkpoint: loads safely, carries its metadata, hears a rendered chord."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.transcription import decode_notes, decoding_defaults, transcribe

CHECKPOINTS = Path(__file__).resolve().parents[2] / "models" / "checkpoints"
CKPT = CHECKPOINTS / "musicnet_complex.pt"        # first generation: frame model
CKPT_V2 = CHECKPOINTS / "musicnet_complex_v2.pt"  # second generation (served by default): onsets + frames


@pytest.mark.parametrize("ckpt", [CKPT, CKPT_V2], ids=["v1", "v2"])
def test_checkpoint_is_small_safe_and_complete(ckpt):
    assert ckpt.stat().st_size < 25 * 2**20
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    assert meta["task"] == "transcription"
    assert meta["sample_rate"] == 16000 and meta["hop_length"] == 320 and meta["frame_rate"] >= 40
    assert meta["pitches"] == list(range(21, 109))
    for k in ("ap", "frame_precision", "frame_recall", "frame_f1", "note_f1"):
        assert 0 <= meta["metrics"][k] <= 1
    for k in ("dataset", "command", "git_commit", "hardware", "training_seconds", "params"):
        assert k in meta


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed")
@pytest.mark.parametrize("ckpt", [CKPT, CKPT_V2], ids=["v1", "v2"])
@pytest.mark.parametrize("program,chord", [(0, (60, 64, 67)), (40, (55, 62, 71))])
def test_detects_a_rendered_chord(tmp_path, program, chord, ckpt):
    import pretty_midi
    import soundfile as sf

    from training.data.render import SOUNDFONT_CANDIDATES, draw_effects, fluidsynth_render
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=program)
    inst.notes += [pretty_midi.Note(velocity=90, pitch=p, start=0.25, end=2.25) for p in chord]
    pm.instruments.append(inst)
    pm.write(str(tmp_path / "c.mid"))
    sf2 = next(p for p in SOUNDFONT_CANDIDATES if Path(p).exists())
    fluidsynth_render(str(tmp_path / "c.mid"), str(tmp_path / "c.wav"), sf2, draw_effects(np.random.default_rng(0)))
    audio, sr = sf.read(str(tmp_path / "c.wav"), dtype="float32")  # stereo 44.1 kHz
    model, _ = load_checkpoint(ckpt)
    tr = transcribe(model, audio, sr)
    mid = (tr.times > 0.5) & (tr.times < 2.0)
    mean = tr.probabilities[mid].mean(0)
    pitches = list(tr.pitches)
    on = [mean[pitches.index(p)] for p in chord]
    off = np.delete(mean, [pitches.index(p) for p in chord])
    assert min(on) > 0.5, dict(zip(chord, on))
    assert off.max() < min(on)  # the chord's pitches are the most probable ones
    assert (off > 0.5).sum() <= 1  # at most one spurious pitch (an octave or twelfth of a bowed tone)
    notes = decode_notes(tr, defaults=decoding_defaults(model))
    assert set(chord) <= {n["pitch"] for n in notes}
    assert len({n["pitch"] for n in notes if n["onset"] < 0.5}) <= len(chord) + 1
