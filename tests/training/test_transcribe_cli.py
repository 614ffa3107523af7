"""The transcription command (models/cli.py: ``dcn-transcribe``, also ``python -m training.musicnet transcribe``):
many files and folders with one model load, per-file errors that do not stop the others, the single-file ``--out``
form, option conflicts and bounds as usage errors, Basic Pitch's option names and the outputs they add."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

from models import inference
from training import musicnet as cli

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "models" / "checkpoints" / "musicnet_complex.pt"
COMMON = ["--checkpoint", str(CKPT), "--threads", "1"]

pytestmark = pytest.mark.skipif(not CKPT.is_file(), reason="shipped transcriber checkpoint missing")


def chord(seconds: float = 1.0, sr: int = 22050, pitches=(60, 64, 67)) -> np.ndarray:
    """A C major chord of harmonic tones from 0.2 s to 0.8 s: notes the shipped model hears."""
    t = np.arange(int(seconds * sr)) / sr
    on = (t >= 0.2) & (t < 0.8)
    x = sum(np.sin(2 * np.pi * k * 440 * 2 ** ((p - 69) / 12) * t) / k for p in pitches for k in range(1, 5))
    return (0.1 * x * on * np.exp(-2 * np.clip(t - 0.2, 0, None))).astype(np.float32)


def write(path: Path, sr: int = 22050, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, chord(sr=sr), sr, **kw)
    return path


@pytest.fixture
def loads(monkeypatch):
    """Counts checkpoint loads."""
    calls = []
    real = inference.load_checkpoint

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    inference._load_cached.cache_clear()  # loaded models are cached per process: count real loads
    monkeypatch.setattr(inference, "load_checkpoint", counting)
    yield calls
    inference._load_cached.cache_clear()


def run_main(argv: list[str]) -> int:
    try:
        cli.main(argv)
    except SystemExit as e:
        return e.code
    return 0


def test_many_files_and_folders_one_model_load(tmp_path, capsys, loads):
    a = write(tmp_path / "a.wav")
    b = write(tmp_path / "b.flac")
    folder = tmp_path / "folder"
    write(folder / "c.ogg", format="OGG", subtype="VORBIS")
    write(folder / "deeper" / "d.WAV", sr=44100)
    write(folder / "deeper" / "e.mp3", format="MP3", subtype="MPEG_LAYER_III")
    write(folder / "f.opus", sr=48000, format="OGG", subtype="OPUS")
    (folder / "notes.txt").write_text("not audio, not picked up")
    out = tmp_path / "out"
    code = run_main(["transcribe", str(a), str(b), str(folder), "--out-dir", str(out), "--format", "mid,npz,csv",
                     *COMMON])
    assert code == 0
    assert len(loads) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(s["audio"]).name for s in lines] == ["a.wav", "b.flac", "c.ogg", "d.WAV", "e.mp3", "f.opus"]
    for s in lines:
        stem = Path(s["audio"]).stem
        assert s["outputs"] == [str(out / f"{stem}.{ext}") for ext in ("mid", "npz", "csv")]
        assert s["notes"] >= 3 and s["frames"] == 51 and abs(s["seconds"] - 1.0) < 0.06
        z = np.load(out / f"{stem}.npz")
        assert z["probabilities"].shape == (len(z["times"]), 88) and np.isfinite(z["probabilities"]).all()
        assert {"notes", "duration", "sample_rate", "frame_rate", "onset_threshold"} <= set(z.files)
        rows = (out / f"{stem}.csv").read_text().splitlines()
        assert rows[0] == "onset,offset,pitch,confidence" and len(rows) == s["notes"] + 1
        midi_notes = {m.note for m in mido.MidiFile(out / f"{stem}.mid") if m.type == "note_on" and m.velocity}
        assert {60, 64, 67} <= midi_notes, (stem, midi_notes)


def test_bad_inputs_are_reported_and_the_rest_transcribed(tmp_path, capsys, loads):
    good = write(tmp_path / "good.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVE not really audio")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(800, np.nan, np.float32), 8000, subtype="FLOAT")
    out = tmp_path / "out"
    code = run_main(["transcribe", str(tmp_path / "missing.flac"), str(bad), str(good), str(empty_dir), str(nan),
                     "--out-dir", str(out), "--format", "csv", *COMMON])
    assert code == 2 and len(loads) == 1
    captured = capsys.readouterr()
    assert [Path(json.loads(line)["audio"]).name for line in captured.out.splitlines()] == ["good.wav"]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors), errors
    text = "\n".join(errors)
    assert "missing.flac: no such file" in text and "bad.wav: cannot decode audio" in text
    assert "empty: no audio files" in text and "nan.wav: audio contains NaN" in text
    assert sorted(p.name for p in out.iterdir()) == ["good.csv"]


def test_same_stem_gets_a_suffix_not_overwritten(tmp_path, capsys):
    write(tmp_path / "x" / "song.wav")
    write(tmp_path / "y" / "song.wav")
    write(tmp_path / "y" / "song.flac")
    out = tmp_path / "out"
    assert run_main(["transcribe", str(tmp_path / "x"), str(tmp_path / "y"), "--out-dir", str(out), *COMMON]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["song-2.mid", "song-3.mid", "song.mid"]  # default format: mid
    # the same file twice (as given and inside its folder) is transcribed once
    capsys.readouterr()
    run_main(["transcribe", str(tmp_path / "x" / "song.wav"), str(tmp_path / "x"), "--out-dir", str(out), *COMMON])
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_single_file_out_form_still_works(tmp_path, capsys):
    wav = write(tmp_path / "piece.wav")
    outs = [tmp_path / "o" / f"piece.{ext}" for ext in ("mid", "npz", "csv")]
    assert run_main(["transcribe", str(wav), *[arg for o in outs for arg in ("--out", str(o))], *COMMON]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outputs"] == [str(o) for o in outs] and summary["notes"] >= 3
    z = np.load(outs[1])
    assert z["pitches"][0] == 21 and z["probabilities"].shape == (len(z["times"]), 88)
    # explicit thresholds are used: no note is 10 s long
    assert run_main(["transcribe", str(wav), "--out", str(outs[2]), "--min-note-length", "10", *COMMON]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == 0
    assert outs[2].read_text() == "onset,offset,pitch,confidence\n"


@pytest.mark.parametrize("argv,words", [
    (["a.wav", "b.wav", "--out", "x.mid"], "exactly one input"),
    (["a.wav"], "--out-dir"),
    (["a.wav", "--out", "x.mid", "--out-dir", "o"], "--out-dir"),
    (["a.wav", "--out", "x.wave"], "unknown output type"),
    (["a.wav", "--out-dir", "o", "--format", "mid,xml"], "unknown format"),
    (["a.wav", "--out-dir", "o", "--onset-threshold", "1.5"], "outside [0, 1]"),
    # issue 18, problem 3: conflicting options are errors, not silently ignored
    (["a.wav", "--out", "x.mid", "--format", "csv"], "--format"),
    (["a.wav", "--out", "x.mid", "--save-note-events"], "--format"),
    (["a.wav", "--out-dir", "o", "--min-note-length", "0.1", "--minimum-note-length", "100"], "not both"),
    (["a.wav", "--out-dir", "o", "--minimum-frequency", "500", "--maximum-frequency", "100"], "exceeds"),
    # problem 4: Basic Pitch's milliseconds given as seconds, negative and absurd values
    (["a.wav", "--out-dir", "o", "--min-note-length", "127.7"], "milliseconds"),
    (["a.wav", "--out-dir", "o", "--min-note-length", "-1"], "outside"),
    (["a.wav", "--out-dir", "o", "--midi-tempo", "0"], "outside"),
    (["a.wav", "--out-dir", "o", "--threads", "0"], "outside"),
    (["a.wav", "--out-dir", "o", "--sonification-samplerate", "10"], "outside"),
])
def test_usage_errors(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.wav")
    assert run_main(["transcribe", *argv, *COMMON]) == 2
    assert words in capsys.readouterr().err


def test_frame_threshold_over_onset_threshold_for_a_frame_only_model(tmp_path, capsys):
    wav = write(tmp_path / "a.wav")
    code = run_main(["transcribe", str(wav), "--out-dir", str(tmp_path / "o"), "--onset-threshold", "0.2",
                     "--frame-threshold", "0.6", *COMMON])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "frame-only" in err[0]


def test_module_entry_point_exit_status(tmp_path):
    """The real process: one error line for the missing file, the other transcribed, exit status 2."""
    wav = write(tmp_path / "ok.wav")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "training.musicnet", "transcribe", str(tmp_path / "nope.wav"), str(wav),
                        "--out-dir", str(tmp_path / "o"), "--format", "csv", *COMMON],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 2, p.stderr
    assert [line for line in p.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'nope.wav'}: no such file"]
    assert json.loads(p.stdout)["outputs"] == [str(tmp_path / "o" / "ok.csv")]


def test_basic_pitch_flags_outputs_and_skip_existing(tmp_path, capsys):
    """--save-midi/--save-note-events/--sonify-midi add formats; --minimum-note-length is milliseconds;
    frequency limits drop notes; --midi-tempo is written; --skip-existing leaves finished inputs alone."""
    wav = write(tmp_path / "a.wav")
    out = tmp_path / "out"
    argv = ["transcribe", str(wav), "--out-dir", str(out), "--save-midi", "--save-note-events", "--sonify-midi",
            "--midi-tempo", "90", "--minimum-note-length", "50", "--sonification-samplerate", "16000", *COMMON]
    assert run_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outputs"] == [str(out / n) for n in ("a.mid", "a.sonified.wav", "a.csv")]
    audio, sr = sf.read(out / "a.sonified.wav")
    assert sr == 16000 and np.abs(audio).max() > 0.01
    tempos = [m.tempo for m in mido.MidiFile(out / "a.mid") if m.type == "set_tempo"]
    assert tempos == [mido.bpm2tempo(90)]
    # skip: nothing rewritten, the summary says so
    before = (out / "a.csv").stat().st_mtime_ns
    assert run_main(argv + ["--skip-existing"]) == 0
    assert "skipped" in json.loads(capsys.readouterr().out) and (out / "a.csv").stat().st_mtime_ns == before
    # only the E above middle C and up: the chord's C (261.6 Hz) is dropped
    assert run_main(["transcribe", str(wav), "--out", str(tmp_path / "hi.notes.json"), "--minimum-frequency", "300",
                     *COMMON]) == 0
    capsys.readouterr()
    body = json.loads((tmp_path / "hi.notes.json").read_text())
    assert "probabilities" not in body and body["decoding"]["minimum_frequency"] == 300
    assert body["notes"] and min(n["pitch"] for n in body["notes"]) >= 63


def test_an_output_never_overwrites_its_input(tmp_path, capsys):
    wav = write(tmp_path / "a.wav")
    before = wav.read_bytes()
    assert run_main(["transcribe", str(wav), "--out", str(wav), *COMMON]) == 2
    assert "overwrite this input" in capsys.readouterr().err and wav.read_bytes() == before
