"""End-to-end test of the demo page at ``/`` in a real headless Chromium against a real uvicorn on loopback.

The service runs in-process (uvicorn in a background thread, app from ``service.app.create_app``) on two
test checkpoints whose outputs are exact and deterministic, so the assertions are about the page and not
about how well a trained model happens to do:

* classifier: mean colour of the image -> nearest of ten prototype colours ("red", "green", ...);
* transcriber: a fixed spectral peak picker (Hann-windowed DFT at every MIDI pitch's fundamental, a note
  wherever that pitch holds a large share of the frame's peak energy), so a C-major chord of pure tones
  (C4 E4 G4 = MIDI 60 64 67) yields exactly those three notes.

What is checked: classes and probability bars appear for uploaded PNGs; the piano roll is drawn with the
chord's notes at the right pitch rows (canvas pixels sampled on those rows and between them, the DOM
note list, the axis labels); upload progress then the "Transcribing…" state; the audio player and its
cursor; the MIDI and npz downloads; model cards; error messages for 415 / 413 from the server and for
a 503 busy answer; keyboard navigation of the tabs; layout at 380 px; no request leaves the origin.

Screenshots go to ``$DCN_ARTIFACTS/demo-page`` when DCN_ARTIFACTS is set, otherwise to a pytest temporary
folder (printed at the end; run with ``-s`` to see it).
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.local_service import NotReady, free_port, wait_ready
from models.checkpoint import ARCHITECTURES, register_architecture, save_checkpoint

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright (pip, dev extra) is needed")
soundfile = pytest.importorskip("soundfile")
from PIL import Image

pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("DCN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
UPLOAD_LIMIT = 1_000_000  # bytes; small so the 413 test needs only a 1.3 MB file

# ------------------------------------------------------------------------------------------------ test models

COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "cyan": (0, 1, 1),
           "magenta": (1, 0, 1), "white": (1, 1, 1), "black": (0, 0, 0), "grey": (0.5, 0.5, 0.5),
           "orange": (1, 0.5, 0)}


def _register(name: str):
    def wrap(cls):
        # Idempotent, so re-importing this module (pytest's --import-mode, reruns) cannot fail.
        return ARCHITECTURES[name] if name in ARCHITECTURES else register_architecture(name)(cls)
    return wrap


@_register("demo_page_test_colour_classifier")
class ColourClassifier(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> logits = -scale * squared distance of the mean colour to each prototype."""

    def __init__(self, prototypes: list[list[float]], scale: float = 8.0) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.tensor(prototypes, dtype=torch.float32), requires_grad=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.float().mean(dim=(2, 3))                                   # (B, 3)
        return -self.scale * torch.cdist(mean, self.prototypes).pow(2)      # (B, classes)


@_register("demo_page_test_peak_picker")
class PeakPicker(nn.Module):
    """Fixed (non-learned) transcriber fulfilling models/transcription.py's contract.

    Frame k of a window is the ``n_fft`` samples centred on its frame centre (hence ``context = n_fft // 2``).
    Energy at each pitch's fundamental = |Hann-windowed DFT at that exact frequency|^2. A pitch is "on"
    (logit +20) when its energy is over ``threshold`` times the frame's largest and the frame centre is not
    silent; otherwise -20. With n_fft = 4096 at 16 kHz neighbouring semitones above C3 are > 3 DFT bins
    apart, so a pure tone lights exactly one pitch.
    """

    def __init__(self, sample_rate: int = 16000, hop_length: int = 256, frames_per_window: int = 16,
                 n_fft: int = 4096, pitch_min: int = 21, pitch_max: int = 108, threshold: float = 0.4,
                 silence_rms: float = 1e-3) -> None:
        super().__init__()
        self.sample_rate, self.hop_length, self.frames_per_window = sample_rate, hop_length, frames_per_window
        self.n_fft, self.context = n_fft, n_fft // 2
        self.pitches = list(range(pitch_min, pitch_max + 1))
        self.threshold, self.silence_rms = threshold, silence_rms
        self.gain = nn.Parameter(torch.ones(()), requires_grad=False)  # the service reads the device from a parameter
        t = torch.arange(n_fft, dtype=torch.float64) / sample_rate
        freqs = 440.0 * 2.0 ** ((torch.tensor(self.pitches, dtype=torch.float64) - 69) / 12)
        phase = 2 * math.pi * t[:, None] * freqs[None, :]
        window = torch.hann_window(n_fft, periodic=False, dtype=torch.float64)[:, None]
        self.register_buffer("cos", (window * torch.cos(phase)).float(), persistent=False)
        self.register_buffer("sin", (window * torch.sin(phase)).float(), persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        frames = windows.float().unfold(1, self.n_fft, self.hop_length)[:, :self.frames_per_window]  # (B, F, n_fft)
        energy = (frames @ self.cos) ** 2 + (frames @ self.sin) ** 2                                  # (B, F, P)
        share = energy / (energy.amax(-1, keepdim=True) + 1e-20)
        c = self.n_fft // 2
        loud = frames[..., c - 256: c + 256].pow(2).mean(-1, keepdim=True).sqrt() > self.silence_rms
        return torch.where(loud & (share > self.threshold), 20.0, -20.0) * self.gain


def make_test_checkpoints(folder: Path) -> tuple[Path, Path]:
    names = list(COLOURS)
    ccfg = {"prototypes": [list(map(float, COLOURS[n])) for n in names], "scale": 8.0}
    cls = save_checkpoint(folder / "demo_colour_classifier.pt", ColourClassifier(**ccfg),
                          "demo_page_test_colour_classifier", ccfg,
                          {"task": "image-classification", "name": "test-colour-classifier", "class_names": names,
                           "input_size": [16, 16], "metrics": {"note": "deterministic test model"}})
    tcfg = {"sample_rate": 16000, "hop_length": 256, "frames_per_window": 16, "n_fft": 4096}
    trn = save_checkpoint(folder / "demo_peak_picker.pt", PeakPicker(**tcfg), "demo_page_test_peak_picker", tcfg,
                          {"task": "transcription", "name": "test-peak-picker",
                           "metrics": {"note": "deterministic test model"}})
    return cls, trn


# ------------------------------------------------------------------------------------------------ test inputs

CHORD = (60, 64, 67)          # C4 E4 G4
CHORD_ON, CHORD_OFF = 0.3, 1.5  # seconds
WAV_SECONDS, WAV_RATE = 2.0, 16000


def midi_hz(m: int) -> float:
    return 440.0 * 2.0 ** ((m - 69) / 12)


def chord_wav() -> bytes:
    t = np.arange(int(WAV_SECONDS * WAV_RATE)) / WAV_RATE
    ramp = 0.03  # raised-cosine fades: no clicks, so no broadband energy at the edges
    a = np.clip((t - CHORD_ON) / ramp, 0, 1) * np.clip((CHORD_OFF - t) / ramp, 0, 1)
    env = 0.5 - 0.5 * np.cos(np.pi * a)
    x = sum(0.2 * np.sin(2 * np.pi * midi_hz(m) * t) for m in CHORD) * env
    buf = io.BytesIO()
    soundfile.write(buf, x.astype(np.float32), WAV_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def png(colour: tuple[int, int, int], size: int = 40) -> bytes:
    img = Image.new("RGB", (size, size), colour)
    # a little structure so the thumbnail is not a flat square (the mean colour stays dominated by `colour`)
    for i in range(size):
        img.putpixel((i, i), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real uvicorn on 127.0.0.1 serving ``create_app`` with the test checkpoints; yields its base URL."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    cls, trn = make_test_checkpoints(tmp_path_factory.mktemp("demo-page-checkpoints"))
    settings = Settings(classifier_checkpoint=cls, transcriber_checkpoint=trn, device="cpu", warmup=False,
                        max_upload_bytes=UPLOAD_LIMIT, request_timeout_s=30)
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, name="demo-page-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, lambda: None if thread.is_alive() else "the server thread stopped", timeout=30, poll_s=0.1)
    except NotReady as e:
        srv.should_exit = True
        pytest.fail(str(e))
    yield base
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    root = os.environ.get("DCN_ARTIFACTS")
    folder = Path(root) / "demo-page" if root else tmp_path_factory.mktemp("demo-page-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package 'chromium'; `make system-deps` installs it)")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class PageWatch:
    """Records every request the page makes and every console error / uncaught exception."""

    def __init__(self, page, base: str) -> None:
        self.base, self.requests, self.errors = base, [], []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))

    def external(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.base + "/", "data:", "blob:"))]

    def unexpected_errors(self, allowed_statuses=()) -> list[str]:
        # Chromium logs "Failed to load resource: ... status of 415" for every non-2xx answer: those are
        # the errors this test provokes on purpose.
        return [e for e in self.errors if not any(f"status of {s}" in e for s in allowed_statuses)]


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(15000)
    pg.watch = PageWatch(pg, server)
    pg.goto(server + "/")
    pg.wait_for_selector('#service-status[data-state="ready"]')
    yield pg
    context.close()


# ------------------------------------------------------------------------------------------------ helpers

def canvas_pixel(page, x_css: float, y_css: float) -> tuple[int, int, int]:
    """RGB of the roll canvas at CSS coordinates (median of a 5x1 strip, so a 1 px grid line cannot decide)."""
    rgb = page.evaluate("""([x, y]) => {
        const c = document.getElementById('roll-canvas');
        const dpr = Number(c.dataset.dpr) || 1;
        const d = c.getContext('2d').getImageData(Math.round(x * dpr) - 2, Math.round(y * dpr), 5, 1).data;
        const px = [];
        for (let i = 0; i < 5; i++) px.push([d[4 * i], d[4 * i + 1], d[4 * i + 2]]);
        px.sort((a, b) => (a[0] + a[1] + a[2]) - (b[0] + b[1] + b[2]));
        return px[2];
    }""", [x_css, y_css])
    return tuple(rgb)


def row_centre(geo: dict, pitch: int) -> float:
    return geo["rulerHeight"] + (geo["pitchMax"] - pitch) * geo["rowHeight"] + geo["rowHeight"] / 2


# ------------------------------------------------------------------------------------------------ tests

def test_classify_images_shows_top5_bars(page, artefacts):
    page.set_input_files("#image-input", [
        {"name": "red-square.png", "mimeType": "image/png", "buffer": png((230, 20, 20))},
        {"name": "blue-square.png", "mimeType": "image/png", "buffer": png((20, 20, 230))},
    ])
    page.wait_for_selector(".image-card >> nth=1")
    cards = page.locator(".image-card")
    assert cards.count() == 2
    # upload order is kept; labels from the deterministic colour classifier
    assert cards.nth(0).get_attribute("data-filename") == "red-square.png"
    assert cards.nth(0).get_attribute("data-label") == "red"
    assert cards.nth(1).get_attribute("data-label") == "blue"
    for i in range(2):
        rows = cards.nth(i).locator(".bar-row")
        assert rows.count() == 5
        probs = [float(rows.nth(k).get_attribute("data-probability")) for k in range(5)]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        # the bar widths follow the probabilities
        width = cards.nth(i).locator(".bar-fill").first.evaluate("e => e.style.width")
        assert abs(float(width.rstrip("%")) - 100 * probs[0]) < 0.01
    assert cards.nth(0).locator(".bar-label").first.inner_text() == "red"
    assert "%" in cards.nth(0).locator(".bar-value").first.inner_text()
    # thumbnails really rendered from the uploaded file
    page.wait_for_function("() => [...document.querySelectorAll('.image-card img')].every(i => i.complete && i.naturalWidth > 0)")
    assert "test-colour-classifier" in page.inner_text("#image-model")
    assert page.is_hidden("#image-error")
    page.screenshot(path=str(artefacts / "01-classify.png"), full_page=True)
    assert page.watch.external() == []
    assert page.watch.unexpected_errors() == []


def test_transcribe_chord_draws_piano_roll(page, artefacts):
    # Keyboard: the tabs are a tablist driven by the arrow keys.
    page.focus("#tab-image")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-audio"
    assert page.get_attribute("#tab-audio", "aria-selected") == "true"
    assert page.is_visible("#panel-audio") and page.is_hidden("#panel-image")

    # Record the progress phases the page goes through (upload %, then the indeterminate state).
    page.evaluate("""() => {
        window.__phases = [];
        const row = document.getElementById('audio-progress');
        new MutationObserver(() => {
            const bar = document.getElementById('audio-progress-bar');
            window.__phases.push({hidden: row.hidden, phase: row.dataset.phase || '',
                                  indeterminate: !bar.hasAttribute('value')});
        }).observe(row, {attributes: true, subtree: true, childList: true, characterData: true});
    }""")
    wav = chord_wav()
    page.set_input_files("#audio-input", [{"name": "c-major-chord.wav", "mimeType": "audio/wav", "buffer": wav}])
    page.wait_for_selector("#audio-result:not([hidden])")

    phases = page.evaluate("window.__phases")
    assert any(p["phase"].startswith("Uploading") for p in phases), phases
    assert any(p["phase"].startswith("Transcribing") and p["indeterminate"] for p in phases), phases
    assert page.is_hidden("#audio-progress")
    assert page.is_hidden("#audio-error")

    # The notes the page drew (data-notes) are exactly the chord, at the right times.
    canvas = page.locator("#roll-canvas")
    notes = json.loads(canvas.get_attribute("data-notes"))
    assert sorted(n["pitch"] for n in notes) == list(CHORD), notes
    assert sorted(n["name"] for n in notes) == ["C4", "E4", "G4"]
    for n in notes:
        assert abs(n["onset"] - CHORD_ON) < 0.08 and abs(n["offset"] - CHORD_OFF) < 0.08, n
    # ... and the same in the notes table and on the pitch axis
    assert [r.get_attribute("data-pitch") for r in page.locator("#notes-table tbody tr").all()] == ["60", "64", "67"]
    assert page.locator("#notes-table tbody tr td:first-child").all_text_contents() == ["C4", "E4", "G4"]  # (collapsed <details>)
    assert "C4, E4, G4" in page.inner_text("#audio-summary")

    # Canvas pixels: bright on the chord's rows while it sounds, background elsewhere.
    geo = {k: float(canvas.get_attribute(f"data-{k2}")) for k, k2 in (
        ("rulerHeight", "ruler-height"), ("rowHeight", "row-height"), ("pitchMax", "pitch-max"),
        ("pitchMin", "pitch-min"), ("pxPerSecond", "px-per-second"))}
    assert geo["pitchMin"] == 21 and geo["pitchMax"] == 108
    # Axis: highlighted note names sit level with their rows on the canvas (same offsetParent-free
    # coordinates: the axis and the canvas share the figure's top edge).
    labels = page.evaluate("""() => [...document.querySelectorAll('#roll-axis .axis-label')].map(e => ({
        text: e.textContent, pitch: Number(e.dataset.pitch), active: e.classList.contains('active'),
        centre: e.getBoundingClientRect().top + e.getBoundingClientRect().height / 2
              - document.getElementById('roll-canvas').getBoundingClientRect().top}))""")
    assert [(l["text"], l["pitch"]) for l in labels if l["active"]] == [("C4", 60), ("E4", 64), ("G4", 67)]
    assert {"C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"} <= {l["text"] for l in labels}
    for lab in labels:
        assert abs(lab["centre"] - row_centre(geo, lab["pitch"])) <= 1, lab
    mid_x = (CHORD_ON + CHORD_OFF) / 2 * geo["pxPerSecond"] + 3.3  # off the 0.5 s grid line
    before_x = 0.12 * geo["pxPerSecond"]
    after_x = 1.8 * geo["pxPerSecond"]

    def lit(rgb):       # the note overlay (orange over the probability blue)
        return rgb[0] > 120 and sum(rgb) > 300

    def dark(rgb):      # background rows
        return max(rgb) < 70

    for m in CHORD:
        assert lit(canvas_pixel(page, mid_x, row_centre(geo, m))), (m, canvas_pixel(page, mid_x, row_centre(geo, m)))
        assert dark(canvas_pixel(page, before_x, row_centre(geo, m)))
        assert dark(canvas_pixel(page, after_x, row_centre(geo, m)))
    for m in (59, 61, 62, 63, 65, 66, 68, 72, 76, 79, 48):   # neighbours, octaves, harmonics: nothing drawn
        assert dark(canvas_pixel(page, mid_x, row_centre(geo, m))), (m, canvas_pixel(page, mid_x, row_centre(geo, m)))

    # Audio player + moving cursor (overlay canvas, so the roll pixels above never change).
    page.wait_for_function("() => document.getElementById('audio-player').readyState >= 1")
    assert abs(page.evaluate("document.getElementById('audio-player').duration") - WAV_SECONDS) < 0.05
    page.evaluate("document.getElementById('audio-player').currentTime = 1.0")
    page.wait_for_function("() => Math.abs(Number(document.getElementById('roll-cursor').dataset.time) - 1.0) < 0.01")
    cursor_rgb = page.evaluate("""(x) => {
        const c = document.getElementById('roll-cursor'); const dpr = Number(document.getElementById('roll-canvas').dataset.dpr);
        return Array.from(c.getContext('2d').getImageData(Math.round(x * dpr), Math.round(200 * dpr), 1, 1).data);
    }""", 1.0 * geo["pxPerSecond"])
    assert cursor_rgb[0] > 200 and cursor_rgb[3] > 200, cursor_rgb
    # Keyboard: Home rewinds, Space on the focused roll plays, the cursor moves; Space again pauses.
    page.focus("#roll-scroll")
    page.keyboard.press("Home")
    page.wait_for_function("() => Number(document.getElementById('roll-cursor').dataset.time) < 0.05")
    page.keyboard.press("Space")
    page.wait_for_function("() => Number(document.getElementById('roll-cursor').dataset.time) > 0.2", timeout=5000)
    page.keyboard.press("Space")
    page.wait_for_function("() => document.getElementById('audio-player').paused")
    page.evaluate("document.getElementById('audio-player').currentTime = 0.9")
    page.wait_for_timeout(100)
    page.screenshot(path=str(artefacts / "02-transcribe.png"), full_page=True)

    # Downloads: MIDI with the chord's notes, npz with the arrays.
    with page.expect_download() as dl:
        page.click("#download-midi")
    midi_path = artefacts / "c-major-chord.mid"
    dl.value.save_as(midi_path)
    assert dl.value.suggested_filename == "c-major-chord.mid"
    data = midi_path.read_bytes()
    assert data[:4] == b"MThd"
    import mido
    ons = sorted({m.note for m in mido.MidiFile(midi_path) if m.type == "note_on" and m.velocity > 0})
    assert ons == list(CHORD)
    with page.expect_download() as dl:
        page.click("#download-npz")
    npz_path = artefacts / "c-major-chord.npz"
    dl.value.save_as(npz_path)
    with np.load(npz_path) as z:
        assert z["probabilities"].shape == (len(z["times"]), 88)
        assert sorted(set(z["notes"]["pitch"].tolist())) == list(CHORD)
    assert "Downloaded c-major-chord.npz" in page.inner_text("#download-status")

    # Zoom redraws at twice the scale and keeps the notes on their rows.
    page.click("#zoom-in")
    assert float(canvas.get_attribute("data-px-per-second")) == pytest.approx(2 * geo["pxPerSecond"], rel=1e-6)
    assert lit(canvas_pixel(page, (CHORD_ON + 0.5) * 2 * geo["pxPerSecond"] + 3.3, row_centre(geo, 64)))

    assert page.watch.external() == []
    assert page.watch.unexpected_errors() == []


def test_drop_settings_and_probability_layer(page, artefacts):
    """Drag-and-drop upload; the detection settings reach the API; the probability layer is drawn on its own."""
    page.click("#tab-audio")
    page.click("#audio-settings summary")
    page.fill("#min-note-length", "5")      # longer than the chord: no note survives, probabilities remain
    urls = []
    page.on("request", lambda r: "/transcribe" in r.url and urls.append(r.url))
    b64 = base64.b64encode(chord_wav()).decode()
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        window.__dt = new DataTransfer();
        window.__dt.items.add(new File([bytes], name, {type: 'audio/wav'}));
        document.getElementById('audio-drop').dispatchEvent(
            new DragEvent('dragover', {dataTransfer: window.__dt, bubbles: true, cancelable: true}));
    }""", [b64, "dropped-chord.wav"])
    assert "dragging" in page.get_attribute("#audio-drop", "class")
    page.evaluate("""() => document.getElementById('audio-drop').dispatchEvent(
        new DragEvent('drop', {dataTransfer: window.__dt, bubbles: true, cancelable: true}))""")
    page.wait_for_selector("#audio-result:not([hidden])")
    assert "dragging" not in page.get_attribute("#audio-drop", "class")
    assert "dropped-chord.wav" in page.inner_text("#audio-summary")
    # fields left empty are not sent: the model's calibrated defaults apply (shown as placeholders)
    assert len(urls) == 1 and "min_note_length=5" in urls[0] and "onset_threshold" not in urls[0], urls
    assert page.get_attribute("#onset-threshold", "placeholder") == "0.5 (model default)"
    canvas = page.locator("#roll-canvas")
    assert json.loads(canvas.get_attribute("data-notes")) == []
    assert page.locator("#notes-table tbody tr").count() == 0
    geo = {k: float(canvas.get_attribute(f"data-{k2}")) for k, k2 in (
        ("rulerHeight", "ruler-height"), ("rowHeight", "row-height"), ("pitchMax", "pitch-max"),
        ("pxPerSecond", "px-per-second"))}
    mid_x = (CHORD_ON + CHORD_OFF) / 2 * geo["pxPerSecond"] + 3.3
    for m in CHORD:   # probability ~1: the light-blue probability colour, no orange note overlay
        r, g, b = canvas_pixel(page, mid_x, row_centre(geo, m))
        assert b > 200 and r < 130 and g > 150, (m, (r, g, b))
    for m in (62, 65, 72):
        assert max(canvas_pixel(page, mid_x, row_centre(geo, m))) < 70
    # no note events, but the confident pitches are still named on the axis (not highlighted as notes)
    assert page.locator("#roll-axis .axis-label.active").count() == 0
    named = page.locator("#roll-axis .axis-label").all_inner_texts()
    assert {"C4", "E4", "G4"} <= set(named) and "D4" not in named
    page.screenshot(path=str(artefacts / "03-probabilities-only.png"), full_page=True)

    # "re-run on the current file" with the default length brings the notes back
    page.fill("#min-note-length", "0.05")
    page.click("#audio-rerun")
    page.wait_for_function("() => JSON.parse(document.getElementById('roll-canvas').dataset.notes || '[]').length === 3")
    assert len(urls) == 2 and "min_note_length=0.05" in urls[1]
    assert page.watch.external() == [] and page.watch.unexpected_errors() == []


def test_long_recording_roll_stays_within_canvas_limits(page, artefacts):
    """A 10-minute transcription (30 000 frames, answered by the browser's network layer: the test models
    would take too long) is drawn within canvas size limits, with its late note and probabilities in place."""
    fps, seconds = 50.0, 600.0
    n = int(seconds * fps)
    pitches = list(range(21, 109))

    def row(pitch: int | None = None, p: float = 0.0) -> str:
        return "[" + ",".join(str(p) if q == pitch else "0" for q in pitches) + "]"

    rows = [row()] * n   # built as text: json.dumps of 2.6 million floats is slow
    rows[int(590 * fps):int(595 * fps)] = [row(69, 0.95)] * int(5 * fps)   # A4 note near the end
    rows[int(100 * fps):int(110 * fps)] = [row(40, 0.9)] * int(10 * fps)   # E2: probability only, no note
    head = json.dumps({"model": "synthetic", "duration": seconds, "sample_rate": 16000, "frame_rate": fps,
                       "times": (np.arange(n) / fps).round(4).tolist(), "pitches": pitches,
                       "notes": [{"onset": 590.0, "offset": 595.0, "pitch": 69, "confidence": 0.95}]},
                      separators=(",", ":"))
    body = head[:-1] + ',"probabilities":[' + ",".join(rows) + "]}"
    page.route("**/transcribe*", lambda route: route.fulfill(status=200, body=body,
                                                            headers={"Content-Type": "application/json"}))
    page.click("#tab-audio")
    page.set_input_files("#audio-input", [{"name": "long.wav", "mimeType": "audio/wav", "buffer": chord_wav()}])
    page.wait_for_selector("#audio-result:not([hidden])")
    page.unroute("**/transcribe*")
    canvas = page.locator("#roll-canvas")
    width, height = page.evaluate("[document.getElementById('roll-canvas').width, document.getElementById('roll-canvas').height]")
    assert 0 < width <= 16000 and height > 0
    pps = float(canvas.get_attribute("data-px-per-second"))
    assert pps * seconds == pytest.approx(width / float(canvas.get_attribute("data-dpr")), abs=2)
    geo = {"rulerHeight": float(canvas.get_attribute("data-ruler-height")),
           "rowHeight": float(canvas.get_attribute("data-row-height")), "pitchMax": 108.0}
    r, g, b = canvas_pixel(page, 592.5 * pps, row_centre(geo, 69))
    assert r > 120 and r + g + b > 300, (r, g, b)                      # the note at 590-595 s
    r, g, b = canvas_pixel(page, 105 * pps, row_centre(geo, 40))
    assert b > 180 and r < 130, (r, g, b)                              # probabilities at 100-110 s
    assert max(canvas_pixel(page, 300 * pps, row_centre(geo, 69))) < 70
    page.evaluate("document.getElementById('roll-scroll').scrollLeft = 1e9")  # to the end: the A4 note
    page.screenshot(path=str(artefacts / "04-long-recording-end.png"), full_page=True)
    assert page.watch.unexpected_errors() == []


def test_error_messages(page, artefacts):
    # 415 from the server: a text file named .png
    page.set_input_files("#image-input", [{"name": "notes.png", "mimeType": "image/png",
                                           "buffer": b"this is not an image\n" * 20}])
    box = page.locator("#image-error")
    box.wait_for(state="visible")
    assert box.get_attribute("data-status") == "415"
    text = box.inner_text()
    assert "Unsupported file format." in text and "notes.png" in text and "PNG, JPEG" in text, text
    assert page.locator(".image-card").count() == 0
    page.screenshot(path=str(artefacts / "05-error-415.png"))

    # 413 from the server: over the (test) upload limit
    page.click("#tab-audio")
    big = io.BytesIO()
    soundfile.write(big, np.zeros(42 * 16000, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    assert len(big.getvalue()) > UPLOAD_LIMIT
    page.set_input_files("#audio-input", [{"name": "long.wav", "mimeType": "audio/wav", "buffer": big.getvalue()}])
    abox = page.locator("#audio-error")
    abox.wait_for(state="visible")
    assert abox.get_attribute("data-status") == "413", abox.inner_text()
    assert "too large" in abox.inner_text() and str(UPLOAD_LIMIT) in abox.inner_text()
    page.screenshot(path=str(artefacts / "06-error-413.png"))

    # 503 busy (queue full) with Retry-After: answered by the browser's network layer, the service
    # cannot be made busy deterministically in a fast test.
    page.route("**/transcribe*", lambda route: route.fulfill(
        status=503, headers={"Retry-After": "7", "Content-Type": "application/json"},
        body=json.dumps({"detail": "transcriber queue is full; retry later"})))
    page.set_input_files("#audio-input", [{"name": "chord.wav", "mimeType": "audio/wav", "buffer": chord_wav()}])
    page.wait_for_function("() => document.getElementById('audio-error').dataset.status === '503'")
    text = abox.inner_text()
    assert "busy" in text and "7 s" in text and "queue is full" in text, text
    page.unroute("**/transcribe*")

    # 400 from the server: an empty file
    page.set_input_files("#audio-input", [{"name": "empty.wav", "mimeType": "audio/wav", "buffer": b""}])
    page.wait_for_function("() => document.getElementById('audio-error').dataset.status === '400'")
    assert "could not be processed" in abox.inner_text()
    page.screenshot(path=str(artefacts / "07-error-400.png"))
    assert page.watch.external() == []
    assert page.watch.unexpected_errors(allowed_statuses=(400, 413, 415, 503)) == []


def test_model_cards_and_narrow_layout(page, artefacts, browser, server):
    page.click("#tab-models")
    page.wait_for_selector(".model-card >> nth=1")
    cards = page.locator(".model-card")
    titles = cards.locator("h3").all_inner_texts()
    assert titles == ["test-colour-classifier", "test-peak-picker"]
    text = cards.nth(1).inner_text()
    assert "88 pitches, A0–C8" in text and "16,000" in text and "transcription" in text
    assert "red, green, blue" in cards.nth(0).inner_text()
    assert cards.nth(0).locator('dd[data-key="sha256"] code').count() == 1
    page.screenshot(path=str(artefacts / "08-models.png"), full_page=True)

    # Narrow phone width: nothing overflows the viewport; the roll scrolls inside its own box.
    context = browser.new_context(viewport={"width": 380, "height": 800})
    narrow = context.new_page()
    watch = PageWatch(narrow, server)
    # Intercept file choosers from the start: Playwright turns interception on asynchronously, so
    # expect_file_chooser() right before the key press can lose the race on a busy machine.
    choosers = []
    narrow.on("filechooser", lambda chooser: choosers.append(chooser))
    narrow.goto(server + "/#audio")
    assert narrow.get_attribute("#tab-audio", "aria-selected") == "true"
    narrow.set_input_files("#audio-input", [{"name": "chord.wav", "mimeType": "audio/wav", "buffer": chord_wav()}])
    narrow.wait_for_selector("#audio-result:not([hidden])")
    assert narrow.evaluate("document.documentElement.scrollWidth") <= 380
    assert sorted(n["pitch"] for n in json.loads(narrow.get_attribute("#roll-canvas", "data-notes"))) == list(CHORD)
    narrow.screenshot(path=str(artefacts / "09-narrow-audio.png"), full_page=True)
    # Keyboard only: Home selects the first tab, Tab reaches the picker (panel first), Enter opens the file chooser.
    narrow.focus("#tab-audio")
    narrow.keyboard.press("Home")
    assert narrow.get_attribute("#tab-image", "aria-selected") == "true"
    narrow.keyboard.press("Tab")   # the tab panel
    narrow.keyboard.press("Tab")
    assert narrow.evaluate("document.activeElement.id") == "image-pick"
    narrow.keyboard.press("Enter")
    for _ in range(300):
        if choosers:
            break
        narrow.wait_for_timeout(50)
    assert len(choosers) == 1, "Enter on the picker button did not open a file chooser"
    assert choosers[0].is_multiple()
    choosers[0].set_files([{"name": "a-green-image-with-a-long-file-name.png", "mimeType": "image/png",
                            "buffer": png((20, 200, 20))}])
    narrow.wait_for_selector(".image-card")
    assert narrow.locator(".image-card").get_attribute("data-label") == "green"
    assert narrow.evaluate("document.documentElement.scrollWidth") <= 380
    narrow.screenshot(path=str(artefacts / "10-narrow-image.png"), full_page=True)
    context.close()
    assert watch.external() == [] and watch.unexpected_errors() == []
    print(f"\ndemo page screenshots: {artefacts}")
