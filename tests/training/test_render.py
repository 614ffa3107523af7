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


def _piano_piece():
    import pretty_midi
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    part = pretty_midi.Instrument(program=0)
    for k in range(40):  # short detached notes: the pedal, when down, outlasts most of them
        part.notes.append(pretty_midi.Note(velocity=80, pitch=60 + (k * 5) % 12, start=0.25 * k, end=0.25 * k + 0.1))
    pm.instruments.append(part)
    pm.fermatas = []
    return pm


@pytest.mark.parametrize("pedal_labels", [True, False])
def test_pedal_sounds_in_both_conventions_and_extends_only_performed_labels(pedal_labels):
    from training.data.render import arrange
    for seed in range(40):  # the first seed whose render draws the pedal
        out, rows, info = arrange(_piano_piece(), np.random.default_rng(seed), "solo_piano", 1.0, 60.0,
                                  pedal_labels=pedal_labels)
        if info["pedal"]:
            break
    assert info["pedal"]
    sounding = sorted((n.start, n.end, n.pitch) for n in out.instruments[0].notes)
    labelled = sorted((r[0], r[1], r[3]) for r in rows)
    assert [s[::2] for s in sounding] == [lab[::2] for lab in labelled]  # same notes, same onsets
    longer = sum(s[1] > lab[1] + 1e-9 for s, lab in zip(sounding, labelled))
    if pedal_labels:
        assert longer == 0  # MAESTRO's convention: the label lasts as long as the pedalled sound
    else:
        assert longer > 10 and max(lab[1] - lab[0] for lab in labelled) < 0.2  # key releases, as played
    # The draws do not depend on the label convention: the audio is the same either way.
    other, _, _ = arrange(_piano_piece(), np.random.default_rng(seed), "solo_piano", 1.0, 60.0,
                          pedal_labels=not pedal_labels)
    assert sorted((n.start, n.end, n.pitch) for n in other.instruments[0].notes) == sounding
