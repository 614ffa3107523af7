"""The service on the real architectures of models/ (small configurations, random weights)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from models.checkpoint import save_checkpoint

from .conftest import TestClient, audio_bytes, image_bytes, settings_for, tone

cifar = pytest.importorskip("models.cifar")
transcriber = pytest.importorskip("models.transcriber")


@pytest.fixture(scope="module")
def real_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    ccfg = {"widths": [4, 8, 8, 16], "num_classes": 10}
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    cls = save_checkpoint(folder / "cifar.pt", cifar.ComplexResNet9(**ccfg), "complex_resnet9", ccfg,
                          {"task": "image-classification", "class_names": names, "input_size": [32, 32],
                           "metrics": {"val_accuracy": 0.1}})
    tcfg = {"frames_per_window": 50, "channels": 2, "hidden": 8}
    m = transcriber.ComplexFrameTranscriber(**tcfg)
    tr = save_checkpoint(folder / "musicnet.pt", m, "complex_frame_transcriber", tcfg,
                         {"task": "transcription", "sample_rate": m.sample_rate, "hop_length": m.hop_length,
                          "pitches": m.pitches, "metrics": {}})
    return cls, tr


def test_real_architectures_serve(real_checkpoints):
    from service.app import create_app
    app = create_app(settings_for(real_checkpoints, classify_max_batch_size=8, transcribe_max_batch_size=4))
    with TestClient(app) as c:
        r = c.post("/classify", files=[("file", ("a.jpg", image_bytes("JPEG", size=(64, 48))))] * 3)
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert len(res) == 3 and len(res[0]["probabilities"]) == 10
        assert abs(sum(res[0]["probabilities"].values()) - 1) < 1e-4
        r = c.post("/transcribe", files={"file": ("a.wav", audio_bytes(tone(seconds=3.5, sr=44100), sr=44100))})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sample_rate"] == 16000 and body["frame_rate"] == 50.0
        assert body["pitches"] == list(range(21, 109)) and len(body["times"]) == 3.5 * 50 + 1
        models = {m["task"]: m for m in c.get("/models").json()["models"]}
        assert models["transcription"]["pitch_range"] == [21, 108]
        assert models["image-classification"]["arch"] == "complex_resnet9"


def test_default_settings_serve_the_shipped_checkpoints():
    from service.app import create_app
    from service.settings import Settings
    s = Settings(warmup=False)
    missing = [p.name for p in (s.classifier_checkpoint, s.transcriber_checkpoint) if not p.is_file()]
    if missing:
        pytest.skip(f"shipped checkpoints not there yet: {missing}")
    with TestClient(create_app(s)) as c:
        names = [m["name"] for m in c.get("/models").json()["models"]]
        assert names == ["cifar10_complex", "musicnet_complex_v5"]
        r = c.post("/classify", files={"file": ("a.png", image_bytes("PNG", (200, 30, 30)))})
        assert r.status_code == 200 and len(r.json()["results"][0]["probabilities"]) == 10
        r = c.post("/transcribe", files={"file": ("a.wav", audio_bytes(tone(seconds=1.0, sr=16000), sr=16000))})
        assert r.status_code == 200 and r.json()["notes"] is not None


def test_flip_tta_setting_reaches_the_classifier(real_checkpoints):
    """DCN_CLASSIFY_TTA=false serves the single forward pass; the default averages with the mirror image."""
    from PIL import Image

    from service.app import create_app
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")  # not mirror-symmetric
    probs = {}
    for tta in (True, False):
        with TestClient(create_app(settings_for(real_checkpoints, classify_tta=tta))) as c:
            info = {m["task"]: m for m in c.get("/models").json()["models"]}["image-classification"]
            assert info.get("test_time_augmentation") == ("flip" if tta else None)
            r = c.post("/classify", files={"file": ("n.png", buf.getvalue())})
            probs[tta] = r.json()["results"][0]["probabilities"]
    assert probs[True] != probs[False]


def music(seconds: float, sr: int = 22050, seed: int = 0) -> np.ndarray:
    """Piano-like chords: harmonic tones with decaying envelopes, three new notes every 0.5 s, faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for start in np.arange(0, seconds, 0.5):
        for p in rng.choice(np.arange(48, 80), size=3, replace=False):
            f0 = 440 * 2 ** ((p - 69) / 12)
            tt = t[t >= start] - start
            x[t >= start] += 0.1 * np.exp(-3 * tt) * (tt < 1.0) * sum(np.sin(2 * np.pi * k * f0 * tt) / k
                                                                       for k in range(1, 6))
    return (x + 0.001 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def shipped():
    from service.app import create_app
    from service.settings import Settings
    s = Settings(warmup=False)
    missing = [p.name for p in (s.classifier_checkpoint, s.transcriber_checkpoint) if not p.is_file()]
    if missing:
        pytest.skip(f"shipped checkpoints not there yet: {missing}")
    with TestClient(create_app(s)) as c:
        yield c


def test_shipped_transcriber_json_size(shipped):
    """10 s of music through the shipped checkpoint: measured 205 KB of JSON (1.23 MB per minute; 485 KB
    before the probabilities were rounded in float64), and still within 1e-3 of the float32 npz."""
    data = audio_bytes(music(10.0), sr=22050)
    r = shipped.post("/transcribe", files={"file": ("m.wav", data)})
    assert r.status_code == 200, r.text
    body = json.loads(r.content)
    heads = 1 + ("onsets" in body)
    assert len(r.content) < 230_000 * heads, len(r.content)
    z = np.load(io.BytesIO(shipped.post("/transcribe?format=npz", files={"file": ("m.wav", data)}).content))
    np.testing.assert_allclose(body["probabilities"], z["probabilities"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(body["times"], z["times"], atol=1e-6, rtol=0)
    assert len(body["notes"]) > 10


def test_shipped_transcriber_huge_float_samples(shipped):
    """Samples of 1e25 (finite float32) made every probability NaN: the JSON held bare NaN tokens, the npz NaN,
    the MIDI nothing. prepare_audio now rescales a peak over 1e3 to 1.0: same result as the normalised audio."""
    x = music(2.0)
    x /= np.abs(x).max()
    ref = shipped.post("/transcribe", files={"file": ("m.wav", audio_bytes(x, subtype="FLOAT"))}).json()
    data = audio_bytes(x * np.float32(1e25), subtype="FLOAT")
    r = shipped.post("/transcribe", files={"file": ("m.wav", data)})
    assert r.status_code == 200, r.text
    body = json.loads(r.content, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    np.testing.assert_allclose(body["probabilities"], ref["probabilities"], atol=2e-3)
    assert body["notes"] and len(body["notes"]) == len(ref["notes"])
    z = np.load(io.BytesIO(shipped.post("/transcribe?format=npz", files={"file": ("m.wav", data)}).content))
    assert np.isfinite(z["probabilities"]).all()


def test_shipped_transcriber_monophonic_and_pitch_bends(shipped):
    """POST /transcribe?monophonic=true never has two notes at once, and its live stream (header monophonic)
    gives the same notes (confidence to 2e-4); ?pitch_bends=true adds per-frame cents to each note and pitch-wheel events to the MIDI."""
    import mido
    sr = 22050
    data = audio_bytes(music(6.0), sr=sr)
    r = shipped.post("/transcribe?monophonic=true&frames=false", files={"file": ("m.wav", data)})
    assert r.status_code == 200, r.text
    notes = r.json()["notes"]
    assert notes and r.json()["decoding"]["monophonic"] is True
    assert all(a["offset"] <= b["onset"] + 0.011 for a, b in zip(notes, notes[1:]))
    pcm = (np.clip(music(6.0), -1, 1 - 2 ** -15) * 32768).astype("<i2").tobytes()
    with shipped.websocket_connect("/transcribe/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "sample_rate": sr, "format": "int16", "monophonic": True,
                                 "frames": False}))
        assert ws.receive_json()["type"] == "ready"
        for i in range(0, len(pcm), 8820):
            ws.send_bytes(pcm[i:i + 8820])
        ws.send_text(json.dumps({"type": "end"}))
        while (m := ws.receive_json())["type"] != "summary":
            pass
    # the stream's short windows give the frames within 1e-4 of the offline ones, so a note's mean confidence
    # can differ in its 4th decimal; the notes themselves (times, pitches) are the same
    assert [(n["onset"], n["offset"], n["pitch"]) for n in m["notes"]] == [(n["onset"], n["offset"], n["pitch"])
                                                                         for n in notes]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(m["notes"], notes)) <= 2e-4
    r = shipped.post("/transcribe?pitch_bends=true&frames=false", files={"file": ("m.wav", data)})
    assert all(len(n["pitch_bends"]) >= 1 for n in r.json()["notes"])
    mid = shipped.post("/transcribe?pitch_bends=true&format=midi", files={"file": ("m.wav", data)})
    assert any(msg.type == "pitchwheel" for msg in mido.MidiFile(file=io.BytesIO(mid.content)).tracks[0])
