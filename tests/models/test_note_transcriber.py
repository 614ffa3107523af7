"""The onset-aware complex transcriber: harmonic stacking, the model contract, folded inference, decoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import build_model
from models.note_transcriber import harmonic_shifts, stack_harmonics
from models.transcription import Transcription, decode_notes, notes_from_onsets, transcribe, window_samples

TINY = {"frames_per_window": 20, "channels": 4, "hidden": 8}


def test_harmonic_shifts_are_the_intervals_of_the_overtone_series():
    assert harmonic_shifts((0.25, 1 / 3, 0.5, 1, 2, 3, 4, 5, 6, 7)) == [-24, -19, -12, 0, 12, 19, 24, 28, 31, 34]


def test_stack_harmonics_gathers_shifted_semitones_and_keeps_the_complex_layout():
    b, c, s, t = 2, 3, 40, 5
    h = torch.randn(b, 2 * c, s, t)
    shifts = [-12, 0, 7]
    out = stack_harmonics(h, shifts, 30)
    assert out.shape == (b, 2 * c * 3, 30, t)
    re, im = out.chunk(2, dim=1)
    for part, src in ((re, h[:, :c]), (im, h[:, c:])):
        grouped = part.view(b, c, 3, 30, t)
        for k, sh in enumerate(shifts):
            for pitch in (0, 11, 12, 29):
                want = src[:, :, pitch + sh] if 0 <= pitch + sh < s else torch.zeros(b, c, t)
                torch.testing.assert_close(grouped[:, :, k, pitch], want)


def test_model_contract_and_folded_inference_match_batchnorm():
    torch.manual_seed(0)
    m = build_model("complex_note_transcriber", TINY)
    x = torch.randn(3, window_samples(m)) * 0.1
    m.train()
    for _ in range(3):  # give the BN layers non-trivial running statistics
        m(x)
    m.eval()
    with torch.no_grad():
        folded = m(x)
        m.training = True  # unfolded path (module.training only toggles folding here) with BN in eval mode
        for mod in m.modules():
            if mod is not m:
                mod.training = False
        plain = m(x)
        m.training = False
    assert folded.shape == (3, m.frames_per_window, 88, 2)
    torch.testing.assert_close(folded, plain, atol=1e-4, rtol=1e-4)


def test_calibration_buffer_is_an_affine_map_of_the_logits():
    m = build_model("complex_note_transcriber", TINY).eval()
    x = torch.randn(1, window_samples(m)) * 0.1
    with torch.no_grad():
        before = m(x)
        m.calibration.copy_(torch.tensor([[2.0, -1.0], [0.5, 3.0]]))
        after = m(x)
    torch.testing.assert_close(after[..., 0], 2 * before[..., 0] - 1)
    torch.testing.assert_close(after[..., 1], 0.5 * before[..., 1] + 3)


def test_transcribe_returns_frame_and_onset_heads_for_any_length():
    m = build_model("complex_note_transcriber", TINY).eval()
    tr = transcribe(m, np.random.default_rng(0).standard_normal(22050).astype(np.float32) * 0.05, 44100)
    assert tr.onsets is not None and tr.onsets.shape == tr.probabilities.shape == (len(tr.times), 88)
    assert np.isfinite(tr.probabilities).all() and 0 <= tr.onsets.min() and tr.onsets.max() <= 1


def _roll(n: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((n, 3), np.float32), np.zeros((n, 3), np.float32), np.arange(n) * 0.02


def test_onset_decoding_splits_repeated_notes_and_ignores_sustain_without_onset():
    onsets, frames, times = _roll()
    frames[10:60, 0] = 0.9            # one long sustained run of pitch column 0 ...
    onsets[10, 0] = onsets[35, 0] = 0.8  # ... articulated twice: two notes
    frames[20:70, 1] = 0.95           # a harmonic / reverb tail: sounds, never starts -> no note
    onsets[80, 2] = 0.9               # a note whose frames fall below threshold at once: 1 frame, too short
    notes = notes_from_onsets(onsets, frames, times, np.array([60, 72, 79]), 0.5, 0.5, min_note_length=0.05)
    assert [(n["pitch"], n["onset"], n["offset"]) for n in notes] == [(60, 0.2, 0.69), (60, 0.7, 1.19)]


def test_onset_decoding_refines_the_onset_between_frames():
    onsets, frames, times = _roll()
    frames[10:30, 0] = 0.9
    onsets[9:12, 0] = [0.6, 0.9, 0.6]     # symmetric peak: exactly at frame 10
    onsets[49:52, 1] = [0.2, 0.9, 0.8]    # skewed towards the next frame: later than frame 50
    frames[50:70, 1] = 0.9
    notes = notes_from_onsets(onsets, frames, times, np.array([60, 61, 62]), 0.5, 0.5)
    assert notes[0]["onset"] == pytest.approx(0.2)
    assert 1.0 < notes[1]["onset"] < 1.01


def test_decode_notes_uses_defaults_and_falls_back_to_frames_without_onset_head():
    onsets, frames, times = _roll()
    frames[10:40, 0] = 0.9
    frame_only = Transcription(times, np.array([60, 61, 62]), frames)
    assert len(decode_notes(frame_only)) == 1
    with_onsets = Transcription(times, np.array([60, 61, 62]), frames, onsets)
    assert decode_notes(with_onsets) == []  # frames but no onset: no note
    onsets[10, 0] = 0.4
    assert decode_notes(with_onsets) == []  # below the generic 0.5 ...
    assert len(decode_notes(with_onsets, defaults={"onset_threshold": 0.3})) == 1  # ... above a calibrated 0.3


def test_onset_decoding_bridges_short_dips_and_merges_double_peaks():
    onsets, frames, times = _roll()
    frames[10:50, 0] = 0.9
    frames[30:32, 0] = 0.1                # a 2-frame dip (vibrato): still one note
    onsets[10, 0], onsets[11, 0], onsets[12, 0] = 0.9, 0.5, 0.7  # double peak 2 frames apart: one onset
    frames[60:70, 1] = 0.9
    frames[70:75, 1] = 0.1                # a 5-frame gap ends the note ...
    frames[75:80, 1] = 0.9                # ... and what follows without an onset is no note
    onsets[60, 1] = 0.9
    notes = notes_from_onsets(onsets, frames, times, np.array([60, 61, 62]), 0.5, 0.5)
    assert [(n["pitch"], n["offset"]) for n in notes] == [(60, 0.99), (61, 1.39)]
    assert notes[0]["onset"] == pytest.approx(0.2, abs=0.01) and notes[1]["onset"] == pytest.approx(1.2)


def test_folded_weights_are_cached_and_refreshed_when_weights_change():
    torch.manual_seed(0)
    m = build_model("complex_note_transcriber", TINY).eval()
    x = torch.randn(1, window_samples(m)) * 0.1
    with torch.no_grad():
        first = m(x)
        torch.testing.assert_close(m(x), first)  # served from the cache
        other = build_model("complex_note_transcriber", TINY)
        m.load_state_dict(other.state_dict())      # new weights: the cache must not serve the old ones
        fresh = build_model("complex_note_transcriber", TINY).eval()
        fresh.load_state_dict(other.state_dict())
        torch.testing.assert_close(m(x), fresh(x))
        m.semitone[1].running_mean.add_(0.5)        # an in-place change of a BN statistic
        fresh.semitone[1].running_mean.add_(0.5)
        torch.testing.assert_close(m(x), fresh(x))


@pytest.mark.parametrize("cents", [-35, -10, 0, 20, 40])
def test_fine_pitch_output_reads_the_tuning_of_a_tone_off_its_key(cents):
    """A pure tone at MIDI 69 + cents/100: the ``bend`` output at key 69 reports the offset to within ~8 cents
    (the front end has 3 bins per semitone; the parabola interpolates between them), and the model's learned
    heads are unchanged by the extra output."""
    torch.manual_seed(0)
    cfg = {**TINY, "heads": ("frame", "onset", "velocity")}
    plain = build_model("complex_note_transcriber", cfg).eval()
    m = build_model("complex_note_transcriber", {**cfg, "fine_pitch": True}).eval()
    m.load_state_dict(plain.state_dict())
    assert m.heads == ("frame", "onset", "velocity", "bend")
    sr = m.sample_rate
    t = np.arange(sr * 2) / sr
    audio = 0.3 * np.sin(2 * np.pi * 440.0 * 2 ** (cents / 1200) * t).astype(np.float32)
    tr = transcribe(m, audio, sr)
    ref = transcribe(plain, audio, sr)
    np.testing.assert_allclose(tr.probabilities, ref.probabilities, atol=1e-6)
    assert tr.bends is not None and tr.velocities is not None
    measured = 100 * (np.median(tr.bends[20:80, 69 - 21]) - 0.5)
    assert abs(measured - cents) < 8, measured


def test_pitch_bends_reach_the_midi_file_on_separate_channels():
    import io

    import mido

    from models.transcription import attach_pitch_bends, notes_to_midi
    n = 100
    times = np.arange(n) * 0.02
    bends = np.full((n, 2), 0.5, np.float32)
    bends[10:60, 0] = 0.5 + 0.3 * np.sin(np.arange(50) / 3)  # vibrato of +-30 cents
    t = Transcription(times, np.array([60, 64]), np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32),
                      bends=bends)
    notes = attach_pitch_bends([{"onset": 0.2, "offset": 1.2, "pitch": 60, "confidence": 0.9},
                                {"onset": 0.4, "offset": 0.8, "pitch": 64, "confidence": 0.9}], t)
    assert len(notes[0]["pitch_bends"]) == 50 and max(notes[0]["pitch_bends"]) == 30
    mid = mido.MidiFile(file=io.BytesIO(notes_to_midi(notes)))  # notes that carry bends are written with them
    msgs = list(mid.tracks[0])
    ons = {m.note: m.channel for m in msgs if m.type == "note_on"}
    assert ons[60] != ons[64] and 9 not in ons.values()  # overlapping notes bend on channels of their own
    wheel = [m.pitch for m in msgs if m.type == "pitchwheel" and m.channel == ons[60]]
    assert max(wheel) == round(30 / 200 * 8192) and wheel[-1] == 0
    plain = mido.MidiFile(file=io.BytesIO(notes_to_midi(notes, pitch_bends=False)))
    assert not any(m.type == "pitchwheel" for m in plain.tracks[0])
