"""Corpus renderer on a short real score through the real FluidSynth."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from training.data.render import CSV_HEADER, RESERVED_BWV, RenderConfig, render

pytestmark = pytest.mark.skipif(shutil.which("fluidsynth") is None,
                                reason="fluidsynth not installed (scripts/install-system-deps.sh)")


def _render(out, **kw):
    cfg = RenderConfig(out=str(out), hours=10.0, variants=1, seed=3, max_seconds=12.0,
                       pieces=["bach/bwv10.7", "bach/bwv255"], **kw)
    return render(cfg)


def test_render_writes_musicnet_layout(tmp_path):
    summary = _render(tmp_path / "a")
    # BWV 255 is reserved for independent evaluation: never rendered.
    assert any("bwv255" in e["excluded"] for e in summary["excluded"])
    assert summary["recordings"] == 1
    meta = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    split, rid = meta[0]["split"], meta[0]["id"]
    wav = tmp_path / "a" / f"{split}_data" / f"{rid}.wav"
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    audio, _ = sf.read(str(wav))
    assert np.abs(audio).max() > 0.05
    rows = list(csv.DictReader(open(tmp_path / "a" / f"{split}_labels" / f"{rid}.csv")))
    assert ",".join(rows[0].keys()) == CSV_HEADER
    starts = np.array([int(r["start_time"]) for r in rows])
    ends = np.array([int(r["end_time"]) for r in rows])
    notes = np.array([int(r["note"]) for r in rows])
    assert len(rows) > 20 and np.all(ends > starts) and np.all(np.diff(starts) >= 0)
    assert ends.max() <= info.frames and starts.max() < 12.0 * 44100  # max_seconds cut
    assert notes.min() >= 30 and notes.max() <= 90
    # The audio is loud where the labels say notes sound.
    first = starts.min()
    assert np.abs(audio[first: first + 4410]).max() > 5 * (np.abs(audio[:max(first - 100, 1)]).max() + 1e-4) or first < 200
    # Reproducible from the seed: same labels and (numerically) the same audio.
    _render(tmp_path / "b")
    assert (tmp_path / "a" / f"{split}_labels" / f"{rid}.csv").read_text() == \
        (tmp_path / "b" / f"{split}_labels" / f"{rid}.csv").read_text()
    audio_b, _ = sf.read(str(tmp_path / "b" / f"{split}_data" / f"{rid}.wav"))
    assert np.abs(audio - audio_b).max() < 1e-3


def test_reserved_list_is_the_issue_list():
    assert set(RESERVED_BWV) == {"255", "256", "273", "274", "275", "296", "297", "326", "327", "364", "385",
                                 "48.3", "62.6", "114.7"}
