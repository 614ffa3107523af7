"""Every route and every documented error, on the real app through the ASGI test client."""
from __future__ import annotations

import csv
import io
import json
import re
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
from .tiny_models import make_onset_checkpoint


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
    assert tr["heads"] == ["frame"]  # frame-only; no calibration stored: the generic decoding defaults
    assert tr["decoding"] == {"onset_threshold": 0.5, "frame_threshold": 0.3, "min_note_length": 0.05}


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
    fmt = next(p for p in paths["/transcribe"]["post"]["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == ["json", "npz", "midi", "mid", "csv"]
    assert "text/csv" in paths["/transcribe"]["post"]["responses"]["200"]["content"]


def test_docs_work_offline(client):
    """Issue 18, problem 5: /docs loads Swagger UI from this server (an installed package), nothing from a CDN."""
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert assets and all(a.startswith("/") for a in assets), assets  # no http(s)://anywhere
    for a in assets:
        r = client.get(a)
        assert r.status_code == 200 and r.content, a
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
    assert client.get("/redoc", follow_redirects=False).headers["location"] == "/docs"


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
    assert "onsets" not in body  # frame-only model
    assert body["decoding"] == {"onset_threshold": 0.5, "frame_threshold": 0.3, "min_note_length": 0.05}


def test_transcribe_thresholds_and_lengths(client):
    data = audio_bytes()
    assert client.post("/transcribe?min_note_length=1", files={"file": ("x.wav", data)}).json()["notes"] == []
    # explicit values are used and reported; the rest keep the defaults
    r = client.post("/transcribe?onset_threshold=0.9&min_note_length=0.1", files={"file": ("x.wav", data)})
    assert r.json()["decoding"] == {"onset_threshold": 0.9, "frame_threshold": 0.3, "min_note_length": 0.1}
    # a frame-only model's note is a run above frame_threshold that reaches onset_threshold: frame <= onset
    r = client.post("/transcribe?onset_threshold=0.2&frame_threshold=0.5", files={"file": ("x.wav", data)})
    assert r.status_code == 422 and "frame-only" in r.json()["detail"]
    r = client.post("/transcribe?frame_threshold=0.6", files={"file": ("x.wav", data)})  # over the default 0.5
    assert r.status_code == 422 and "onset_threshold (0.5)" in r.json()["detail"]
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
    assert z["probabilities"].dtype == np.float32
    np.testing.assert_allclose(z["probabilities"], js["probabilities"], atol=5e-4)  # JSON: 3 decimals
    assert z["pitches"].tolist() == js["pitches"] and int(z["sample_rate"]) == 8000
    assert len(z["notes"]) == len(js["notes"]) and z["notes"]["pitch"].tolist() == [n["pitch"] for n in js["notes"]]
    assert "onsets" not in z.files and float(z["onset_threshold"]) == 0.5 and float(z["frame_threshold"]) == 0.3


def test_transcribe_json_numbers_are_short_and_exact_enough(client):
    """float32 probabilities print as 0.0003000000142492354 unless rounded in float64: keep the body small."""
    audio = tone(seconds=10, start=1, stop=9) * np.linspace(0.01, 1, 10 * 22050, dtype=np.float32)  # varied values
    data = audio_bytes(audio)
    r = client.post("/transcribe", files={"file": ("x.wav", data)})
    js = r.json()
    z = np.load(io.BytesIO(client.post("/transcribe?format=npz", files={"file": ("x.wav", data)}).content))
    np.testing.assert_allclose(js["probabilities"], z["probabilities"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(js["times"], z["times"], atol=1e-6, rtol=0)
    assert len(set(np.ravel(js["probabilities"]).tolist())) > 20
    numbers = re.findall(rb"-?\d+\.?\d*(?:e-?\d+)?", r.content)
    assert max(len(n) for n in numbers) <= 8, max(numbers, key=len)  # "0.001", "12.3456", never 17 digits
    # 1001 frames x 12 pitches: at most "0.123," (6 bytes) per probability
    assert len(r.content) < 1001 * 12 * 6 + 20_000, len(r.content)


def test_transcribe_csv(client):
    r = client.post("/transcribe?format=csv", files={"file": ("my song.wav", audio_bytes())})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="my_song.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    js = client.post("/transcribe", files={"file": ("x.wav", audio_bytes())}).json()
    assert r.text.splitlines()[0] == "onset,offset,pitch,confidence"
    assert [{k: float(v) for k, v in row.items()} for row in rows] == js["notes"]
    r = client.post("/transcribe?format=csv&min_note_length=5", files={"file": ("x.wav", audio_bytes())})
    assert r.text == "onset,offset,pitch,confidence\n"  # no notes: the header alone


def test_huge_float_samples_never_give_nan(client):
    """A float WAV with finite but absurd samples (1e20) is rescaled (peak > 1e3 -> 1.0), not turned into NaN."""
    data = audio_bytes(tone() * np.float32(2e20), subtype="FLOAT")
    reference = client.post("/transcribe", files={"file": ("x.wav", audio_bytes(tone() * 2, subtype="FLOAT"))}).json()
    r = client.post("/transcribe", files={"file": ("x.wav", data)})
    assert r.status_code == 200
    body = json.loads(r.content, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert body["notes"] == reference["notes"] and len(body["notes"]) == 12
    z = np.load(io.BytesIO(client.post("/transcribe?format=npz", files={"file": ("x.wav", data)}).content))
    assert np.isfinite(z["probabilities"]).all()
    mid = mido.MidiFile(file=io.BytesIO(client.post("/transcribe?format=midi", files={"file": ("x.wav", data)}).content))
    assert sum(m.type == "note_on" and m.velocity > 0 for m in mid) == 12
    stereo = np.stack([tone() * np.float32(3e38)] * 2, 1)  # the float32 mix-down must not overflow either
    r = client.post("/transcribe", files={"file": ("x.wav", audio_bytes(stereo, subtype="FLOAT"))})
    assert r.status_code == 200 and r.json()["notes"] == reference["notes"]


@pytest.mark.parametrize("fmt", ["json", "npz", "midi", "csv"])
def test_non_finite_model_output_is_an_error_not_a_200(client, monkeypatch, fmt):
    runner = client.app.state.service.transcriber
    stitch = runner.stitch

    def broken(*args, **kwargs):
        t = stitch(*args, **kwargs)
        t.probabilities[3, 2] = np.nan
        return t

    monkeypatch.setattr(runner, "stitch", broken)
    r = client.post(f"/transcribe?format={fmt}", files={"file": ("x.wav", audio_bytes())})
    assert r.status_code == 500 and "non-finite" in r.json()["detail"], r.text


def test_onset_model_calibrated_defaults(checkpoints, tmp_path):
    """A note-level model: calibrated thresholds by default, reported by /models and in the response; the
    onset head in JSON and npz; frame_threshold > onset_threshold is allowed (they apply to different heads)."""
    onset_ckpt = make_onset_checkpoint(tmp_path, {"onset_threshold": 0.6, "frame_threshold": 0.7,
                                                  "min_note_length": 0.6})
    with TestClient(create_app(settings_for((checkpoints[0], onset_ckpt)))) as c:
        info = {m["task"]: m for m in c.get("/models").json()["models"]}["transcription"]
        assert info["heads"] == ["frame", "onset"]
        assert info["decoding"] == {"onset_threshold": 0.6, "frame_threshold": 0.7, "min_note_length": 0.6}
        data = audio_bytes()
        body = c.post("/transcribe", files={"file": ("x.wav", data)}).json()
        assert body["decoding"] == info["decoding"]
        assert body["notes"] == []  # the 0.5 s tone is shorter than the calibrated min_note_length
        assert len(body["onsets"]) == len(body["times"]) and len(body["onsets"][0]) == 12
        onset_frame = int(np.argmax(np.array(body["onsets"])[:, 0]))
        assert abs(body["times"][onset_frame] - 0.25) <= 0.01
        body = c.post("/transcribe?min_note_length=0.05", files={"file": ("x.wav", data)}).json()
        assert len(body["notes"]) == 12 and all(abs(n["onset"] - 0.25) < 0.02 for n in body["notes"])
        assert body["decoding"]["frame_threshold"] == 0.7
        r = c.post("/transcribe?min_note_length=0.05&onset_threshold=0.2&frame_threshold=0.9",
                   files={"file": ("x.wav", data)})
        assert r.status_code == 200 and len(r.json()["notes"]) == 12
        z = np.load(io.BytesIO(c.post("/transcribe?format=npz", files={"file": ("x.wav", data)}).content))
        assert z["onsets"].shape == z["probabilities"].shape and z["onsets"].dtype == np.float32
        np.testing.assert_allclose(z["onsets"], body["onsets"], atol=5e-4)
        r = c.post("/transcribe?format=csv&min_note_length=0.05", files={"file": ("x.wav", data)})
        assert len(r.text.splitlines()) == 13


def test_transcribe_midi(client):
    r = client.post("/transcribe?format=midi", files={"file": ("my song ♪.wav", audio_bytes())})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/midi"
    assert r.headers["content-disposition"] == 'attachment; filename="my_song__.mid"'
    mid = mido.MidiFile(file=io.BytesIO(r.content))
    ons = [m for m in mid if m.type == "note_on" and m.velocity > 0]
    assert sorted(m.note for m in ons) == list(range(60, 72))


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "empty"),
    (b"RIFF....WAVEfmt not really audio", 400, "damaged"),  # a WAV signature: damaged, not unsupported
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
