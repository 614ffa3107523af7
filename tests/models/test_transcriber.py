"""Transcriber architectures: the models/transcription.py contract, fused inference, odd inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.transcriber import ComplexFrameTranscriber, PaperComplexMusicNet, PaperRealMusicNet, constant_q_kernels
from models.transcription import cut_windows, transcribe, window_samples

SMALL = dict(frames_per_window=24, channels=4, hidden=16)


@pytest.mark.parametrize("cls,kw", [(ComplexFrameTranscriber, SMALL), (PaperComplexMusicNet, {}),
                                    (PaperRealMusicNet, dict(filters=(4, 4, 8, 8, 8, 8), dense=32))])
def test_contract_shapes(cls, kw):
    torch.manual_seed(0)
    m = cls(**kw).eval()
    ws = window_samples(m)
    assert ws == m.frames_per_window * m.hop_length + 2 * m.context
    with torch.no_grad():
        y = m(torch.randn(3, ws) * 0.1)
    assert y.shape == (3, m.frames_per_window, len(m.pitches))
    assert torch.isfinite(y).all()


def test_fast_model_spec():
    m = ComplexFrameTranscriber()
    assert m.sample_rate / m.hop_length >= 40
    assert min(m.pitches) <= 21 and max(m.pitches) >= 108
    assert PaperComplexMusicNet().pitches == list(range(21, 105))
    assert window_samples(PaperComplexMusicNet()) == 4096 and PaperComplexMusicNet().sample_rate == 11025


def test_fused_batchnorm_matches_training_graph():
    torch.manual_seed(0)
    m = ComplexFrameTranscriber(**SMALL)
    x = torch.randn(4, window_samples(m)) * 0.1
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(x)  # non-trivial running statistics
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.eval()
    with torch.no_grad():
        fused = m(x)
        m.body.eval()
        from models.transcriber import compress
        h = m.body(compress(m.frontend(x), m.compression_gain))
        b, ch, s, t = h.shape
        h = h.view(b, 2, ch // 2 * s, t).permute(0, 3, 1, 2).reshape(b, t, -1)
        plain = m.out(m.act(m.project(h)))
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


def test_frame_k_is_centred_at_k_hop():
    """A click at sample k*hop must light up frame k's front-end energy most (across windows too)."""
    m = ComplexFrameTranscriber(**SMALL).eval()
    n = m.hop_length * 60
    for k in (0, 5, 23, 24, 41):
        x = np.zeros(n, dtype=np.float32)
        x[k * m.hop_length] = 1.0
        windows, n_frames = cut_windows(m, x)
        with torch.no_grad():
            z = m.frontend(windows)  # (W, 2, bins, F + 2R)
        energy = (z[:, :, -40:] ** 2).sum((1, 2))[:, m.receptive: m.receptive + m.frames_per_window].reshape(-1)
        assert int(energy[:n_frames].argmax()) == k


def test_constant_q_kernels_peak_at_their_pitch():
    k = constant_q_kernels(16000, 21.0, 264, 3, 2048, 17.0)
    t = np.arange(2048) / 16000
    for b in (0, 100, 200):
        f = 440 * 2 ** ((21 + b / 3 - 69) / 12)
        x = np.sin(2 * np.pi * f * t)
        resp = np.hypot(x @ k[:, :264], x @ k[:, 264:])
        assert abs(int(resp.argmax()) - b) <= 1


@pytest.mark.parametrize("n,sr,channels", [(1, 16000, 1), (12345, 16000, 1), (30001, 44100, 2), (22050, 22050, 2),
                                           (7, 8000, 1)])
def test_transcribe_odd_lengths_rates_stereo(n, sr, channels):
    torch.manual_seed(0)
    m = ComplexFrameTranscriber(**SMALL).eval()
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((n, channels)).astype(np.float32) * 0.1
    if channels == 1:
        audio = audio[:, 0]
    tr = transcribe(m, audio, sr, batch_size=2)
    expected_frames = round(n * 16000 / sr) // m.hop_length + 1
    assert abs(len(tr.times) - expected_frames) <= 1
    assert tr.probabilities.shape == (len(tr.times), 88)
    assert np.all((tr.probabilities >= 0) & (tr.probabilities <= 1))
    np.testing.assert_allclose(tr.times[:2], [0, m.hop_length / 16000][: len(tr.times)])


def test_transcribe_silence_is_finite_and_batch_invariant():
    m = ComplexFrameTranscriber(**SMALL).eval()
    silent = transcribe(m, np.zeros(16000 * 3, dtype=np.float32), 16000)
    assert np.isfinite(silent.probabilities).all()
    x = np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32) * 0.1
    a = transcribe(m, x, 16000, batch_size=1).probabilities
    b = transcribe(m, x, 16000, batch_size=16).probabilities
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("arch,cls", [("complex_frame_transcriber", ComplexFrameTranscriber),
                                      ("musicnet_paper_real", PaperRealMusicNet)])
def test_checkpoint_round_trip(tmp_path, arch, cls):
    cfg = SMALL if cls is ComplexFrameTranscriber else dict(filters=(4, 4, 8, 8, 8, 8), dense=32)
    m = cls(**cfg).eval()
    p = save_checkpoint(tmp_path / "m.pt", m, arch, cfg, {"task": "transcription"})
    m2, meta = load_checkpoint(p)
    x = torch.randn(2, window_samples(m)) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x))
    assert meta["arch"] == arch
