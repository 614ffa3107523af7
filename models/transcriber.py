"""Complex-valued music transcribers: audio window -> per-frame logits for MIDI pitches.

Three architectures, all fulfilling the contract of models/transcription.py (sample_rate, hop_length,
pitches, frames_per_window, context; forward((B, window_samples)) -> (B, frames_per_window, pitches)):

* ``complex_frame_transcriber`` (shipped): a complex constant-Q front end computed once per window
  as one matrix product over strided frames, phase-preserving log compression, complex 2-D
  convolutions over (log-frequency, time) with complex BN + CReLU, a complex frequency-to-pitch
  projection and a real sigmoid read-out. One forward pass yields ``frames_per_window`` frames, so
  overlapping analysis windows are never recomputed from scratch.
* ``musicnet_paper_complex``: the deep complex MusicNet model of Trabelsi et al. (2018), section 4.2:
  4096-sample window at 11.025 kHz, complex FFT input, six complex 1-D convolutions (16, 32, 64, 64,
  128, 128 filters) with complex BN, CReLU and pooling, a dense layer and 84 sigmoid outputs
  (MIDI 21-104); one frame per window, as in the paper.
* ``musicnet_paper_real``: the same network with real layers on |FFT| (the paper's real baseline).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import register_architecture
from models.complex import (ComplexBatchNorm1d, ComplexBatchNorm2d, ComplexConv1d, ComplexConv2d, ComplexLinear,
                            CReLU, fold_complex_bn)


def midi_to_hz(m: float | np.ndarray) -> float | np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69) / 12)


def constant_q_kernels(sample_rate: int, fmin_midi: float, n_bins: int, bins_per_semitone: int,
                       max_length: int, q: float) -> np.ndarray:
    """(max_length, 2 * n_bins) [real | imag] Hann-windowed complex exponentials, centred in the frame.

    Bin b sits at MIDI fmin_midi + b / bins_per_semitone. Filter length Q * sr / f (a constant-Q
    bandwidth of about a semitone), capped at ``max_length``: low notes are then resolved through
    their harmonics, as in a variable-Q transform. Each filter has unit gain at its centre frequency.
    """
    kernels = np.zeros((max_length, 2 * n_bins), dtype=np.float64)
    n = np.arange(max_length) - max_length / 2
    for b in range(n_bins):
        f = float(midi_to_hz(fmin_midi + b / bins_per_semitone))
        length = int(min(max_length, round(q * sample_rate / f)))
        win = np.zeros(max_length)
        lo = (max_length - length) // 2
        win[lo: lo + length] = np.hanning(length)
        z = win * np.exp(-2j * np.pi * f * n / sample_rate) / win.sum()
        kernels[:, b], kernels[:, n_bins + b] = z.real, z.imag
    return kernels.astype(np.float32)


def compress(z: torch.Tensor, gain: float, dim: int = 1) -> torch.Tensor:
    """Phase-preserving log compression of a [real | imag] tensor: z * log1p(g|z|) / |z|.

    Music spans 60+ dB; this squashes the modulus like a log spectrogram while keeping the phase,
    so the body stays complex-valued.
    """
    re, im = z.chunk(2, dim=dim)
    mod = torch.sqrt(re * re + im * im + 1e-12)
    scale = torch.log1p(gain * mod) / mod
    return torch.cat([re * scale, im * scale], dim=dim)


@register_architecture("complex_frame_transcriber")
class ComplexFrameTranscriber(nn.Module):
    """Fast frame-level transcriber: a whole block of frames per forward pass."""

    def __init__(self, sample_rate: int = 16000, hop_length: int = 320, frames_per_window: int = 200,
                 min_pitch: int = 21, max_pitch: int = 108, bins_per_semitone: int = 3, n_bins: int = 288,
                 n_fft: int = 2048, q: float = 17.0, channels: int = 16, hidden: int = 128,
                 compression_gain: float = 1000.0, output_bias: float = -4.0) -> None:
        super().__init__()
        self.sample_rate, self.hop_length, self.frames_per_window = sample_rate, hop_length, frames_per_window
        self.pitches = list(range(min_pitch, max_pitch + 1))
        self.n_bins, self.n_fft, self.bps, self.compression_gain = n_bins, n_fft, bins_per_semitone, compression_gain
        self.receptive = 3  # frames each side consumed by the three unpadded time convolutions below
        self.context = n_fft // 2 + self.receptive * hop_length
        fmin = min_pitch - (bins_per_semitone // 2) / bins_per_semitone  # pitch p's centre bin is bps*(p-min)+bps//2
        self.register_buffer("kernels", torch.from_numpy(
            constant_q_kernels(sample_rate, fmin, n_bins, bins_per_semitone, n_fft, q)), persistent=False)
        c = channels
        # (log-frequency, time) body. The first layer's stride bps maps thirds of semitones onto
        # semitones; the dilated third layer sees one octave up and down (harmonics).
        self.body = nn.Sequential(
            ComplexConv2d(1, c, (3 * bins_per_semitone, 3), stride=(bins_per_semitone, 1), padding=(bins_per_semitone, 0)),
            ComplexBatchNorm2d(c), CReLU(),
            ComplexConv2d(c, c, (3, 3), padding=(1, 0)), ComplexBatchNorm2d(c), CReLU(),
            ComplexConv2d(c, c, (3, 3), padding=(12, 0), dilation=(12, 1)), ComplexBatchNorm2d(c), CReLU(),
        )
        self.n_semitones = (n_bins + 2 * bins_per_semitone - 3 * bins_per_semitone) // bins_per_semitone + 1
        # Frequency -> pitch: every semitone band of every channel feeds every pitch (harmonic patterns).
        self.project = ComplexLinear(c * self.n_semitones, hidden)
        self.act = CReLU()
        self.out = nn.Linear(2 * hidden, len(self.pitches))
        nn.init.constant_(self.out.bias, output_bias)

    def frontend(self, x: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 2, n_bins, T) complex constant-Q coefficients, [real | imag] on dim 1."""
        n_frames = self.frames_per_window + 2 * self.receptive
        start = self.context - self.n_fft // 2 - self.receptive * self.hop_length  # = 0 by construction
        frames = x[:, start:].float().unfold(1, self.n_fft, self.hop_length)[:, :n_frames]  # (B, T, n_fft)
        with torch.autocast(x.device.type, enabled=False):  # fixed analysis stays fp32 under bf16 autocast
            spec = frames @ self.kernels  # (B, T, 2*n_bins): one GEMM instead of a long strided convolution
        b, t, _ = spec.shape
        return spec.view(b, t, 2, self.n_bins).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.frontend(x)
        h = compress(z, self.compression_gain)
        if self.training:
            h = self.body(h)  # (B, 2c, S, F)
        else:
            for i in range(0, len(self.body), 3):
                conv, bn = self.body[i], self.body[i + 1]
                w, b = fold_complex_bn(conv, bn)
                h = F.relu(F.conv2d(h, w, b, conv.stride, conv.padding, conv.dilation))
        b, ch, s, t = h.shape
        h = h.view(b, 2, ch // 2 * s, t).permute(0, 3, 1, 2).reshape(b, t, 2 * (ch // 2) * s)  # [re | im] last
        return self.out(self.act(self.project(h)))


def _fft_input(x: torch.Tensor, n: int, complex_input: bool) -> torch.Tensor:
    spec = torch.fft.rfft(x, dim=-1)[:, :n]  # positive frequencies; the negative half is redundant
    if complex_input:
        return torch.stack([spec.real, spec.imag], 1)  # (B, 2, n): one complex channel
    return spec.abs().unsqueeze(1)


class _PaperMusicNet(nn.Module):
    """Shared by the complex and real paper models: only the layer types and the input differ."""
    complex_valued = True

    def __init__(self, sample_rate: int = 11025, window: int = 4096, hop_length: int = 256,
                 min_pitch: int = 21, max_pitch: int = 104, filters: tuple[int, ...] = (16, 32, 64, 64, 128, 128),
                 dense: int = 2048, output_bias: float = -5.0) -> None:
        super().__init__()
        if (window - hop_length) % 2:
            raise ValueError("window - hop_length must be even")
        self.sample_rate, self.hop_length, self.window = sample_rate, hop_length, window
        self.frames_per_window = 1
        self.context = (window - hop_length) // 2
        self.pitches = list(range(min_pitch, max_pitch + 1))
        self.n_freq = window // 2
        cx = self.complex_valued
        conv = (lambda i, o, k, s: ComplexConv1d(i, o, k, stride=s, padding=k // 2)) if cx else \
            (lambda i, o, k, s: nn.Conv1d(i, o, k, stride=s, padding=k // 2))
        bn = ComplexBatchNorm1d if cx else nn.BatchNorm1d
        # Layer plan of the paper's deep model: kernel 6 / stride 2 first, then kernel 3; average
        # pooling by 2 after all but the fifth convolution.
        plan = [(6, 2, True), (3, 2, True), (3, 1, True), (3, 1, True), (3, 1, False), (3, 1, True)]
        layers, c_in, length = [], 1, self.n_freq
        for c_out, (k, s, pool) in zip(filters, plan):
            layers += [conv(c_in, c_out, k, s), bn(c_out), CReLU() if cx else nn.ReLU()]
            length = (length + 2 * (k // 2) - k) // s + 1
            if pool:
                layers.append(nn.AvgPool1d(2))
                length //= 2
            c_in = c_out
        self.features = nn.Sequential(*layers)
        width = (2 if cx else 1) * c_in * length
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(width, dense), nn.ReLU())
        self.out = nn.Linear(dense, len(self.pitches))
        nn.init.constant_(self.out.bias, output_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The model's window is `window` samples centred on the frame (x may hold hop-length extra).
        off = (x.shape[-1] - self.window) // 2
        h = self.features(_fft_input(x[:, off: off + self.window], self.n_freq, self.complex_valued))
        if self.complex_valued:  # flatten as [all real | all imag] like the complex layout elsewhere
            b, ch, n = h.shape
            h = h.view(b, 2, ch // 2 * n)
        return self.out(self.dense(h)).unsqueeze(1)


@register_architecture("musicnet_paper_complex")
class PaperComplexMusicNet(_PaperMusicNet):
    complex_valued = True


@register_architecture("musicnet_paper_real")
class PaperRealMusicNet(_PaperMusicNet):
    complex_valued = False


__all__ = ["ComplexFrameTranscriber", "PaperComplexMusicNet", "PaperRealMusicNet", "constant_q_kernels",
           "midi_to_hz"]
