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
