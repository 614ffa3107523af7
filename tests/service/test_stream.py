"""Live transcription (WebSocket /transcribe/stream, service/stream.py): streamed == offline, incremental note
decoding == decode_notes, the protocol, and its limits (concurrency, idle, duration, back-pressure, bad input)."""
from __future__ import annotations

import contextlib
import io
import json
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from models import transcription as tr
from models.checkpoint import build_model
from models.transcription import NoteTracker
from service.app import create_app
from service.decode import decode_audio_ex
from service.stream import AudioInput, StreamHeader, build_stream_model

from .conftest import metric, serve, settings_for
from .tiny_models import make_checkpoints, make_onset_checkpoint


@pytest.fixture(scope="module")
def onset_ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    cls, _ = make_checkpoints(folder)
    return cls, make_onset_checkpoint(folder, {"onset_threshold": 0.5, "frame_threshold": 0.3,
                                               "min_note_length": 0.05})


@contextlib.contextmanager
def _served(app):
    """The app under the service's own uvicorn config on a free loopback port; yields the stream URL."""
    with serve(app, service_config=True) as base:
        yield base.replace("http://", "ws://") + "/transcribe/stream"


def _app(ckpts, **overrides):
    overrides.setdefault("stream_realtime_margin_s", 1000.0)  # tests send faster than real time
    return create_app(settings_for(ckpts, warmup=False, **overrides))


def _melody(sr: int, seconds: float = 2.0, channels: int = 1) -> np.ndarray:
    x = np.zeros(int(seconds * sr), np.float32)
    for start, stop, f in ((0.1, 0.5, 440.0), (0.7, 1.3, 660.0), (1.5, 1.8, 330.0)):
        a, b = int(start * sr), min(int(stop * sr), len(x))
        x[a:b] = 0.5 * np.sin(2 * np.pi * f * np.arange(max(0, b - a)) / sr)
    return np.stack([x, 0.5 * x], 1) if channels == 2 else x


def _int16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1 - 2 ** -15) * 32768).astype("<i2").tobytes()


def _stream(ws, header: dict, pcm: bytes, seed: int = 0, end: bool = True) -> list[dict]:
    """Send the header and ``pcm`` in chunks of random sizes (sample frames split across chunks), then end;
    returns every message received up to the summary."""
    ws.send_text(json.dumps(header))
    ready = ws.receive_json()
    assert ready["type"] == "ready", ready
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(pcm):
        n = int(rng.integers(1, 3000))
        ws.send_bytes(pcm[i:i + n])
        i += n
    out = [ready]
    if end:
        ws.send_text(json.dumps({"type": "end"}))
        while out[-1]["type"] != "summary":
            out.append(ws.receive_json())
    return out


def _frames(messages: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fr = [m for m in messages if m["type"] == "frames"]
    starts = [m["start"] for m in fr]
    assert starts == sorted(starts)
    return (np.concatenate([m["times"] for m in fr]), np.concatenate([m["probabilities"] for m in fr]),
            np.concatenate([m["onsets"] for m in fr]))


@pytest.mark.parametrize("sr,channels", [(22050, 1), (8000, 2)])
def test_streamed_frames_and_notes_equal_post_transcribe(onset_ckpts, sr, channels):
    audio = _melody(sr, channels=channels)
    pcm = _int16(audio)
    wav = io.BytesIO()
    sf.write(wav, np.frombuffer(pcm, "<i2").reshape(-1, channels), sr, format="WAV", subtype="PCM_16")
    with TestClient(_app(onset_ckpts)) as client:
        offline = client.post("/transcribe", files={"file": ("a.wav", wav.getvalue(), "audio/wav")}).json()
        with client.websocket_connect("/transcribe/stream") as ws:
            msgs = _stream(ws, {"type": "start", "protocol": 1, "sample_rate": sr, "channels": channels,
                                "format": "int16"}, pcm)
    times, probs, onsets = _frames(msgs)
    assert len(times) == len(offline["times"])
    np.testing.assert_allclose(times, offline["times"], atol=1e-6)
    # both are the same float32 probabilities rounded to 3 decimals; 1e-3 allows a rounding tie to differ
    np.testing.assert_allclose(probs, offline["probabilities"], atol=1.001e-3)
    np.testing.assert_allclose(onsets, offline["onsets"], atol=1.001e-3)
    summary = msgs[-1]
    assert summary["notes"] == offline["notes"] and offline["notes"]
    assert summary["frames"] == len(offline["times"]) and summary["reason"] == "end"
    assert abs(summary["duration"] - offline["duration"]) < 1e-6
    # every note: one note_on (before its note_off, same onset), one note_off equal to the summary's note
    ons = [m for m in msgs if m["type"] == "note_on"]
    offs = [m for m in msgs if m["type"] == "note_off"]
    assert sorted((m["onset"], m["pitch"]) for m in ons) == [(n["onset"], n["pitch"]) for n in offline["notes"]]
    assert sorted(({k: v for k, v in m.items() if k != "type"} for m in offs),
                  key=lambda n: (n["onset"], n["pitch"])) == offline["notes"]
    for off in offs:
        i_off = msgs.index(off)
        assert any(m["type"] == "note_on" and m["pitch"] == off["pitch"] and m["onset"] == off["onset"]
                   for m in msgs[:i_off])


def test_note_on_comes_before_the_note_ends(onset_ckpts):
    """A long note is announced while it still sounds: its note_on arrives in the middle of the stream."""
    sr = 8000
    audio = np.zeros(3 * sr, np.float32)
    audio[int(0.5 * sr): int(2.5 * sr)] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr)
    pcm = _int16(audio)
    with TestClient(_app(onset_ckpts)) as client, client.websocket_connect("/transcribe/stream") as ws:
        _stream(ws, {"sample_rate": sr, "format": "int16"}, pcm[: len(pcm) * 2 // 3 // 2 * 2], end=False)
        seen = []
        deadline = time.monotonic() + 20
        while not any(m["type"] == "note_on" for m in seen) and time.monotonic() < deadline:
            seen.append(ws.receive_json())
        assert any(m["type"] == "note_on" for m in seen), "no note_on while the note sounds"
        assert not any(m["type"] == "note_off" for m in seen)
        on_time = next(m for m in seen if m["type"] == "note_on")["onset"]
        assert 0.4 <= on_time <= 0.6
        ws.send_text(json.dumps({"type": "end"}))
        while (m := ws.receive_json())["type"] != "summary":
            pass
        assert any(n["offset"] < 2.0 for n in m["notes"]) is False  # the note ran to 2.5 s


def _random_probs(rng, n, p):
    x = rng.random((n, p))
    k = np.ones(4) / 4
    return (np.stack([np.convolve(x[:, j], k, "same")[:n] for j in range(p)], 1) ** 2 * 1.6).astype(np.float32)


@pytest.mark.parametrize("onset_head", [True, False])
def test_incremental_notes_equal_decode_notes(onset_head):
    rng = np.random.default_rng(1)
    for _ in range(150):
        n, p = int(rng.integers(1, 100)), 4
        frames, onsets = _random_probs(rng, n, p), _random_probs(rng, n, p)
        dec = {"onset_threshold": float(rng.uniform(0.2, 0.8)), "frame_threshold": float(rng.uniform(0.1, 0.7)),
               "min_note_length": float(rng.choice([0.0, 0.05, 0.1]))}
        t = tr.Transcription(tr.frame_times(type("M", (), {"hop_length": 320, "sample_rate": 16000}), n),
                             np.arange(60, 60 + p), frames, onsets if onset_head else None)
        expected = tr.decode_notes(t, defaults=dec)
        tracker = NoteTracker(np.arange(60, 60 + p), 320, 16000, dec, onset_head)
        events, i = [], 0
        while i < n:
            k = int(rng.integers(1, 12))
            events += tracker.push(frames[i:i + k], onsets[i:i + k] if onset_head else None)
            i += k
        events += tracker.finish()
        assert tracker.notes == expected
        assert sorted(({k: v for k, v in e.items() if k != "type"} for e in events if e["type"] == "note_off"),
                      key=lambda x: (x["onset"], x["pitch"])) == expected
        assert len([e for e in events if e["type"] == "note_on"]) == len(expected)


@pytest.mark.parametrize("arch,edge", [("complex_note_transcriber", 1), ("complex_frame_transcriber", 0)])
def test_short_windows_give_the_offline_frames(arch, edge):
    """The real architectures (small, random weights): blocks of 10 frames through a model copy with 10 + 2*edge
    frames per window equal the 40-frame offline windows; the note model's head is zero-padded in time, so it
    needs one edge frame, which the start-up check finds."""
    torch.manual_seed(0)
    cfg = {"frames_per_window": 40}
    if arch == "complex_note_transcriber":
        cfg.update(channels=4, hidden=8)
    model = build_model(arch, cfg).eval()
    sm = build_stream_model(model, {"arch": arch, "config": cfg}, 10)
    assert sm.block_frames == 10 and sm.edge == edge
    assert sm.max_difference <= 1e-5
    assert sm.algorithmic_latency_s == pytest.approx(((10 - 1 + edge) * model.hop_length + model.context)
                                                     / model.sample_rate)


def test_incremental_resampling_equals_the_upload_path():
    sr = 44100
    audio = _melody(sr, 1.0, channels=2)
    pcm = _int16(audio)
    wav = io.BytesIO()
    sf.write(wav, np.frombuffer(pcm, "<i2").reshape(-1, 2), sr, format="WAV", subtype="PCM_16")
    expected, _, _ = decode_audio_ex(wav.getvalue(), 60, 16000)
    inp = AudioInput(StreamHeader(sr, 2, "int16", {}), 16000)
    rng = np.random.default_rng(0)
    parts, i = [], 0
    while i < len(pcm):
        n = int(rng.integers(1, 5000))
        parts.append(inp.feed(pcm[i:i + n]))
        i += n
    parts.append(inp.finish())
    got = np.concatenate(parts)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected.astype(np.float32), atol=1e-6)


def _close(ws) -> tuple[int, str]:
    with pytest.raises(WebSocketDisconnect) as e:
        while True:
            ws.receive_json()
    return e.value.code, e.value.reason


@pytest.mark.parametrize("header,code,why", [
    ("not json", 1007, "not JSON"),
    ('{"sample_rate": 0}', 1007, "sample_rate"),
    ('{"sample_rate": 16000, "format": "int24"}', 1007, "format"),
    ('{"sample_rate": 16000, "channels": 99}', 1007, "channels"),
    ('{"sample_rate": 16000, "onset_threshold": 2}', 1007, "onset_threshold"),
    ('{"sample_rate": 16000, "protocol": 7}', 1007, "protocol"),
    ('{"sample_rate": 16000, "bogus": 1}', 1007, "bogus"),
    (b"\x00\x01", 1003, "header"),
])
def test_malformed_headers_are_closed_with_a_code_and_reason(onset_ckpts, header, code, why):
    with TestClient(_app(onset_ckpts)) as client, client.websocket_connect("/transcribe/stream") as ws:
        ws.send_bytes(header) if isinstance(header, bytes) else ws.send_text(header)
        err = ws.receive_json()
        assert err["type"] == "error" and err["code"] == code and why in err["detail"]
        got, reason = _close(ws)
        assert got == code and why in reason


def test_bad_audio_and_messages(onset_ckpts):
    with TestClient(_app(onset_ckpts)) as client:
        with client.websocket_connect("/transcribe/stream") as ws:  # NaN in float32 audio
            _stream(ws, {"sample_rate": 8000, "format": "float32"}, np.array([0.1, np.nan], "<f4").tobytes(),
                    end=False)
            assert _close(ws)[0] == 1007
        with client.websocket_connect("/transcribe/stream") as ws:  # ends inside a sample frame
            _stream(ws, {"sample_rate": 8000, "format": "int16", "channels": 2}, b"\x00" * 7, end=False)
            ws.send_text('{"type": "end"}')
            assert _close(ws)[0] == 1007
        with client.websocket_connect("/transcribe/stream") as ws:  # text that is not a control message
            _stream(ws, {"sample_rate": 8000}, b"", end=False)
            ws.send_text("hello")
            assert _close(ws)[0] == 1003
        with client.websocket_connect("/transcribe/stream") as ws:  # ping / pong
            _stream(ws, {"sample_rate": 8000}, b"\x00\x00" * 800, end=False)
            ws.send_text('{"type": "ping", "time": 12.5}')
            while (m := ws.receive_json())["type"] != "pong":
                pass
            assert m["time"] == 12.5 and m["received_s"] == pytest.approx(0.1)
        text = client.get("/metrics").text
        assert metric(text, "dcn_streams_total", outcome="bad_audio") == 2
        assert metric(text, "dcn_streams_total", outcome="bad_message") == 1


def test_limits_concurrency_idle_duration(onset_ckpts):
    app = _app(onset_ckpts, stream_max_concurrent=1, stream_idle_timeout_s=0.5, stream_max_seconds=1.0)
    with TestClient(app) as client:
        with client.websocket_connect("/transcribe/stream") as ws1:
            _stream(ws1, {"sample_rate": 8000}, b"", end=False)
            with client.websocket_connect("/transcribe/stream") as ws2:  # one too many
                err = ws2.receive_json()
                assert err["code"] == 1013 and "too many" in err["detail"]
                assert _close(ws2)[0] == 1013
            # idle: flushed, summary, closed with 1008
            while (m := ws1.receive_json())["type"] != "summary":
                pass
            assert m["reason"] == "idle"
            assert _close(ws1)[0] == 1008
        with client.websocket_connect("/transcribe/stream") as ws:  # 3 s sent, the limit is 1 s
            msgs = _stream(ws, {"sample_rate": 8000}, _int16(_melody(8000, 3.0)), end=False)
            while msgs[-1]["type"] != "summary":
                msgs.append(ws.receive_json())
            assert msgs[-1]["reason"] == "max_duration" and msgs[-1]["duration"] == pytest.approx(1.0)
            code, reason = _close(ws)
            assert code == 1008 and "limit" in reason
        with client.websocket_connect("/transcribe/stream") as ws:  # no header at all
            code, reason = _close(ws)
            assert code == 1008 and "header" in reason
        text = client.get("/metrics").text
        for outcome in ("too_many", "idle", "max_duration"):
            assert metric(text, "dcn_streams_total", outcome=outcome) >= 1, outcome
        assert metric(text, "dcn_stream_audio_seconds_total") >= 1.0
        assert metric(text, "dcn_streams_active") == 0


def test_back_pressure_paces_a_client_that_sends_too_fast(onset_ckpts):
    """2 s of audio sent at once, margin 0.5 s: the server reads it no faster than real time + the margin."""
    with TestClient(_app(onset_ckpts, stream_realtime_margin_s=0.5, stream_max_speed=1.0)) as client:
        with client.websocket_connect("/transcribe/stream") as ws:
            t0 = time.monotonic()
            msgs = _stream(ws, {"sample_rate": 8000, "frames": False}, _int16(_melody(8000, 2.0)))
            elapsed = time.monotonic() - t0
        assert elapsed >= 1.3, elapsed
        assert msgs[-1]["notes"] and not any(m["type"] == "frames" for m in msgs)
        assert metric(client.get("/metrics").text, "dcn_stream_throttled_seconds_total") > 0.5


def test_protocol_is_documented(onset_ckpts):
    with TestClient(_app(onset_ckpts)) as client:
        doc = client.get("/transcribe/stream").json()
        assert doc["protocol"] == 1 and "note_on" in doc["documentation"] and doc["latency"]["block_frames"]
        assert "/transcribe/stream" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("extra", [{}, {"fine_pitch": True, "level_velocity": [0.15, -30.0]}],
                         ids=["frame+onset", "bend+velocity"])
def test_note_transcriber_streamed_equals_post(onset_ckpts, tmp_path, extra):
    """The real note architecture (small, random weights, zero-padded head): streamed frames == POST frames, and
    streamed notes == POST notes, velocity (read off the attack, 3 frames of look-ahead) included."""
    from models.checkpoint import save_checkpoint
    torch.manual_seed(0)
    cfg = {"frames_per_window": 40, "channels": 4, "hidden": 8, "output_bias": [0.0, 0.0], **extra}
    model = build_model("complex_note_transcriber", cfg)
    with torch.no_grad():
        model.key_bias.normal_(0, 2)
    ckpt = save_checkpoint(tmp_path / "note.pt", model.eval(), "complex_note_transcriber", cfg,
                           {"task": "transcription", "metrics": {}})
    sr = 16000
    pcm = _int16(_melody(sr, 2.0))
    wav = io.BytesIO()
    sf.write(wav, np.frombuffer(pcm, "<i2"), sr, format="WAV", subtype="PCM_16")
    with TestClient(_app((onset_ckpts[0], ckpt), stream_block_frames=10)) as client:
        offline = client.post("/transcribe", files={"file": ("a.wav", wav.getvalue(), "audio/wav")}).json()
        with client.websocket_connect("/transcribe/stream") as ws:
            msgs = _stream(ws, {"sample_rate": sr, "format": "int16"}, pcm)
    assert msgs[0]["latency"]["edge_frames"] == 1 and msgs[0]["latency"]["block_frames"] == 10
    times, probs, onsets = _frames(msgs)
    assert len(times) == len(offline["times"]) == 101
    np.testing.assert_allclose(probs, offline["probabilities"], atol=1.001e-3)
    np.testing.assert_allclose(onsets, offline["onsets"], atol=1.001e-3)
    assert msgs[-1]["notes"] == offline["notes"]
    if "level_velocity" in extra:
        assert offline["notes"] and all(1 <= n["velocity"] <= 127 for n in offline["notes"])


def test_shutdown_flushes_and_closes_with_1001(onset_ckpts):
    with TestClient(_app(onset_ckpts)) as client, client.websocket_connect("/transcribe/stream") as ws:
        _stream(ws, {"sample_rate": 8000}, _int16(_melody(8000, 1.0)), end=False)
        client.app.state.service.draining = True
        while (m := ws.receive_json())["type"] != "summary":
            pass
        assert m["reason"] == "shutdown" and m["notes"]
        assert _close(ws)[0] == 1001
        client.app.state.service.draining = False


def test_python_client_fast_sends_at_the_servers_pace_not_into_the_socket_buffers(onset_ckpts, tmp_path, capsys,
                                                                                     monkeypatch):
    """--fast writes no further ahead than the server reads (max_speed x real time beyond its margin, plus 1 s):
    written faster, minutes of audio wait in the sockets' buffers and the client's keep-alive ping behind them,
    whose late pong makes the client drop its own stream (the soak's 1006)."""
    import time

    from service import client

    pulled = []  # (time, audio seconds before the chunk) each time the client takes the next chunk to send
    file_chunks = client.file_chunks

    def timed_chunks(path: str, chunk_ms: float):
        header, chunks = file_chunks(path, chunk_ms)

        def gen():
            pos = 0.0
            for data in chunks:
                pulled.append((time.monotonic(), pos))
                yield data
                pos += len(data) / 4 / header["sample_rate"]  # float32 mono
        return header, gen()

    monkeypatch.setattr(client, "file_chunks", timed_chunks)
    app = _app(onset_ckpts, stream_max_speed=2.0, stream_realtime_margin_s=0.5)
    with _served(app) as url:
        wav = tmp_path / "melody.wav"
        sf.write(wav, _melody(8000, 6.0), 8000, subtype="PCM_16")
        t0 = time.monotonic()
        assert client.main(["stream", str(wav), "--url", url, "--fast"]) == 0
        took = time.monotonic() - t0
    assert "(end)" in capsys.readouterr().out
    start = pulled[0][0]
    lead = max(pos - 2.0 * (t - start) for t, pos in pulled)  # audio sent beyond what 2x real time allows
    assert lead <= 0.5 + 1.0 + 0.05, lead
    assert took < 6.0  # still faster than real time


def test_real_server_python_client_and_message_limit(onset_ckpts, tmp_path, capsys):
    """uvicorn's WebSocket path with the service's config (message size limit), and `python -m service.client`."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from service.client import main as client_main

    app = _app(onset_ckpts, stream_max_message_bytes=8192)
    with _served(app) as url:
        wav = tmp_path / "melody.wav"
        sf.write(wav, _melody(8000, 2.0), 8000, subtype="PCM_16")
        assert client_main(["stream", str(wav), "--url", url, "--fast", "--offs"]) == 0
        out = capsys.readouterr().out
        assert " on " in out and " off " in out and "# 36 notes in 2.00 s (end)" in out, out  # 12 pitches x 3 tones
        with connect(url) as ws:
            ws.send(json.dumps({"sample_rate": 8000}))
            json.loads(ws.recv())
            ws.send(b"\x00" * 9000)
            with pytest.raises(ConnectionClosed) as e:
                while True:
                    ws.recv(timeout=10)
            assert e.value.rcvd.code == 1009


def test_priority_jobs_go_first_and_cap_other_batches():
    """The batcher serves stream (priority) windows before queued upload windows, in batches of their own, and
    caps upload batches while streams are active."""
    from service.batcher import Batcher

    batches: list[list[str]] = []

    def process(items):
        batches.append(list(items))
        time.sleep(0.1)
        return items

    async def scenario():
        b = Batcher("t", process, max_batch_size=8, max_batch_delay_ms=50, max_queue_size=100, busy_batch_size=2)
        b.start()
        try:
            upload = asyncio.ensure_future(b.submit([f"u{i}" for i in range(20)]))
            await asyncio.sleep(0.06)  # the first upload batch (8) is running
            stream = asyncio.ensure_future(b.submit(["s0"], priority=True))
            assert await stream == ["s0"]
            await upload
        finally:
            await b.stop()

    import asyncio
    asyncio.run(scenario())
    assert len(batches[0]) == 8 and batches[1] == ["s0"]  # before the 12 upload items queued ahead of it
    assert all(len(x) <= 2 for x in batches[2:]) and sum(len(x) for x in batches) == 21


def test_a_stream_the_service_cannot_keep_up_with_is_closed_1013(tmp_path):
    slow = make_checkpoints(tmp_path, transcriber_delay_s=0.6)  # a forward pass takes longer than the audio in it
    with TestClient(_app(slow, stream_realtime_margin_s=0.0, stream_max_backlog_s=0.4)) as client:
        with client.websocket_connect("/transcribe/stream") as ws:
            _stream(ws, {"sample_rate": 8000, "frames": False}, _int16(_melody(8000, 3.0)), end=False)
            code, reason = _close(ws)
        assert code == 1013 and "behind" in reason
        assert metric(client.get("/metrics").text, "dcn_streams_total", outcome="overloaded") == 1


def test_live_tab_in_chromium_with_a_fake_microphone(tmp_path):
    """The demo page's Live tab: headless Chromium captures a C-major chord from a WAV as its microphone
    (getUserMedia + AudioWorklet), streams it, and the chord's notes appear; Stop brings the summary."""
    import os

    from service.settings import Settings

    from .conftest import serve
    from .test_demo_page import CHORD, CHROMIUM, CHROMIUM_ARGS, chord_wav, make_test_checkpoints
    pw = pytest.importorskip("playwright.sync_api")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    cls, trn = make_test_checkpoints(tmp_path)
    wav = tmp_path / "chord.wav"
    wav.write_bytes(chord_wav())
    app = create_app(Settings(classifier_checkpoint=cls, transcriber_checkpoint=trn, device="cpu", warmup=False))
    with serve(app) as base, pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + [
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/#live")
            assert page.get_attribute("#tab-live", "aria-selected") == "true"
            page.click("#live-start")
            page.wait_for_selector('#live-status[data-state="listening"]', timeout=20000)
            for m in CHORD:
                page.wait_for_selector(f'#live-notes li[data-pitch="{m}"]', timeout=30000)
            latency = float(page.get_attribute("#live-latency", "data-latency"))
            assert 0 < latency < 3, latency
            page.click("#live-stop")
            page.wait_for_selector('#live-status[data-state="done"]', timeout=20000)
            summary = page.evaluate("window.dcnLive.summary")
            assert {n["pitch"] for n in summary["notes"]} == set(CHORD), summary["notes"]
            assert summary["reason"] == "end" and summary["duration"] > 0.2
            assert page.is_hidden("#live-error") and not errors, errors
            drawn = page.evaluate("""() => { const c = document.getElementById('live-canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] > 120 && d[i + 2] < 80) n++;
                return n; }""")
            assert drawn > 50  # orange note bars on the roll
        finally:
            browser.close()


def test_client_that_goes_away_leaves_nothing_behind(onset_ckpts):
    with TestClient(_app(onset_ckpts)) as client:
        with client.websocket_connect("/transcribe/stream") as ws:
            _stream(ws, {"sample_rate": 8000}, _int16(_melody(8000, 1.0)), end=False)
            ws.receive_json()
        deadline = time.monotonic() + 10
        service = client.app.state.service
        while service.streams_active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.streams_active == 0 and service.batchers["transcriber"].depth == 0
        assert metric(client.get("/metrics").text, "dcn_streams_total", outcome="disconnected") == 1


def test_client_reads_a_wav_or_raw_pcm_from_stdin(onset_ckpts, monkeypatch, capsys):
    import sys

    from service.client import main as client_main

    app = _app(onset_ckpts)
    with _served(app) as url:
        audio = _melody(8000, 2.0)
        wav = io.BytesIO()
        sf.write(wav, audio, 8000, format="WAV", subtype="PCM_16")
        for data, extra in ((wav.getvalue(), []), (_int16(audio), ["--sample-rate", "8000"])):
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
            assert client_main(["stream", "-", "--url", url, "--json"] + extra) == 0
            lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
            assert lines[0]["type"] == "ready" and lines[-1]["type"] == "summary"
            assert len(lines[-1]["notes"]) == 36 and lines[-1]["duration"] == pytest.approx(2.0)


def test_an_architecture_without_frames_per_window_streams_whole_windows():
    from models.checkpoint import ARCHITECTURES, register_architecture

    from .tiny_models import TinyTranscriber

    name = "test_fixed_window_transcriber"
    if name not in ARCHITECTURES:
        @register_architecture(name)
        class Fixed(TinyTranscriber):
            def __init__(self) -> None:
                super().__init__(frames_per_window=20)

    model = ARCHITECTURES[name]().eval()
    sm = build_stream_model(model, {"arch": name, "config": {}}, 10)
    assert sm.block_frames == 20 and sm.edge == 0 and sm.model is model and sm.max_difference == 0
