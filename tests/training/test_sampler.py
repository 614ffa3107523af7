"""Numpy sample player on the fetched samples (python -m training.data.sampler fetch --dest DIR)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from training.data import sampler

DEST = os.environ.get("DCN_SAMPLES_DIR", "/work/data/samples")
SR = 22050


@pytest.fixture(scope="module")
def dest():
    if not (Path(DEST) / "packages").is_dir() or not sampler.font_paths(DEST):
        pytest.skip(f"no samples at {DEST} (python -m training.data.sampler fetch --dest {DEST})")
    return DEST


def _presets(dest, program):
    ps = sampler.load_presets(dest, program)
    if not ps:
        pytest.skip(f"no preset for program {program} under {dest}")
    return ps


@pytest.mark.parametrize("program,pitches", [(40, (62, 76)), (71, (55, 70)), (70, (41, 55)),
                                             (65, (56, 68)), (0, (48, 72))])
def test_held_note_pitch_matches(dest, program, pitches):
    ps = _presets(dest, program)
    if program == 0:
        assert any(p.bank == "Salamander" for p in ps)
    for p in ps:
        for k in pitches:
            err = sampler.pitch_error(p, k, SR)
            assert abs(err) < 0.5, (p, k, err)


def test_render_finite_loud_and_sustained(dest):
    rng = np.random.default_rng(0)
    for program in (42, 73, 0):
        p = _presets(dest, program)[0]
        notes = [(0.1, 0.6, 60, 80), (0.6, 3.6, 67, 100), (1.0, 1.4, 64, 40)]
        y, ends = sampler.render_notes(notes, p, SR, rng)
        assert y.dtype == np.float32 and np.isfinite(y).all()
        assert np.abs(y).max() > 1e-3, p
        assert len(ends) == 3 and all(e >= n[1] for e, n in zip(ends, notes))
        if program != 0:  # looped sustain: the 3 s note is still sounding at its end
            alone, _ = sampler.render_notes([(0.0, 3.0, 67, 100)], p, SR, rng)
            hop = SR // 100
            rms = np.sqrt(np.mean(alone[: len(alone) // hop * hop].reshape(-1, hop) ** 2, axis=1))
            assert rms[290] > rms.max() * 10 ** (-30 / 20), p
            _, (end,) = sampler.render_notes([(0.0, 3.0, 67, 100)], p, SR, None)
            assert 3.0 <= end < 6.0


def test_vibrato_and_velocity(dest):
    p = _presets(dest, 40)[0]
    loud, _ = sampler.render_notes([(0, 1.0, 69, 120)], p, SR, None)
    soft, _ = sampler.render_notes([(0, 1.0, 69, 30)], p, SR, None)
    assert np.abs(soft).max() < np.abs(loud).max()
    a, _ = sampler.render_notes([(0, 2.0, 69, 90)], p, SR, np.random.default_rng(1), vibrato=True)
    b, _ = sampler.render_notes([(0, 2.0, 69, 90)], p, SR, np.random.default_rng(1), vibrato=False)
    assert np.isfinite(a).all() and not np.allclose(a[: len(b)], b[: len(a)])
    assert abs(sampler.estimate_f0(a[int(0.5 * SR): int(1.9 * SR)], SR) / 440.0 - 1) < 0.03


@pytest.mark.parametrize("program,pitches", [(40, (62, 76)), (71, (55, 70)), (70, (41, 55)), (65, (56, 68)),
                                             (42, (40, 55))])
def test_recorded_instruments_play_the_named_key_and_start_when_labelled(dest, program, pitches):
    """The tonejs recordings: each kept sample sounds its key (YIN-checked), and a note is audible (within
    10 dB of its early level) 40 ms after its start although many recordings begin with a slow swell."""
    ps = sampler.recorded_presets(dest, program)
    if not ps:
        pytest.skip(f"no recorded instrument for program {program} under {dest}")
    p = ps[0]
    assert p.bank == "tonejs" and p.program == program
    assert p not in sampler.load_presets(dest, program)  # old renders draw from the same presets as before
    assert any(q.bank == "tonejs" for q in sampler.load_presets(dest, program, recorded=True))
    held = [n for n, (_, progs) in sampler.REAL_INSTRUMENTS.items() if program in progs]
    assert sampler.recorded_presets(dest, program, exclude=tuple(held)) == []  # render --hold-out
    for k in pitches:
        assert abs(sampler.pitch_error(p, k, SR)) < 0.5
        y, _ = sampler.render_notes([(0.0, 0.5, k, 100)], p, SR, None, vibrato=False, brightness=False)
        hop = SR // 200
        rms = np.sqrt(np.square(y[: len(y) // hop * hop]).reshape(-1, hop).mean(axis=1))
        assert np.argmax(rms >= 0.3 * rms[:100].max()) * hop / SR < 0.04


def test_sample_names_and_attack_start():
    assert sampler._sample_key("A4.mp3") == 69 and sampler._sample_key("As3.mp3") == 58
    assert sampler._sample_key("Cs1.mp3") == 25 and sampler._sample_key("F2 v2.mp3") is None
    sr = 8000
    t = np.arange(2 * sr) / sr
    swell = np.sin(2 * np.pi * 220 * t) * np.minimum(1.0, t / 0.4)  # 400 ms linear swell, then steady
    start = sampler._attack_start(swell, sr)
    assert abs(start / sr - (0.3 * 0.4 - 0.015)) < 0.015  # 15 ms before it reaches 30 % of its level
    steady = np.sin(2 * np.pi * 220 * t)
    assert sampler._attack_start(steady, sr) == 0


def test_legato_notes_stop_under_the_next_note_and_rests_keep_their_release():
    """A wind note joined to the next one stops within ~20 ms with ``legato``; before a rest it rings as before."""
    sr = 8000
    t = np.arange(4 * sr) / sr
    zone = sampler.Zone(lokey=0, hikey=127, lovel=1, hivel=127, data=np.sin(2 * np.pi * 440 * t).astype(np.float32),
                        sr=sr, root_key=69.0, tune=0.0)
    clarinet = sampler.Preset(name="sine", bank="test", program=71, zones=[zone])
    notes = [(0.0, 0.5, 69, 100), (0.5, 1.0, 93, 100), (1.6, 2.0, 69, 100)]  # joined, then after a rest

    def a4_after(y: np.ndarray, at: float) -> float:  # level of 440 Hz 10-30 ms after ``at``, relative to before
        def level(a: float, b: float) -> float:
            seg = y[int(a * sr): int(b * sr)]
            return abs(np.dot(seg, np.exp(-2j * np.pi * 440 * np.arange(len(seg)) / sr))) / len(seg)
        return level(at + 0.01, at + 0.03) / level(at - 0.1, at)

    joined, _ = sampler.render_notes(notes, clarinet, sr, np.random.default_rng(0), vibrato=False, legato=True)
    ringing, _ = sampler.render_notes(notes, clarinet, sr, np.random.default_rng(0), vibrato=False)
    assert a4_after(joined, 0.5) < 0.3 * a4_after(ringing, 0.5)
    assert a4_after(joined, 2.0) == pytest.approx(a4_after(ringing, 2.0), rel=1e-3)  # a rest follows: unchanged


def test_slurred_notes_enter_without_their_attack_and_change_nothing_else():
    """With ``slur=1`` a joined wind note is the change of pitch alone: no attack burst at its start, its pitch
    sounding within 40 ms; the first note keeps its attack and the rest of the render is the same draw."""
    sr = 8000
    t = np.arange(4 * sr) / sr
    burst = np.random.default_rng(1).standard_normal(len(t)) * (t < 0.08)  # a breathy 80 ms attack
    data = (np.sin(2 * np.pi * 440 * t) * 0.5 + burst).astype(np.float32)
    zone = sampler.Zone(lokey=0, hikey=127, lovel=1, hivel=127, data=data, sr=sr, root_key=69.0, tune=0.0)
    clarinet = sampler.Preset(name="sine+burst", bank="test", program=71, zones=[zone])
    notes = [(0.0, 0.5, 69, 100), (0.5, 1.0, 74, 100), (1.6, 2.0, 69, 100)]

    def render(slur: float) -> np.ndarray:
        y, _ = sampler.render_notes(notes, clarinet, sr, np.random.default_rng(0), vibrato=False, brightness=False,
                                    legato=True, slur=slur)
        return y

    def noise(y: np.ndarray, at: float) -> float:  # energy away from the two notes' pitches, 0-60 ms after ``at``
        spec = np.abs(np.fft.rfft(y[int(at * sr): int((at + 0.06) * sr)]))
        f = np.fft.rfftfreq(int(0.06 * sr), 1 / sr)
        return float(np.sum(spec[(f > 1500)] ** 2))

    attacked, slurred = render(0.0), render(1.0)
    assert noise(slurred, 0.5) < 0.1 * noise(attacked, 0.5)
    assert noise(slurred, 0.0) == pytest.approx(noise(attacked, 0.0))          # the first note keeps its attack
    assert noise(slurred, 1.6) == pytest.approx(noise(attacked, 1.6))          # after a rest: re-attacked
    np.testing.assert_array_equal(slurred[: int(0.45 * sr)], attacked[: int(0.45 * sr)])
    seg = slurred[int(0.54 * sr): int(0.7 * sr)]
    f = np.fft.rfftfreq(len(seg), 1 / sr)
    assert abs(f[np.argmax(np.abs(np.fft.rfft(seg)))] - 440 * 2 ** (5 / 12)) < 15  # D5 sounds at once


def test_expression_changes_the_level_of_held_bowed_and_wind_notes_only():
    """``expression``: a held violin note swells or fades and trembles (and some long ones change bow) at an
    unchanged pitch; a piano note is untouched; after the note end the gain holds where the note ended."""
    sr = 8000
    t = np.arange(4 * sr) / sr
    zone = sampler.Zone(lokey=0, hikey=127, lovel=1, hivel=127, data=np.sin(2 * np.pi * 440 * t).astype(np.float32),
                        sr=sr, root_key=69.0, tune=0.0, looped=True, loop_start=0, loop_end=4 * sr)
    notes = [(0.0, 2.5, 69, 100)]

    def level_db(program: int, expression: bool) -> np.ndarray:
        preset = sampler.Preset(name="sine", bank="test", program=program, zones=[zone])
        y, _ = sampler.render_notes(notes, preset, sr, np.random.default_rng(0), vibrato=False, brightness=False,
                                    expression=expression)
        hop = sr // 100
        return 10 * np.log10(np.square(y[: 250 * hop]).reshape(250, hop).mean(axis=1) + 1e-12)

    change = level_db(40, True) - level_db(40, False)
    assert np.ptp(change[30:220]) > 1.0 and np.abs(change).max() < 20
    np.testing.assert_allclose(level_db(0, True), level_db(0, False))  # piano: no expression
    gains = [sampler.note_expression(3 * sr, sr, 2.0, True, 5.5, np.random.default_rng(s)) for s in range(20)]
    assert all(np.all(g[2 * sr + 1:] == g[2 * sr + 1]) for g in gains)
    dips = [20 * np.log10(g[: 2 * sr].max() / g[: 2 * sr].min()) for g in gains]
    assert max(dips) > 10  # some bow changes
