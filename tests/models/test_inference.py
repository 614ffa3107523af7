"""models/inference.py without a service: decoding options and their bounds, the frequency filter, the writers
(every format from one result, by file name), sonification (FluidSynth and the additive fallback)."""
from __future__ import annotations

import io
import json
import shutil

import mido
import numpy as np
import pytest
import soundfile as sf

from models import inference
from models.inference import AudioError, TranscriptionResult, load_audio, sonify, transcribe_file
from tests.service.tiny_models import make_checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))[1]


def tone(sr: int = 8000, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t) * ((t > 0.25) & (t < 0.75))).astype(np.float32)


def test_file_and_array_give_the_same_result(tiny, tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(), 8000, subtype="FLOAT")
    from_file, from_array = transcribe_file(path, checkpoint=tiny), transcribe_file(tone(), 8000, checkpoint=tiny)
    assert from_file.notes == from_array.notes and from_file.notes
    assert from_file.source == str(path) and from_file.duration == pytest.approx(1.0)
    with pytest.raises(AudioError, match="no such file"):
        transcribe_file(tmp_path / "missing.wav", checkpoint=tiny)
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)
    with pytest.raises(AudioError, match="NaN"):
        transcribe_file(np.full(800, np.nan, np.float32), 8000, checkpoint=tiny)


def test_options_are_bounded_and_known(tiny):
    for bad in ({"onset_threshold": 1.5}, {"frame_threshold": float("nan")}, {"min_note_length": 11},
                {"minimum_frequency": 0}, {"minimum_frequency": 500, "maximum_frequency": 100},
                {"velocity": 1}, {"midi_tempo": 0}):
        with pytest.raises(ValueError):
            transcribe_file(tone(), 8000, checkpoint=tiny, **bad)


def test_every_writer_by_file_name(tiny, tmp_path):
    r = transcribe_file(tone(), 8000, checkpoint=tiny, midi_tempo=90, maximum_frequency=500)
    assert r.notes and max(n["pitch"] for n in r.notes) <= 71  # 500 Hz lies between MIDI 71 and 72
    for name in ("x.mid", "x.midi", "x.csv", "x.npz", "x.json", "x.notes.json", "x.wav"):
        r.save(tmp_path / name)
    assert (tmp_path / "x.mid").read_bytes() == (tmp_path / "x.midi").read_bytes() == r.to_midi()
    assert [m.tempo for m in mido.MidiFile(tmp_path / "x.mid") if m.type == "set_tempo"] == [mido.bpm2tempo(90)]
    assert (tmp_path / "x.csv").read_text().count("\n") == len(r.notes) + 1
    assert np.load(tmp_path / "x.npz")["probabilities"].shape == r.transcription.probabilities.shape
    full, notes_only = (json.loads((tmp_path / n).read_text()) for n in ("x.json", "x.notes.json"))
    assert full["notes"] == notes_only["notes"] == r.notes and "probabilities" not in notes_only
    assert full["decoding"]["maximum_frequency"] == 500
    assert sf.info(tmp_path / "x.wav").samplerate == 22050
    with pytest.raises(ValueError, match="unknown output type"):
        r.save(tmp_path / "x.txt")


def test_extra_note_keys_pass_through(tiny):
    r = transcribe_file(tone(), 8000, checkpoint=tiny)
    notes = [{**n, "velocity": 90} for n in r.notes]
    r2 = TranscriptionResult(r.transcription, notes, r.decoding, r.duration, r.sample_rate, r.frame_rate)
    assert all(n["velocity"] == 90 for n in json.loads(r2.to_json(frames=False))["notes"])


@pytest.mark.parametrize("synth", ["sine", "fluidsynth"])
def test_sonify_plays_the_notes(synth):
    if synth == "fluidsynth" and not (shutil.which("fluidsynth") and inference.find_soundfont()):
        pytest.skip("FluidSynth or a SoundFont is not installed (scripts/install-system-deps.sh)")
    notes = [{"onset": 0.1, "offset": 0.6, "pitch": 69, "confidence": 0.9}]
    sr = 16000
    audio = sonify(notes, sr, synth)
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1 and len(audio) >= 0.6 * sr
    during, before = audio[int(0.2 * sr): int(0.5 * sr)], audio[: int(0.09 * sr)]
    assert np.sqrt(np.mean(during ** 2)) > 10 * (np.sqrt(np.mean(before ** 2)) + 1e-6)
    spectrum = np.abs(np.fft.rfft(during))
    freqs = np.fft.rfftfreq(len(during), 1 / sr)
    assert abs(freqs[spectrum.argmax()] - 440) < 15  # the fundamental is the loudest partial
    wav = io.BytesIO(inference.wav_bytes(audio, sr))
    assert sf.info(wav).samplerate == sr


def test_the_api_needs_no_training_or_service_code():
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, models.inference, models.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'training', 'service', 'benchmarks'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"
