"""What users of Basic Pitch, TorchServe/KServe and complexPyTorch expect (issue 18), one test per problem, on the
real app with tiny checkpoints: several files per /transcribe, one Python API that agrees with the service,
strict inputs, Basic Pitch's units and names, the service's operator conventions, and the metrics' fixed labels
(issue 21, problem 4)."""
from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import mido
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from models.checkpoint import CheckpointError
from models.inference import transcribe_file
from service.app import create_app
from service.settings import Settings, settings_error

from .conftest import audio_bytes, image_bytes, metric, serve, settings_for, tone
from .tiny_models import make_onset_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onset_client(checkpoints, tmp_path_factory):
    onset = make_onset_checkpoint(tmp_path_factory.mktemp("onset"), {"onset_threshold": 0.35,
                                                                      "frame_threshold": 0.25,
                                                                      "min_note_length": 0.03})
    with TestClient(create_app(settings_for((checkpoints[0], onset)))) as c:
        c.onset_checkpoint = onset
        yield c


# 1. several files on /transcribe: one answer per file, never a silent drop ----------------------------------

def test_several_files_answered_per_file(client):
    files = [("file", ("a.wav", audio_bytes(tone(start=0.1, stop=0.5)))),
             ("file", ("b.wav", audio_bytes(tone(seconds=2.0, start=1.0, stop=1.6))))]
    r = client.post("/transcribe?frames=false", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny_transcriber" and [x["filename"] for x in body["results"]] == ["a.wav", "b.wav"]
    a, b = body["results"]
    assert a["duration"] == pytest.approx(1.0) and b["duration"] == pytest.approx(2.0)
    assert a["notes"][0]["onset"] < 0.2 and b["notes"][0]["onset"] > 0.9  # each file's own notes
    # each result is what that file alone gets
    alone = client.post("/transcribe?frames=false", files=[files[1]]).json()
    assert {k: v for k, v in b.items() if k != "filename"} == alone
    for fmt in ("midi", "mid", "csv", "npz"):
        r = client.post(f"/transcribe?format={fmt}", files=files)
        assert r.status_code == 422 and "one file" in r.json()["detail"], fmt


def test_several_files_share_the_length_limit(checkpoints):
    with TestClient(create_app(settings_for(checkpoints, max_audio_seconds=1.5, warmup=False))) as c:
        one = ("file", ("a.wav", audio_bytes()))
        assert c.post("/transcribe", files=[one]).status_code == 200
        r = c.post("/transcribe", files=[one, ("file", ("b.wav", audio_bytes()))])
        assert r.status_code == 413 and r.json()["detail"].startswith("b.wav: ")


# 2. the Python API decodes as the service does ---------------------------------------------------------------

def test_python_api_agrees_with_the_service(onset_client):
    audio = tone(seconds=1.5, sr=8000, start=0.3, stop=1.1)
    r = onset_client.post("/transcribe", files={"file": ("x.wav", audio_bytes(audio, sr=8000, subtype="FLOAT"))})
    assert r.status_code == 200
    result = transcribe_file(audio, 8000, checkpoint=onset_client.onset_checkpoint)
    served = r.json()
    assert result.decoding == served["decoding"] == {"onset_threshold": 0.35, "frame_threshold": 0.25,
                                                     "min_note_length": 0.03}  # the calibrated values
    assert result.notes == served["notes"] and result.notes
    assert result.to_json() == r.content  # byte for byte
    r = onset_client.post("/transcribe?format=midi", files={"file": ("x.wav", audio_bytes(audio, sr=8000,
                                                                                           subtype="FLOAT"))})
    assert result.to_midi() == r.content


def test_python_api_rejects_what_it_does_not_know(checkpoints):
    audio = tone(sr=8000)
    with pytest.raises(ValueError, match="unknown decoding option 'minimum_note_length'"):
        transcribe_file(audio, 8000, checkpoint=checkpoints[1], minimum_note_length=127.7)
    with pytest.raises(ValueError, match="milliseconds"):
        transcribe_file(audio, 8000, checkpoint=checkpoints[1], min_note_length=127.7)
    with pytest.raises(ValueError, match="sample_rate"):
        transcribe_file(audio, checkpoint=checkpoints[1])


# 3. misspelt or unknown inputs are errors -------------------------------------------------------------------

def test_unknown_query_parameters_are_422_naming_them(client):
    data = audio_bytes()
    r = client.post("/transcribe?minimum_note_length=500&frames=false", files={"file": ("x.wav", data)})
    assert r.status_code == 422 and "'minimum_note_length'" in r.json()["detail"]
    assert "min_note_length" in r.json()["detail"]  # says what the route takes
    r = client.post("/classify?tta=false", files={"file": ("x.png", image_bytes())})
    assert r.status_code == 422 and "'tta'" in r.json()["detail"]
    assert client.get("/healthz?verbose=1").status_code == 422
    assert client.get("/healthz").status_code == 200


def test_unknown_and_bad_environment_variables_stop_startup(monkeypatch):
    monkeypatch.setenv("DCN_DEVIC", "cuda")
    with pytest.raises(ValidationError) as e:
        Settings()
    assert settings_error(e.value) == ("DCN_DEVIC is not a setting (did you mean DCN_DEVICE?); the settings are in "
                                       "service/settings.py and the README")
    monkeypatch.delenv("DCN_DEVIC")
    monkeypatch.setenv("DCN_MAX_FILES", "many")
    with pytest.raises(ValidationError) as e:
        Settings()
    assert settings_error(e.value).startswith("DCN_MAX_FILES: ") and "'many'" in settings_error(e.value)
    monkeypatch.delenv("DCN_MAX_FILES")
    monkeypatch.setenv("DCN_ARTIFACTS", "/tmp")  # another tool's variable: not refused
    Settings()


def test_dcn_serve_prints_one_line_for_a_bad_setting():
    """Issue 21, point 9: a bad DCN_ value was a 20-line traceback."""
    for env in ({"DCN_DEVIC": "cuda"}, {"DCN_PORT": "eighty"}, {"DCN_LOG_FORMAT": "xml"}):
        p = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (env, p.stderr)
        assert p.stderr.startswith("error: DCN_") and "Traceback" not in p.stderr


def test_a_directory_is_not_called_missing(checkpoints, tmp_path):
    """Issue 21, point 9: a directory was reported as 'checkpoint not found'."""
    app = create_app(settings_for((tmp_path, checkpoints[1])))
    with pytest.raises(CheckpointError, match="is a directory; give the checkpoint file"), TestClient(app):
        pass


# 4. Basic Pitch's units and names -----------------------------------------------------------------------------

def test_units_bounds_and_format_names(client):
    data = audio_bytes()
    for query in ("min_note_length=127.7", "min_note_length=-1", "onset_threshold=-0.1", "midi_tempo=0",
                  "minimum_frequency=0", "minimum_frequency=500&maximum_frequency=100"):
        r = client.post(f"/transcribe?{query}", files={"file": ("x.wav", data)})
        assert r.status_code == 422, query
    r = client.post("/transcribe?min_note_length=127.7", files={"file": ("x.wav", data)})
    assert "10" in r.json()["detail"]
    mid, midi = (client.post(f"/transcribe?format={f}", files={"file": ("x.wav", data)}) for f in ("mid", "midi"))
    assert mid.status_code == midi.status_code == 200 and mid.content == midi.content
    assert mid.headers["content-type"] == "audio/midi"


# 7. Basic Pitch's outputs: notes-only JSON, frequency limits, MIDI tempo ---------------------------------------

def test_notes_only_json_frequency_limits_and_tempo(client):
    data = audio_bytes()  # a 440 Hz tone: MIDI 69
    full = client.post("/transcribe", files={"file": ("x.wav", data)})
    small = client.post("/transcribe?frames=false", files={"file": ("x.wav", data)})
    assert set(full.json()) - set(small.json()) == {"times", "pitches", "probabilities"}
    assert small.json()["notes"] == full.json()["notes"] and len(small.content) < len(full.content) / 5
    pitches = [n["pitch"] for n in small.json()["notes"]]  # the tiny model hears every pitch from 60 to 71
    assert min(pitches) < 69 <= max(pitches)
    # 430 Hz lies between MIDI 68 (415.3 Hz) and 69 (440 Hz)
    below = client.post("/transcribe?frames=false&maximum_frequency=430", files={"file": ("x.wav", data)}).json()
    assert [n["pitch"] for n in below["notes"]] == [p for p in pitches if p <= 68]
    assert below["decoding"]["maximum_frequency"] == 430
    above = client.post("/transcribe?frames=false&minimum_frequency=430", files={"file": ("x.wav", data)}).json()
    assert [n["pitch"] for n in above["notes"]] == [p for p in pitches if p >= 69]
    r = client.post("/transcribe?format=midi&midi_tempo=60", files={"file": ("x.wav", data)})
    midi = mido.MidiFile(file=io.BytesIO(r.content))
    assert [m.tempo for m in midi if m.type == "set_tempo"] == [mido.bpm2tempo(60)]
    assert abs(midi.length - full.json()["notes"][-1]["offset"]) < 0.01  # times in seconds whatever the tempo


# 6. operators: either model alone, /models/{name}, request ids, logs, metrics, KServe v2 ----------------------

@pytest.mark.parametrize("served", ["classifier", "transcriber"])
def test_either_model_served_alone(checkpoints, served):
    cls, tr = checkpoints
    settings = Settings(classifier_checkpoint=cls if served == "classifier" else None,
                        transcriber_checkpoint=tr if served == "transcriber" else None, warmup=False)
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and list(ready.json()["models"]) == [served]
        assert [m["route"] for m in c.get("/models").json()["models"]] == [f"/{'classify' if served == 'classifier' else 'transcribe'}"]
        other = "transcriber" if served == "classifier" else "classifier"
        r = c.get(f"/models/{other}")
        assert r.status_code == 404 and "not served" in r.json()["detail"]
        if served == "classifier":
            r = c.post("/transcribe", files={"file": ("x.wav", audio_bytes())})
            assert r.status_code == 404 and "DCN_TRANSCRIBER_CHECKPOINT is empty" in r.json()["detail"]
            with c.websocket_connect("/transcribe/stream") as ws:
                assert ws.receive_json()["outcome"] == "not_served"
            assert c.post("/classify", files={"file": ("x.png", image_bytes())}).status_code == 200
        else:
            r = c.post("/classify", files={"file": ("x.png", image_bytes())})
            assert r.status_code == 404 and "DCN_CLASSIFIER_CHECKPOINT is empty" in r.json()["detail"]
            assert c.post("/transcribe", files={"file": ("x.wav", audio_bytes())}).status_code == 200


def test_empty_checkpoint_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("DCN_CLASSIFIER_CHECKPOINT", "")
    assert Settings().classifier_checkpoint is None
    monkeypatch.setenv("DCN_TRANSCRIBER_CHECKPOINT", " ")
    with pytest.raises(ValidationError, match="nothing to serve"):
        Settings()


def test_model_metadata_and_version(client, checkpoints):
    from models.checkpoint import file_sha256
    tr = client.get("/models/transcriber").json()
    assert tr == client.get("/models/tiny_transcriber").json()  # by key or by name
    assert tr["version"] == file_sha256(checkpoints[1])[:12] and tr["sha256"].startswith(tr["version"])
    assert tr["inputs"][0]["name"] == "file" and {o["name"] for o in tr["outputs"]} == {"probabilities", "notes"}
    assert tr["decoding"] == {"onset_threshold": 0.5, "frame_threshold": 0.3, "min_note_length": 0.05}
    assert client.get("/models/classifier").json()["outputs"][1]["shape"] == [3]
    r = client.get("/models/resnet")
    assert r.status_code == 404 and "served: classifier" in r.json()["detail"]
    # KServe v2 / Open Inference Protocol: health and metadata
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/transcriber").json()
    assert meta["name"] == "tiny_transcriber" and meta["versions"] == [tr["version"]]
    assert client.get("/v2/models/tiny_classifier/ready").json() == {"name": "tiny_classifier", "ready": True}
    assert client.get("/v2/models/nope").status_code == 404


def test_request_id_accepted_generated_and_echoed(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and generated != client.get("/healthz").headers["x-request-id"]
    assert len(client.get("/healthz", headers={"X-Request-ID": "bad id!" * 20}).headers["x-request-id"]) == 32
    assert client.get("/nowhere", headers={"X-Request-ID": "e-1"}).headers["x-request-id"] == "e-1"  # errors too


def test_json_logs_from_dcn_serve(checkpoints, tmp_path):
    """The real server: DCN_LOG_FORMAT=json gives one JSON object per line; every record written while serving a
    request (uvicorn's access line among them) carries the request's id."""
    port = _free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DCN_LOG_FORMAT": "json", "DCN_WARMUP": "false",
           "DCN_CLASSIFIER_CHECKPOINT": str(checkpoints[0]), "DCN_TRANSCRIBER_CHECKPOINT": "", "DCN_PORT": str(port),
           "DCN_TORCH_THREADS": "1"}
    code = "import tests.service.tiny_models; from service.__main__ import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        import urllib.request
        deadline = time.monotonic() + 60
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/readyz", headers={"X-Request-ID": "probe-7"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    assert r.headers["x-request-id"] == "probe-7"
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the service did not start"
                time.sleep(0.2)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert records and all("message" in r and "request_id" in r for r in records)
    assert any(r["request_id"] == "probe-7" and "/readyz" in r["message"] for r in records), out


def test_metrics_process_queue_wait_build_and_model_info(client):
    client.post("/classify", files={"file": ("x.png", image_bytes())})
    client.get("/docs")
    text = client.get("/metrics").text
    assert metric(text, "process_resident_memory_bytes") > 0 and metric(text, "process_cpu_seconds_total") > 0
    assert metric(text, "dcn_queue_wait_seconds_count", model="classifier") >= 1
    assert metric(text, "dcn_build_info") == 1
    assert re.search(r'^dcn_model_info\{device="cpu",model="transcriber",name="tiny_transcriber",'
                     r'version="[0-9a-f]{12}"\} 1\.0$', text, re.MULTILINE), text
    assert metric(text, "dcn_requests_total", route="/docs", status="200") >= 1  # not "unmatched"


def test_invented_methods_and_paths_do_not_grow_metrics(checkpoints):
    """Issue 21, problem 4: 3,000 requests with invented methods grew /metrics from 50 KB to 48.5 MB. Over real
    HTTP (h11 takes any method token); label values come from fixed sets."""
    with serve(create_app(settings_for(checkpoints, warmup=False)), service_config=True) as url:
        host, port = url.removeprefix("http://").split(":")
        before = len(_get(host, int(port), "/metrics"))
        with socket.create_connection((host, int(port))) as s:
            for i in range(3000):
                s.sendall(f"M{i}X /x{i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                _read_response(s)
        text = _get(host, int(port), "/metrics")
    assert len(text) < 100_000 and len(text) - before < 5_000, (before, len(text))
    assert metric(text.decode(), "dcn_requests_total", route="unmatched", method="other") == 3000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return body


def _get(host: str, port: int, path: str) -> bytes:
    with socket.create_connection((host, port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        return _read_response(s)


# 5. the stream client: --url / DCN_URL and one clear line when nothing listens ----------------------------------

def test_stream_client_cannot_connect_one_line(tmp_path, monkeypatch, capsys):
    import soundfile as sf

    from service.client import main as client_main
    wav = tmp_path / "a.wav"
    sf.write(wav, tone(sr=8000), 8000)
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("DCN_URL", f"http://127.0.0.1:{port}")
    assert client_main(["stream", str(wav)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot connect to ws://127.0.0.1:{port}/transcribe/stream")
    with pytest.raises(SystemExit) as e:  # bounded options fail before connecting
        client_main(["stream", str(wav), "--min-note-length", "127.7"])
    assert e.value.code == 2 and "outside [0, 10]" in capsys.readouterr().err
