"""Second-generation complex transcriber: notes, not just frames.

``complex_note_transcriber`` reads the same complex constant-Q transform as the frame transcriber
(models/transcriber.py) and adds what note-level transcription needs:

* **Harmonic stacking.** After one complex convolution maps thirds of semitones onto semitones, the
  feature map is stacked with copies of itself shifted by the harmonic intervals of the note under
  test: 1/4, 1/3, 1/2 (is there a fundamental below that explains me as its 2nd, 3rd or 4th
  harmonic?) and 1..7 (do my own overtones sound?). A 1x1 complex convolution then weighs the evidence,
  so a harmonic of a sounding note is told apart from a note, the failure of frame-only models on
  solo bassoon and saxophone (Basic Pitch stacks harmonics the same way, on magnitudes).
* **Pitch equivariance.** Every layer after the front end is a convolution along pitch, so all 88 keys
  share their weights: keys that are rare in training (MIDI 21-30, 97-108) are read exactly like the
  rest, plus a learned per-key bias.
* **Heads**: ``frame`` (the pitch sounds) and ``onset`` (a note of this pitch starts here). Notes are
  decoded from onsets + frames (models.transcription.notes_from_onsets), so a sustained harmonic or a
  reverb tail never starts a note, and repeated notes are split at their onsets. Optionally ``velocity``
  (v3): how hard a note starting at this frame was played, velocity / 127, trained only where notes start
  (as Onsets and Frames does); read at each decoded note's onset. With ``fine_pitch`` a fourth output,
  ``bend``, that nothing learns: where between its neighbours each key's spectral peak lies, read off the
  complex front end at a third of a semitone per bin (parabolic interpolation of the log power), as
  semitones + 0.5 in [0, 1]; the pitch bends of vibrato and glides written into MIDI. With
  ``level_velocity`` (v4 since its velocity fit) a ``velocity`` output that nothing learns either: the level of each key's
  first four harmonics at its attack, mapped to velocity / 127 by a logistic curve fitted on renders whose
  velocities are known (training/velocity.py). A learned velocity head (v3) did not learn.
* **Calibration.** An affine map of each head's logits, fitted after training on a realistic
  validation split (``training.musicnet calibrate``), so that probabilities mean what they say and
  the decoding thresholds stored with the model (``decoding``) are the best-F1 ones.

Contract of models/transcription.py: forward((B, window_samples)) -> (B, frames, pitches, 2) logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import register_architecture
from models.complex import ComplexBatchNorm2d, ComplexConv2d, CReLU, fold_complex_bn
from models.transcriber import compress, constant_q_kernels

HARMONICS = (0.25, 1 / 3, 0.5, 1, 2, 3, 4, 5, 6, 7)


def harmonic_shifts(harmonics: tuple[float, ...]) -> list[int]:
    """Semitone offsets of the harmonics (equal-tempered rounding): 1/2 -> -12, 3 -> +19, 5 -> +28."""
    import math
    return [round(12 * math.log2(h)) for h in harmonics]


def stack_harmonics(h: torch.Tensor, shifts: list[int], n_out: int) -> torch.Tensor:
    """(B, 2C, S, T) [re | im] semitone features -> (B, 2C*len(shifts), n_out, T): for output semitone s,
    the copy for shift k holds semitone s + shifts[k] (zero outside the map). One gather, no per-shift
    copies; the channel order is (part, channel, shift), so the [all re | all im] layout is kept."""
    b, c2, n_in, t = h.shape
    lo = max(0, -min(shifts))
    hi = max(0, max(shifts) + n_out - n_in)
    padded = F.pad(h, (0, 0, lo, hi))
    idx = torch.tensor([lo + s + i for s in shifts for i in range(n_out)], device=h.device)
    return padded.index_select(2, idx).view(b, c2 * len(shifts), n_out, t)


@register_architecture("complex_note_transcriber")
class ComplexNoteTranscriber(nn.Module):
    """Complex CQT -> semitone conv -> harmonic stack -> complex convs along (pitch, time) -> frame/onset heads."""

    heads: tuple[str, ...] = ("frame", "onset")

    def __init__(self, sample_rate: int = 16000, hop_length: int = 320, frames_per_window: int = 200,
                 min_pitch: int = 21, max_pitch: int = 108, top_pitch: int = 120, bins_per_semitone: int = 3,
                 n_fft: int = 2048, q: float = 17.0, channels: int = 16, harmonics: tuple[float, ...] = HARMONICS,
                 hidden: int = 32, compression_gain: float = 1000.0,
                 output_bias: tuple[float, ...] = (-3.0, -5.0, 0.0), decoding: dict | None = None,
                 heads: tuple[str, ...] = ("frame", "onset"), fine_pitch: bool = False,
                 level_velocity: tuple[float, float] | None = None) -> None:
        super().__init__()
        if tuple(heads[:2]) != ("frame", "onset") or not set(heads) <= {"frame", "onset", "velocity"}:
            raise ValueError(f"heads must be ('frame', 'onset') optionally followed by 'velocity', got {heads}")
        self.learned_heads = tuple(heads)
        self.fine_pitch = fine_pitch
        self.heads = self.learned_heads + (("bend",) if fine_pitch else ())
        # (slope, level): velocity / 127 = sigmoid(slope * (dB - level)) of the note's harmonics at its attack
        self.level_velocity = None if level_velocity is None else (float(level_velocity[0]), float(level_velocity[1]))
        if self.level_velocity is not None:
            if "velocity" in self.learned_heads:
                raise ValueError("level_velocity replaces a learned velocity head; a model has one or the other")
            self.heads += ("velocity",)
        self.sample_rate, self.hop_length, self.frames_per_window = sample_rate, hop_length, frames_per_window
        self.pitches = list(range(min_pitch, max_pitch + 1))
        self.decoding = dict(decoding or {})
        self.n_fft, self.bps, self.compression_gain = n_fft, bins_per_semitone, compression_gain
        self.n_semitones = top_pitch - min_pitch + 1          # analysed range: overtones up to ``top_pitch``
        self.n_bins = self.n_semitones * bins_per_semitone
        self.shifts = harmonic_shifts(tuple(harmonics))
        # Frames each side consumed by the unpadded time convolutions: 1 (semitone conv) + 1 (3x3) + 2 (1x5).
        self.receptive = 4
        self.context = n_fft // 2 + self.receptive * hop_length
        fmin = min_pitch - (bins_per_semitone // 2) / bins_per_semitone  # pitch p's centre bin is bps*(p-min)+bps//2
        self.register_buffer("kernels", torch.from_numpy(
            constant_q_kernels(sample_rate, fmin, self.n_bins, bins_per_semitone, n_fft, q)), persistent=False)
        c, b = channels, bins_per_semitone
        self.semitone = nn.Sequential(ComplexConv2d(1, c, (3 * b, 3), stride=(b, 1), padding=(b, 0)),
                                      ComplexBatchNorm2d(c), CReLU())
        self.body = nn.Sequential(
            ComplexConv2d(c * len(self.shifts), c, 1), ComplexBatchNorm2d(c), CReLU(),   # weigh the harmonics
            ComplexConv2d(c, c, (3, 3), padding=(1, 0)), ComplexBatchNorm2d(c), CReLU(),  # neighbours, +-1 frame
            ComplexConv2d(c, c, (1, 5), padding=(0, 0)), ComplexBatchNorm2d(c), CReLU(),  # +-2 frames
        )
        n_heads = len(self.learned_heads)
        self.head = nn.Sequential(nn.Conv2d(2 * c, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, n_heads, (1, 3), padding=(0, 1)))
        self.key_bias = nn.Parameter(torch.zeros(n_heads, len(self.pitches), 1))
        with torch.no_grad():
            self.head[-1].bias.copy_(torch.tensor(output_bias[:n_heads], dtype=torch.float32))
        # Logit calibration (scale, shift) per head; identity until ``training.musicnet calibrate`` fits it
        # (for frame and onset: velocity is a regression, never calibrated).
        self.register_buffer("calibration", torch.tensor([[1.0, 0.0]] * n_heads))

    def frontend(self, x: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 2, n_bins, T) complex constant-Q coefficients, [real | imag] on dim 1."""
        n_frames = self.frames_per_window + 2 * self.receptive
        frames = x.float().unfold(1, self.n_fft, self.hop_length)[:, :n_frames]  # (B, T, n_fft)
        with torch.autocast(x.device.type, enabled=False):  # fixed analysis stays fp32 under bf16 autocast
            spec = frames @ self.kernels
        bsz, t, _ = spec.shape
        return spec.view(bsz, t, 2, self.n_bins).permute(0, 2, 3, 1)

    def _folded(self, seq: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Complex BN folded into each convolution of ``seq``, cached until a weight or statistic changes
        (the key holds every tensor's storage and in-place version: load_state_dict, .to() and training
        steps all invalidate it). Folding on every call cost about 15 % of a short streaming window."""
        tensors = [t for m in seq for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]
        try:
            key = tuple((t.data_ptr(), t._version) for t in tensors)
        except RuntimeError:  # inference tensors (a model built under inference_mode) keep no version: no cache
            return [fold_complex_bn(seq[i], seq[i + 1]) for i in range(0, len(seq), 3)]
        cache = self.__dict__.setdefault("_fold_cache", {})
        if cache.get(id(seq), (None,))[0] != key:
            with torch.no_grad():
                folded = [fold_complex_bn(seq[i], seq[i + 1]) for i in range(0, len(seq), 3)]
            cache[id(seq)] = (key, folded)
        return cache[id(seq)][1]

    def _run(self, seq: nn.Sequential, h: torch.Tensor, first: int = 0) -> torch.Tensor:
        """``seq`` (conv, BN, CReLU triples) from its ``first`` triple on."""
        if self.training:
            return seq[3 * first:](h)
        for i, (w, b) in list(zip(range(0, len(seq), 3), self._folded(seq)))[first:]:  # BN folded (exact)
            conv = seq[i]
            h = F.relu(F.conv2d(h, w, b, conv.stride, conv.padding, conv.dilation))
        return h

    def _harmonic_mix(self, h: torch.Tensor) -> torch.Tensor:
        """Inference form of stack_harmonics + the folded 1x1 harmonic convolution + ReLU: the sum over shifts
        of (weights of shift k) @ (semitone map shifted by k), each shifted map a strided view, so the
        10x larger stacked tensor is never written (2.7x faster than gather + conv on the 2-core CPU)."""
        w, bias = self._folded(self.body)[0]
        out_ch, n_out = w.shape[0], len(self.pitches)
        b, c2, n_in, t = h.shape
        lo = max(0, -min(self.shifts))
        padded = F.pad(h, (0, 0, lo, max(0, max(self.shifts) + n_out - n_in)))
        per_shift = w.view(out_ch, c2, len(self.shifts))  # stacked input channel j * H + k (stack_harmonics)
        out = None
        for k, s in enumerate(self.shifts):
            view = padded[:, :, lo + s: lo + s + n_out].reshape(b, c2, n_out * t)  # no copy: rows of a block
            y = torch.matmul(per_shift[:, :, k].contiguous(), view)
            out = y if out is None else out.add_(y)
        return F.relu(out.view(b, out_ch, n_out, t) + bias.view(1, -1, 1, 1))

    def fine_pitch_logits(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 2, n_bins, T) front end -> (B, 1, 88, frames): logit(offset + 0.5), the offset in semitones
        (+-0.5) of the spectral peak nearest each key's centre bin: the strongest of the centre bin and its two
        neighbours, refined by a parabola through the log power around it."""
        r = self.receptive
        power = spec[..., r: spec.shape[-1] - r].float().square().sum(1)          # (B, n_bins, frames)
        logp = torch.log(power + 1e-10)
        centre = torch.arange(len(self.pitches), device=spec.device) * self.bps + self.bps // 2
        window = logp[:, (centre[:, None] + torch.arange(-2, 3, device=spec.device)).clamp(0, self.n_bins - 1)]
        k = window[:, :, 1:4].argmax(2, keepdim=True) + 1                        # 1..3 of the 5 bins
        a, b, c = (window.gather(2, k + d).squeeze(2) for d in (-1, 0, 1))
        curv = a - 2 * b + c
        delta = torch.where(curv < 0, 0.5 * (a - c) / curv.clamp(max=-1e-6), torch.zeros_like(curv)).clamp(-0.5, 0.5)
        offset = ((k.squeeze(2) - 2).to(delta.dtype) + delta) / self.bps       # semitones
        p = (offset.clamp(-0.499, 0.499) + 0.5)
        return torch.log(p / (1 - p)).unsqueeze(1)

    def attack_level_db(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 2, n_bins, T) front end -> (B, 88, frames): the level in dB of each key's first four harmonics
        (the strongest of 3 bins around each), the loudest over this frame and the next 3: a struck or
        tongued note peaks within ~60 ms of its onset frame. The look-ahead stays inside the receptive margin,
        so windows (and the live stream) see exactly what a whole-file pass sees."""
        r = self.receptive
        power = spec.float().square().sum(1)                                      # (B, n_bins, T)
        centre = torch.arange(len(self.pitches), device=spec.device) * self.bps + self.bps // 2
        total = torch.zeros(power.shape[0], len(self.pitches), power.shape[-1], device=spec.device)
        for h in (1, 2, 3, 4):
            at = centre + round(self.bps * 12 * math.log2(h))
            rows = (at[:, None] + torch.arange(-1, 2, device=spec.device)).clamp(0, self.n_bins - 1)
            band = power[:, rows].amax(2)                                         # (B, 88, T)
            total += torch.where((at < self.n_bins)[None, :, None], band, torch.zeros_like(band))
        db = 10 * torch.log10(total + 1e-10)
        frames = spec.shape[-1] - 2 * r
        return torch.stack([db[..., r + k: r + k + frames] for k in range(4)], 0).amax(0)

    def velocity_logits(self, spec: torch.Tensor) -> torch.Tensor:
        slope, level = self.level_velocity
        return (slope * (self.attack_level_db(spec) - level)).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.frontend(x)
        h = compress(spec, self.compression_gain)
        h = self._run(self.semitone, h)                                   # (B, 2c, n_semitones, T-2)
        if self.training:
            h = stack_harmonics(h, self.shifts, len(self.pitches))        # (B, 2c*H, 88, T-2)
            h = self._run(self.body, h)                                   # (B, 2c, 88, frames)
        else:
            h = self._run(self.body, self._harmonic_mix(h), first=1)
        logits = self.head(h) + self.key_bias                             # (B, heads, 88, frames)
        logits = logits * self.calibration[:, :1, None] + self.calibration[:, 1:, None]
        if self.fine_pitch:
            logits = torch.cat([logits, self.fine_pitch_logits(spec).to(logits.dtype)], 1)
        if self.level_velocity is not None:
            logits = torch.cat([logits, self.velocity_logits(spec).to(logits.dtype)], 1)
        return logits.permute(0, 3, 2, 1)                                 # (B, frames, 88, heads)


__all__ = ["ComplexNoteTranscriber", "HARMONICS", "harmonic_shifts", "stack_harmonics"]
