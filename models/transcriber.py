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
* ``musicnet_paper_real``: the same network with real layers on |FFT|. Kept for old runs: it is NOT the
  authors' real model (see docs/paper_fidelity.md).
* ``musicnet_{deep,shallow}_{complex,real}``: the four MusicNet models with the layer plans of the authors'
  code (ChihebTrabelsi/deep_complex_networks, musicnet/musicnet/models/): the deep complex model (16-128
  complex filters, kernel 6 / stride 2, 'same' padding, average pooling, no BN after the fifth conv), the
  deep real model (64-256 filters, kernel 7 / stride 3, 'valid' padding, max pooling) and the shallow
  models (one kernel-512 / stride-16 convolution on raw audio, pooling 4 / stride 2, a 2048-unit dense
  layer). Parameter counts are checked against counts derived from that code in tests/models/test_paper_models.py.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import register_architecture
from models.complex import (
    ComplexBatchNorm1d,
    ComplexBatchNorm2d,
    ComplexConv1d,
    ComplexConv2d,
    ComplexLinear,
    CReLU,
    complex_activation,
    fold_complex_bn,
)


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
                 dense: int = 2048, output_bias: float = -5.0, activation: str = "crelu") -> None:
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
            layers += [conv(c_in, c_out, k, s), bn(c_out), complex_activation(activation, c_out) if cx else nn.ReLU()]
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


# ----------------------------------------------------------------------------------------------------------------
# The authors' four MusicNet models (deep / shallow x complex / real)


def _keras_same_padding(k: int, s: int) -> int:
    """Symmetric padding that gives Keras 'same' output length L / s (L divisible by s). TF puts an odd
    extra sample on the right; here it is split, a shift of at most one sample."""
    return (k - s + 1) // 2


class AuthorsMusicNet(nn.Module):
    """One MusicNet window (``window`` samples at 11 kHz) -> 84 pitch logits (MIDI 21-104), one frame.

    depth "deep" / "shallow", complex_valued True / False select the layer plan of the authors' code:

    deep complex (get_deep_convnet, complex): FFT of the window (complex), ComplexConv1D 16 k6 s2, 32 k3 s2,
        64 k3, 64 k3 (each + complex BN + act + AvgPool 2), 128 k3 + act (no BN), 128 k3 + complex BN + act
        + AvgPool 2, all 'same' padding; Dense 2048 ReLU; Dense 84 (bias -5).
    deep real (get_deep_convnet, real): |FFT| of the window, Conv1D 64 k7 s3, 64 k3 s2, 128 k3, 128 k3 (each
        + BN + ReLU + MaxPool 2), 256 k3 + ReLU, 256 k3 + BN + ReLU + MaxPool 2, all 'valid'; same head.
    shallow complex / real (get_shallow_convnet): raw audio, one conv 32 complex / 64 real filters, k512 s16,
        'valid', act; AvgPool (complex) / MaxPool (real) 4 stride 2; dense 2048 (ComplexDense in the complex
        model) + act; 84 outputs (the real part of a ComplexDense in the complex model).

    ``input``: "fft" (complex spectrum / its modulus) or "raw" (the samples; complex: a zero imaginary part).
    ``fft_bins``: "full" = all 4096 FFT bins, as the authors' code feeds them (scipy.fft, negative frequencies
    included); "positive" = the 2048 non-redundant ones (the deep complex model then has the 8.8M parameters
    the paper reports instead of the code's 17.1M; see docs/paper_fidelity.md).
    ``activation`` (complex models): crelu (the code's 'relu' on [re | im]) | modrelu | zrelu.
    ``init``: "authors" (complex_independent for the deep complex convs, Keras 'complex' = Rayleigh for the
    shallow one, Glorot normal for real layers, zero biases) or "default" (this project's Glorot-Rayleigh /
    torch defaults).
    """
    depth = "deep"
    complex_valued = True

    def __init__(self, sample_rate: int = 11000, window: int = 4096, hop_length: int = 256, min_pitch: int = 21,
                 max_pitch: int = 104, input: str | None = None, fft_bins: str | None = None,
                 activation: str = "crelu", dense: int = 2048, output_bias: float = -5.0, init: str = "authors",
                 bn_eps: float | None = None, bn_momentum: float | None = None) -> None:
        super().__init__()
        if (window - hop_length) % 2:
            raise ValueError("window - hop_length must be even")
        self.sample_rate, self.hop_length, self.window = sample_rate, hop_length, window
        self.frames_per_window, self.context = 1, (window - hop_length) // 2
        self.pitches = list(range(min_pitch, max_pitch + 1))
        deep, cx = self.depth == "deep", self.complex_valued
        self.input = input or ("fft" if deep else "raw")
        if self.input not in ("fft", "raw"):
            raise ValueError(f"input must be 'fft' or 'raw', got {self.input!r}")
        # The paper's 8.8M for the deep complex model is the 2048-bin input; the code's 4096 bins give 17.1M.
        self.fft_bins = fft_bins or ("positive" if deep and cx else "full")
        if self.fft_bins not in ("full", "positive"):
            raise ValueError(f"fft_bins must be 'full' or 'positive', got {self.fft_bins!r}")
        self.length = window // 2 if (self.input == "fft" and self.fft_bins == "positive") else window
        self.activation_name, self.init = activation, init
        # Keras defaults: BatchNormalization eps 1e-3, momentum 0.99; ComplexBN eps 1e-4, momentum 0.9.
        eps = bn_eps if bn_eps is not None else (1e-4 if cx else 1e-3)
        mom = bn_momentum if bn_momentum is not None else (0.1 if cx else 0.01)
        authors_init = init == "authors"

        def act(c: int) -> nn.Module:
            return complex_activation(activation, c) if cx else nn.ReLU()

        def conv(i: int, o: int, k: int, s: int, pad: int, mode: str = "independent") -> nn.Module:
            if cx:
                return ComplexConv1d(i, o, k, stride=s, padding=pad, criterion="glorot",
                                     init_mode=mode if authors_init else "rayleigh")
            return nn.Conv1d(i, o, k, stride=s, padding=pad)

        bn = (lambda c: ComplexBatchNorm1d(c, eps=eps, momentum=mom)) if cx else \
            (lambda c: nn.BatchNorm1d(c, eps=eps, momentum=mom))
        layers: list[nn.Module] = []
        length, c_in = self.length, 1
        if deep:
            if cx:  # (filters, kernel, stride, BN, pool); 'same' padding, average pooling
                plan = [(16, 6, 2, True, True), (32, 3, 2, True, True), (64, 3, 1, True, True),
                        (64, 3, 1, True, True), (128, 3, 1, False, False), (128, 3, 1, True, True)]
            else:  # 'valid' padding, max pooling
                plan = [(64, 7, 3, True, True), (64, 3, 2, True, True), (128, 3, 1, True, True),
                        (128, 3, 1, True, True), (256, 3, 1, False, False), (256, 3, 1, True, True)]
            for c_out, k, s, use_bn, pool in plan:
                pad = _keras_same_padding(k, s) if cx else 0
                layers.append(conv(c_in, c_out, k, s, pad))
                length = (length + 2 * pad - k) // s + 1
                layers += [bn(c_out), act(c_out)] if use_bn else [act(c_out)]
                if pool:
                    layers.append(nn.AvgPool1d(2) if cx else nn.MaxPool1d(2))
                    length //= 2
                c_in = c_out
        else:
            c_out = 32 if cx else 64
            layers += [conv(1, c_out, 512, 16, 0, mode="rayleigh"), act(c_out),
                       nn.AvgPool1d(4, stride=2) if cx else nn.MaxPool1d(4, stride=2)]
            length = ((length - 512) // 16 + 1 - 4) // 2 + 1
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.feature_length = length
        width = (2 if cx else 1) * c_in * length
        if cx and not deep:  # ComplexDense(2048) + act, ComplexDense(84); the real part is the output
            self.dense = nn.Sequential(ComplexLinear(c_in * length, dense, criterion="he"), act(dense))
            self.out = ComplexLinear(dense, len(self.pitches), criterion="he")
            out_bias = self.out.bias
        else:
            self.dense = nn.Sequential(nn.Linear(width, dense), nn.ReLU())
            self.out = nn.Linear(dense, len(self.pitches))
            out_bias = self.out.bias
            if authors_init:
                for lin in (self.dense[0], self.out):
                    nn.init.xavier_normal_(lin.weight)
                    nn.init.zeros_(lin.bias)
        if authors_init and not cx:
            for m in self.features.modules():
                if isinstance(m, nn.Conv1d):
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            out_bias.zero_()
            out_bias[: len(self.pitches)].fill_(output_bias)

    def features_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, window) samples -> (B, channels, length): the tensor the first convolution sees."""
        x = x.float()
        if self.input == "raw":
            return torch.cat([x.unsqueeze(1), torch.zeros_like(x).unsqueeze(1)], 1) if self.complex_valued \
                else x.unsqueeze(1)
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.fft.fft(x, dim=-1)
        if self.fft_bins == "positive":
            spec = spec[:, : self.length]
        if self.complex_valued:
            return torch.stack([spec.real, spec.imag], 1)
        return spec.abs().unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off = (x.shape[-1] - self.window) // 2  # the window centred on the frame
        h = self.features(self.features_input(x[:, off: off + self.window]))
        b, ch, n = h.shape
        h = h.reshape(b, 2, ch // 2 * n) if self.complex_valued else h  # [all real | all imag]
        out = self.out(self.dense(h.flatten(1)))
        return out[:, : len(self.pitches)].unsqueeze(1)  # ComplexDense output: its real part


@register_architecture("musicnet_deep_complex")
class DeepComplexMusicNet(AuthorsMusicNet):
    depth, complex_valued = "deep", True


@register_architecture("musicnet_deep_real")
class DeepRealMusicNet(AuthorsMusicNet):
    depth, complex_valued = "deep", False


@register_architecture("musicnet_shallow_complex")
class ShallowComplexMusicNet(AuthorsMusicNet):
    depth, complex_valued = "shallow", True


@register_architecture("musicnet_shallow_real")
class ShallowRealMusicNet(AuthorsMusicNet):
    depth, complex_valued = "shallow", False


AUTHORS_MUSICNET_ARCHS = ("musicnet_deep_complex", "musicnet_deep_real", "musicnet_shallow_complex",
                          "musicnet_shallow_real")

__all__ = ["AUTHORS_MUSICNET_ARCHS", "AuthorsMusicNet", "ComplexFrameTranscriber", "DeepComplexMusicNet",
           "DeepRealMusicNet", "PaperComplexMusicNet", "PaperRealMusicNet", "ShallowComplexMusicNet",
           "ShallowRealMusicNet", "constant_q_kernels", "midi_to_hz"]
