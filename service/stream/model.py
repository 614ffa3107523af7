"""The transcriber copy with short windows for live streams, and the windower that cuts a stream into blocks."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models import transcription as tr
from models.checkpoint import build_model

log = logging.getLogger("service.stream")


def _stream_copy(model: nn.Module, meta: dict[str, Any], frames: int) -> nn.Module:
    config = dict(meta.get("config") or {})
    copy = build_model(meta["arch"], {**config, "frames_per_window": frames})
    copy.load_state_dict(model.state_dict())
    device = next(model.parameters()).device
    return copy.to(device).eval()


@dataclass
class StreamModel:
    """The transcriber with ``block_frames + 2 * edge`` frames per window, and where blocks go in it."""

    model: nn.Module
    block_frames: int     # frames reported per block
    edge: int             # extra frames computed each side of a block (window-edge effects of the model)
    frames_per_window: int  # the offline model's (blocks never straddle its windows)
    hop: int
    context: int
    sample_rate: int
    max_difference: float  # largest |streamed - offline| probability found by the start-up check

    @property
    def window_frames(self) -> int:
        return self.block_frames + 2 * self.edge

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.hop + 2 * self.context

    def window_start(self, a: int) -> int:
        """First frame of the stream window that computes the block starting at frame ``a``."""
        if self.edge == 0 or a % self.frames_per_window == 0:
            return a                     # the block starts an offline window: its left edge is a window edge
        if (a + self.block_frames) % self.frames_per_window == 0:
            return a - 2 * self.edge     # the block ends an offline window: its right edge too
        return a - self.edge

    @property
    def algorithmic_latency_s(self) -> float:
        """Worst case, a frame at the start of its block: the rest of the block, the edge, the context."""
        return ((self.block_frames - 1 + self.edge) * self.hop + self.context) / self.sample_rate

    def info(self) -> dict[str, Any]:
        return {"block_frames": self.block_frames, "edge_frames": self.edge,
                "window_seconds": self.window_samples / self.sample_rate,
                "context_seconds": self.context / self.sample_rate,
                "algorithmic_latency_s": round(self.algorithmic_latency_s, 6),
                "mean_algorithmic_latency_s": round(self.algorithmic_latency_s
                                                    - (self.block_frames - 1) / 2 * self.hop / self.sample_rate, 6),
                "max_difference_from_offline": self.max_difference}


def _divisor_at_most(n: int, wanted: int) -> int:
    return max(d for d in range(1, max(1, min(n, wanted)) + 1) if n % d == 0)


@torch.inference_mode()
def build_stream_model(model: nn.Module, meta: dict[str, Any], block_frames: int, max_edge: int = 4,
                       tolerance: float = 1e-4, seed: int = 0) -> StreamModel:
    """The smallest edge (0..max_edge) whose streamed frames equal the offline model's on random audio, within
    ``tolerance`` (checked over two offline windows, so every kind of block is compared)."""
    F = int(model.frames_per_window)
    block = _divisor_at_most(F, block_frames)
    hop, context, sr = int(model.hop_length), int(model.context), int(model.sample_rate)
    gen = torch.Generator().manual_seed(seed)
    n_frames = 2 * F
    audio = 0.1 * torch.randn((n_frames - 1) * hop, generator=gen)
    windows, n = tr.cut_windows(model, audio)
    offline = tr.stitch_windows(tr.predict_windows(model, windows).cpu(), n)
    best: StreamModel | None = None
    for edge in ([0] if block == F else range(max_edge + 1)):
        try:
            copy = model if block == F and edge == 0 else _stream_copy(model, meta, block + 2 * edge)
        except Exception as e:  # noqa: BLE001 - an architecture without a frames_per_window argument
            log.warning("live streams: cannot build a %d-frame copy of the model (%s: %s); streaming whole "
                        "%d-frame windows", block + 2 * edge, type(e).__name__, e, F)
            return build_stream_model(model, meta, F, max_edge, tolerance, seed)
        sm = StreamModel(copy, block, edge, F, hop, context, sr, float("inf"))
        cutter = Windower(sm)
        cutter.push(audio.numpy())
        cutter.finish()
        jobs = cutter.ready()
        probs = tr.predict_windows(copy, torch.stack([w for _, w in jobs])).cpu()
        streamed = torch.cat([p[a - s: a - s + block] for (a, _), p, s in
                              zip(jobs, probs, (sm.window_start(a) for a, _ in jobs))])[:n]
        sm.max_difference = float((streamed - offline).abs().max())
        if best is None or sm.max_difference < best.max_difference:
            best = sm
        if sm.max_difference <= tolerance:
            break
    assert best is not None
    if best.max_difference > tolerance:
        log.warning("streamed frames differ from offline ones by up to %.3g (edge %d)", best.max_difference,
                    best.edge)
    return best


class Windower:
    """Model-rate samples in, (first frame of block, window) out as soon as a block's samples are all there."""

    def __init__(self, sm: StreamModel) -> None:
        self.sm = sm
        self.buffer = np.zeros(0, np.float32)
        self.base = 0          # absolute index of buffer[0]
        self.received = 0      # model-rate samples so far
        self.next_block = 0    # first frame of the next block to cut
        self.n_frames: int | None = None  # known once the stream ends

    def push(self, samples: np.ndarray) -> None:
        if samples.size:
            self.buffer = np.concatenate([self.buffer, samples.astype(np.float32, copy=False)])
            self.received += samples.size

    def finish(self) -> None:
        self.n_frames = self.received // self.sm.hop + 1 if self.received else 0  # as tr.count_frames

    @property
    def pending_seconds(self) -> float:
        """Audio received but not yet cut into blocks."""
        return max(0, self.received - self.next_block * self.sm.hop) / self.sm.sample_rate

    def _window(self, s: int) -> torch.Tensor:
        sm = self.sm
        lo = s * sm.hop - sm.context
        out = np.zeros(sm.window_samples, np.float32)
        a, b = max(lo, self.base), min(lo + sm.window_samples, self.base + self.buffer.size)
        if b > a:
            out[a - lo: b - lo] = self.buffer[a - self.base: b - self.base]
        return torch.from_numpy(out)

    def ready(self, limit: int | None = None) -> list[tuple[int, torch.Tensor]]:
        """The blocks whose samples are all there, at most ``limit`` of them (one transcription step)."""
        sm, out = self.sm, []
        while limit is None or len(out) < limit:
            a = self.next_block
            if self.n_frames is not None:
                if a >= self.n_frames:
                    break
            else:
                s = sm.window_start(a)
                if (s + sm.window_frames) * sm.hop + sm.context > self.received:
                    break
            out.append((a, self._window(sm.window_start(a))))
            self.next_block = a + sm.block_frames
        keep = max(0, (self.next_block - 2 * sm.edge) * sm.hop - sm.context)  # nothing before it is needed again
        if keep > self.base:
            drop = min(keep - self.base, self.buffer.size)
            self.buffer = self.buffer[drop:]
            self.base += drop
        return out


