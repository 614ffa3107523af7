"""Note decoding of the onset models: re-onsets inside held notes, velocity, monophonic mode, and the
incremental decoder (NoteTracker, the live stream's) giving exactly the offline notes in every mode."""
import numpy as np
import pytest

from models import transcription as tr


def _random_probs(rng, n, p):
    x = rng.random((n, p))
    k = np.ones(4) / 4
    return (np.stack([np.convolve(x[:, j], k, "same")[:n] for j in range(p)], 1) ** 2 * 1.6).astype(np.float32)


def _times(n):
    return tr.frame_times(type("M", (), {"hop_length": 320, "sample_rate": 16000}), n)


def _tracked(frames, onsets, velocities, dec, rng, monophonic=False):
    p = frames.shape[1]
    tracker = tr.NoteTracker(np.arange(60, 60 + p), 320, 16000, dec, True, monophonic=monophonic)
    events, i = [], 0
    while i < len(frames):
        k = int(rng.integers(1, 12))
        events += tracker.push(frames[i:i + k], onsets[i:i + k], None if velocities is None else velocities[i:i + k])
        i += k
    events += tracker.finish()
    return tracker.notes, events


@pytest.mark.parametrize("monophonic", [False, True])
def test_incremental_equals_offline_with_reonsets_and_velocity(monophonic):
    rng = np.random.default_rng(7)
    for _ in range(120):
        n, p = int(rng.integers(1, 90)), 5
        frames, onsets, vel = _random_probs(rng, n, p), _random_probs(rng, n, p), rng.random((n, p)).astype(np.float32)
        on = float(rng.uniform(0.2, 0.7))
        dec = {"onset_threshold": on, "frame_threshold": float(rng.uniform(0.1, 0.7)),
               "min_note_length": float(rng.choice([0.0, 0.05, 0.1])),
               tr.REONSET_KEY: float(rng.choice([on, min(on + 0.3, 1.0)]))}
        t = tr.Transcription(_times(n), np.arange(60, 60 + p), frames, onsets, velocities=vel)
        expected = tr.decode_notes(t, defaults=dec, monophonic=monophonic)
        notes, events = _tracked(frames, onsets, vel, dec, rng, monophonic)
        assert notes == expected
        offs = sorted(({k: v for k, v in e.items() if k != "type"} for e in events if e["type"] == "note_off"),
                      key=lambda x: (x["onset"], x["pitch"]))
        assert offs == expected
        assert len([e for e in events if e["type"] == "note_on"]) == len(expected)
        assert all(1 <= x["velocity"] <= 127 for x in expected)
        if monophonic:  # never two notes at once
            for a, b in zip(expected, expected[1:]):
                assert a["offset"] <= b["onset"] + 0.5 * 0.02 + 1e-9


def test_weak_onset_inside_a_held_note_does_not_cut_it():
    n = 60
    frames = np.zeros((n, 1), np.float32)
    frames[5:50] = 0.9
    onsets = np.zeros((n, 1), np.float32)
    onsets[5] = 0.9
    onsets[25] = 0.35  # a bow change: a small onset bump while the note sounds
    t = tr.Transcription(_times(n), np.array([60]), frames, onsets)
    cut = tr.decode_notes(t, defaults={"onset_threshold": 0.3, "frame_threshold": 0.5, "min_note_length": 0.05})
    whole = tr.decode_notes(t, defaults={"onset_threshold": 0.3, "frame_threshold": 0.5, "min_note_length": 0.05,
                                         tr.REONSET_KEY: 0.5})
    assert len(cut) == 2 and len(whole) == 1
    assert whole[0]["onset"] == pytest.approx(0.1, abs=0.011) and whole[0]["offset"] == pytest.approx(0.99, abs=0.011)
    onsets[25] = 0.8  # a real re-articulation still splits it
    assert len(tr.decode_notes(t, defaults={"onset_threshold": 0.3, "frame_threshold": 0.5,
                                            "min_note_length": 0.05, tr.REONSET_KEY: 0.5})) == 2


def test_monophonic_keeps_the_fundamental_of_a_reed_and_ends_notes_at_the_next():
    n, p = 80, 25  # MIDI 60..84: a low note, its octave (+12) and twelfth (+19) speaking with it
    frames = np.zeros((n, p), np.float32)
    onsets = np.zeros((n, p), np.float32)
    frames[10:40, 0] = frames[11:40, 12] = frames[10:38, 19] = 0.8
    onsets[10, 0], onsets[11, 12], onsets[9, 19] = 0.9, 0.6, 0.5
    frames[35:70, 2] = 0.9  # the next note of the line starts before the first one's frames end
    onsets[35, 2] = 0.9
    t = tr.Transcription(_times(n), np.arange(60, 60 + p), frames, onsets)
    dec = {"onset_threshold": 0.3, "frame_threshold": 0.5, "min_note_length": 0.05}
    poly = tr.decode_notes(t, defaults=dec)
    mono = tr.decode_notes(t, defaults=dec, monophonic=True)
    assert {x["pitch"] for x in poly} == {60, 62, 72, 79}
    assert [x["pitch"] for x in mono] == [60, 62]
    assert mono[0]["offset"] <= mono[1]["onset"] + 0.011


def test_monophonic_prefers_the_fundamental_to_a_louder_overtone_and_keeps_real_leaps():
    """A flute's or reed's octave and twelfth often hit the onset head harder than the note itself (the music21
    test recording: the scale came out as its overtones); they never win over their fundamental, whether they
    start with it or a frame before. An octave leap after the note has ended is still a note."""
    n, p = 120, 25
    frames = np.zeros((n, p), np.float32)
    onsets = np.zeros((n, p), np.float32)
    frames[10:40, 0] = frames[9:40, 12] = frames[10:38, 19] = 0.8
    onsets[10, 0], onsets[9, 12], onsets[10, 19] = 0.6, 0.95, 0.9
    frames[50:80, 12] = 0.9  # then the octave above, played: a leap
    onsets[50, 12] = 0.9
    frames[90:110, 7] = frames[89:110, 19] = 0.8  # G's octave a frame early and louder, G's own onset weak
    onsets[90, 7], onsets[89, 19] = 0.35, 0.9
    frames[95:97, 2] = 0.6  # a flicker of another pitch inside the held G does not end it
    onsets[95, 2] = 0.4
    t = tr.Transcription(_times(n), np.arange(60, 60 + p), frames, onsets)
    mono = tr.decode_notes(t, defaults={"onset_threshold": 0.3, "frame_threshold": 0.5, "min_note_length": 0.05,
                                        tr.REONSET_KEY: 0.5}, monophonic=True)
    assert [x["pitch"] for x in mono] == [60, 72, 67]
    assert mono[0]["onset"] == pytest.approx(0.2, abs=0.011)
    assert mono[2]["offset"] == pytest.approx(2.19, abs=0.011)


def test_monophonic_needs_an_onset_head():
    t = tr.Transcription(_times(10), np.arange(60, 62), np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="onset head"):
        tr.decode_notes(t, monophonic=True)


def test_velocity_reaches_csv_midi_and_npz():
    import io

    import mido
    notes = [{"onset": 0.1, "offset": 0.5, "pitch": 60, "confidence": 0.9, "velocity": 33},
             {"onset": 0.6, "offset": 0.9, "pitch": 64, "confidence": 0.8, "velocity": 101}]
    assert tr.notes_to_csv(notes).splitlines()[0] == "onset,offset,pitch,confidence,velocity"
    assert tr.notes_to_csv(notes).splitlines()[2].endswith(",101")
    mid = mido.MidiFile(file=io.BytesIO(tr.notes_to_midi(notes)))
    assert [m.velocity for m in mid.tracks[0] if m.type == "note_on" and m.velocity] == [33, 101]
    t = tr.Transcription(_times(50), np.array([60, 64]), np.zeros((50, 2), np.float32),
                         np.zeros((50, 2), np.float32), velocities=np.zeros((50, 2), np.float32))
    z = np.load(io.BytesIO(tr.transcription_npz(t, notes, 1.0, 16000, 50.0, tr.DEFAULT_DECODING)))
    assert list(z["notes"]["velocity"]) == [33, 101] and z["velocities"].shape == (50, 2)
