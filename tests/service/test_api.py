"""Every route and every documented error, on the real app through the ASGI test client."""
from __future__ import annotations

import io
import struct
import zlib

import mido
import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.checkpoint import CheckpointError
from service.app import create_app
from service.settings import Settings

from .conftest import audio_bytes, image_bytes, metric, settings_for, tone


def test_health_ready_models(client, checkpoints):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    models = {m["task"]: m for m in client.get("/models").json()["models"]}
    cls, tr = models["image-classification"], models["transcription"]
    assert cls["name"] == "tiny_classifier" and cls["labels"] == ["red", "green", "blue"]
    assert cls["route"] == "/classify" and cls["device"] == "cpu" and cls["parameters"] == 12
    assert len(cls["sha256"]) == 64 and cls["metrics"] == {"val_accuracy": 1.0}
    assert tr["pitch_range"] == [60, 71] and tr["sample_rate"] == 8000 and tr["frame_rate"] == 100.0
    assert tr["metrics"] == {"frame_f1": 0.5}


def test_index_and_docs(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/classify", "/transcribe", "/healthz", "/readyz", "/models", "/metrics"):
        assert path in paths
    assert "ClassifyResponse" in schema["components"]["schemas"]
    assert "TranscribeResponse" in schema["components"]["schemas"]
    params = {p["name"] for p in paths["/transcribe"]["post"]["parameters"]}
    assert {"onset_threshold", "frame_threshold", "min_note_length", "format"} <= params
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_classify_formats(client, fmt):
    r = client.post("/classify", files={"file": (f"x.{fmt.lower()}", image_bytes(fmt, (0, 255, 0)))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny_classifier"
    (res,) = body["results"]
    assert res["label"] == "green" and res["filename"] == f"x.{fmt.lower()}"
    assert res["confidence"] == max(res["probabilities"].values())
    assert abs(sum(res["probabilities"].values()) - 1) < 1e-5


def test_classify_many_in_upload_order_any_size_and_mode(client):
    files = [("file", ("r.png", image_bytes("PNG", (255, 0, 0), size=(1000, 700)))),
             ("file", ("b.png", image_bytes("PNG", (0, 0, 255), size=(1, 1)))),
             ("file", ("g.gif", image_bytes("GIF", (0, 255, 0)))),
             ("file", ("gray.png", image_bytes("PNG", 200, mode="L"))),
             ("file", ("rgba.png", image_bytes("PNG", (255, 0, 0, 128), mode="RGBA")))]
    r = client.post("/classify", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["r.png", "b.png", "g.gif", "gray.png", "rgba.png"]
    assert [x["label"] for x in results[:3]] == ["red", "blue", "green"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb as far as the header goes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "empty"),
    (b"this is not an image", 415, "not an image"),
    (image_bytes("TIFF"), 415, "TIFF"),
    (image_bytes("PNG")[:60], 400, "cannot decode"),
    (_png_header_only(100_000, 100_000), 400, "decompression bomb"),
    (_png_header_only(9_000, 9_000), 400, "over the limit"),
])
def test_classify_bad_images(client, data, status, words):
    r = client.post("/classify", files={"file": ("bad.png", data)})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"] and "bad.png" in r.json()["detail"]


def test_classify_request_errors(client):
    r = client.post("/classify", content=b'{"a": 1}', headers={"content-type": "application/json"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/classify", files={"other": ("x.png", image_bytes())})
    assert r.status_code == 422 and "detail" in r.json()
    r = client.post("/classify", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code in (400, 422) and "detail" in r.json()
    r = client.post("/classify", files=[("file", ("x.png", image_bytes()))] * 65)
    assert r.status_code == 413 and "64" in r.json()["detail"]
    assert client.get("/classify").status_code == 405
    r = client.get("/nope")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("fmt,subtype", [("WAV", None), ("FLAC", None), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_transcribe_formats(client, fmt, subtype):
    data = audio_bytes(tone(channels=2, sr=44100), sr=44100, fmt=fmt, subtype=subtype)
    r = client.post("/transcribe", files={"file": (f"x.{fmt.lower()}", data)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny_transcriber" and body["sample_rate"] == 8000 and body["frame_rate"] == 100.0
    assert abs(body["duration"] - 1.0) < 0.06  # MP3 pads a little
    n = len(body["times"])
    assert n >= 100 and body["times"][1] == pytest.approx(0.01)
    assert body["pitches"] == list(range(60, 72))
    assert len(body["probabilities"]) == n and all(len(row) == 12 for row in body["probabilities"])
    notes = body["notes"]
    assert len(notes) == 12 and {n_["pitch"] for n_ in notes} == set(range(60, 72))
    assert all(abs(n_["onset"] - 0.25) < 0.05 and abs(n_["offset"] - 0.75) < 0.05 for n_ in notes)


def test_transcribe_thresholds_and_lengths(client):
    data = audio_bytes()
    assert client.post("/transcribe?min_note_length=1", files={"file": ("x.wav", data)}).json()["notes"] == []
    r = client.post("/transcribe?onset_threshold=0.2&frame_threshold=0.5", files={"file": ("x.wav", data)})
    assert r.status_code == 422
    r = client.post("/transcribe?onset_threshold=2", files={"file": ("x.wav", data)})
    assert r.status_code == 422
    r = client.post("/transcribe?format=xml", files={"file": ("x.wav", data)})
    assert r.status_code == 422
    # a single sample is still a recording: one frame
    r = client.post("/transcribe", files={"file": ("x.wav", audio_bytes(np.zeros(1, np.float32), sr=8000))})
    assert r.status_code == 200 and len(r.json()["times"]) == 1


def test_transcribe_npz(client):
    r = client.post("/transcribe?format=npz", files={"file": ("song.wav", audio_bytes())})
    assert r.status_code == 200 and r.headers["content-disposition"] == 'attachment; filename="song.npz"'
    z = np.load(io.BytesIO(r.content))
    js = client.post("/transcribe", files={"file": ("song.wav", audio_bytes())}).json()
    assert z["probabilities"].shape == (len(js["times"]), 12)
    np.testing.assert_allclose(z["times"], js["times"])
    np.testing.assert_allclose(z["probabilities"], js["probabilities"], atol=1e-4)
    assert z["pitches"].tolist() == js["pitches"] and int(z["sample_rate"]) == 8000
    assert len(z["notes"]) == len(js["notes"]) and z["notes"]["pitch"].tolist() == [n["pitch"] for n in js["notes"]]


def test_transcribe_midi(client):
    r = client.post("/transcribe?format=midi", files={"file": ("my song ♪.wav", audio_bytes())})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/midi"
    assert r.headers["content-disposition"] == 'attachment; filename="my_song__.mid"'
    mid = mido.MidiFile(file=io.BytesIO(r.content))
    ons = [m for m in mid if m.type == "note_on" and m.velocity > 0]
    assert sorted(m.note for m in ons) == list(range(60, 72))


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "empty"),
    (b"RIFF....WAVEfmt not really audio", 415, "not an audio file"),
    (image_bytes("PNG"), 415, "not an audio file"),
    (audio_bytes(np.zeros(0, np.float32)), 400, "no samples"),
    (audio_bytes(np.full(800, np.nan, np.float32), sr=8000, subtype="FLOAT"), 400, "NaN"),
    (audio_bytes(tone(seconds=2))[:3000], 200, ""),  # truncated WAV: what is there is transcribed
])
def test_transcribe_bad_audio(client, data, status, words):
    r = client.post("/transcribe", files={"file": ("bad.wav", data)})
    assert r.status_code == status, r.text
    if status != 200:
        assert words in r.json()["detail"]


def test_upload_limits(checkpoints):
    app = create_app(settings_for(checkpoints, max_upload_bytes=50_000, max_audio_seconds=2.0,
                                  max_image_pixels=100 * 100, warmup=False))
    with TestClient(app) as c:
        r = c.post("/transcribe", files={"file": ("x.wav", audio_bytes(tone(seconds=3, sr=8000), sr=8000, fmt="FLAC"))})
        assert r.status_code == 413 and "limit is 2 s" in r.json()["detail"]
        r = c.post("/transcribe", files={"file": ("x.wav", audio_bytes(tone(seconds=1.9, sr=8000), sr=8000))})
        assert r.status_code == 200
        r = c.post("/classify", files={"file": ("big.bmp", image_bytes("BMP", size=(150, 150)))})
        assert r.status_code == 413 and "50000 bytes" in r.json()["detail"]
        r = c.post("/classify", files={"file": ("big.png", image_bytes("PNG", size=(150, 150)))})  # small file
        assert r.status_code == 400 and "decompression bomb" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit must hold while streaming
            for _ in range(100):
                yield b"x" * 10_000
        r = c.post("/classify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        text = c.get("/metrics").text
        assert metric(text, "dcn_requests_total", route="/classify", status="413") == 2
        assert metric(text, "dcn_requests_total", route="/transcribe", status="413") == 1


def test_errors_are_counted(client):
    before = client.get("/metrics").text
    client.post("/classify", files={"file": ("x.png", b"nope")})
    client.get("/does-not-exist")
    text = client.get("/metrics").text
    for route, status in (("/classify", "415"), ("unmatched", "404")):
        assert (metric(text, "dcn_requests_total", route=route, status=status)
                == metric(before, "dcn_requests_total", route=route, status=status) + 1)
    assert metric(text, "dcn_request_latency_seconds_count", route="/classify") > 0


def test_startup_fails_fast(checkpoints, tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    cases = [(tmp_path / "missing.pt", checkpoints[1], "DCN_CLASSIFIER_CHECKPOINT: checkpoint not found"),
             (checkpoints[0], bad, "DCN_TRANSCRIBER_CHECKPOINT: cannot read checkpoint"),
             (checkpoints[1], checkpoints[1], "is a 'transcription' checkpoint")]
    for cls, tr, message in cases:
        app = create_app(Settings(classifier_checkpoint=cls, transcriber_checkpoint=tr))
        with pytest.raises(CheckpointError, match=message), TestClient(app):
            pass


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("DCN_DEVICE", "cpu")
    monkeypatch.setenv("DCN_CLASSIFY_MAX_BATCH_SIZE", "1")
    monkeypatch.setenv("DCN_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("DCN_TORCH_THREADS", "1")
    s = Settings()
    assert (s.device, s.classify_max_batch_size, s.max_upload_bytes, s.torch_threads) == ("cpu", 1, 1234, 1)
    assert s.classifier_checkpoint.name == "cifar10_complex.pt"
    monkeypatch.setenv("DCN_DEVICE", "tpu")
    with pytest.raises(ValueError):
        Settings()


def test_uvicorn_import_string():
    import service.app
    assert service.app.app.title == "Deep Complex Networks"


def test_not_ready_before_startup(checkpoints):
    # Without the lifespan (no `with`), nothing is loaded: readiness and the model routes say so.
    c = TestClient(create_app(settings_for(checkpoints)))
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False
    assert c.get("/models").status_code == 503
    r = c.post("/classify", files={"file": ("x.png", image_bytes())})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_text_field_instead_of_file(client):
    for route in ("/classify", "/transcribe"):
        r = client.post(route, data={"file": "not a file"})
        assert r.status_code in (415, 422) and r.json()["detail"], (route, r.status_code)


def test_cuda_requested_without_gpu_fails_fast(checkpoints):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    app = create_app(settings_for(checkpoints, device="cuda"))
    with pytest.raises(RuntimeError, match="DCN_DEVICE=cuda.*no CUDA device"), TestClient(app):
        pass
