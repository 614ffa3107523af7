"""One stream's state: audio in, blocks out, model outputs -> frames and note events, the summary."""
from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from models import transcription as tr

from .audio import AudioInput
from .model import StreamModel, Windower
from .protocol import CLOSE_INTERNAL, PROBABILITY_DECIMALS, PROTOCOL_VERSION, TIME_DECIMALS, StreamError, StreamHeader


@dataclass
class StreamSession:
    """One stream's state; the route feeds it messages and sends what it returns."""

    header: StreamHeader
    sm: StreamModel
    pitches: np.ndarray
    heads: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.input = AudioInput(self.header, self.sm.sample_rate)
        self.windows = Windower(self.sm)
        self.tracker = tr.NoteTracker(self.pitches, self.sm.hop, self.sm.sample_rate, self.header.decoding,
                                      "onset" in self.heads, monophonic=self.header.monophonic)
        self.frames_sent = 0
        self.arrivals: list[tuple[int, float]] = []  # (input frames received after a chunk, its arrival time)
        self.latencies: deque[float] = deque(maxlen=20_000)  # the recent ones: memory per stream stays bounded
        self.ended = False
        self.ended_at: float | None = None  # when the end was decided (end message, idle, shutdown, ...)

    @property
    def input_seconds(self) -> float:
        return self.input.frames_in / self.header.sample_rate

    def behind_s(self, now: float | None = None) -> float:
        """How far the transcription lags the audio that is due by now (received, but not ahead of real time):
        grows only when the service cannot keep up, not when a client sends ahead."""
        now = time.monotonic() if now is None else now
        due = min(self.input_seconds, now - self.started)
        return due - self.transcribed_seconds

    @property
    def transcribed_seconds(self) -> float:
        return self.frames_sent * self.sm.hop / self.sm.sample_rate

    @property
    def pending_seconds(self) -> float:
        """Audio received but not yet transcribed (what a stream holds in memory, roughly)."""
        return max(0.0, self.input_seconds - self.transcribed_seconds)

    def feed(self, data: bytes, now: float | None = None) -> None:
        self.windows.push(self.input.feed(data))
        now = time.monotonic() if now is None else now
        if self.arrivals and now - self.arrivals[-1][1] < 0.005:  # many small messages: one entry
            self.arrivals[-1] = (self.input.frames_in, self.arrivals[-1][1])
        else:
            self.arrivals.append((self.input.frames_in, now))

    def end(self, now: float | None = None) -> None:
        self.ended_at = time.monotonic() if now is None else now
        self.windows.push(self.input.finish())
        if self.input.frames_in and not self.windows.received:  # as uploads: a few samples resample to one
            self.windows.push(np.zeros(1, np.float32))
        self.windows.finish()
        self.ended = True

    def ready(self, limit: int | None = None) -> list[tuple[int, torch.Tensor]]:
        return self.windows.ready(limit)

    def _arrival(self, frame: int, keys: list[int]) -> float | None:
        """When the input sample at frame ``frame``'s centre arrived; for the tail computed after the end, when the
        end was decided (an idle stream's wait for more audio is not latency)."""
        sample = frame * self.sm.hop * self.header.sample_rate / self.sm.sample_rate
        i = bisect.bisect_right(keys, sample)
        t = self.arrivals[i][1] if i < len(self.arrivals) else (self.arrivals[-1][1] if self.arrivals else None)
        if t is not None and self.ended_at is not None:
            t = max(t, self.ended_at)
        return t

    def results(self, blocks: list[tuple[int, torch.Tensor]], probs: list[torch.Tensor], now: float | None = None
                ) -> tuple[list[dict], list[float]]:
        """Model outputs for ``blocks`` (in order) -> messages (frames, then note events), frame latencies."""
        sm = self.sm
        rows = []
        for (a, _), p in zip(blocks, probs):
            s = sm.window_start(a)
            rows.append(p[a - s: a - s + sm.block_frames])
        probs_all = torch.cat(rows).numpy() if rows else np.zeros((0, len(self.pitches), len(self.heads)), np.float32)
        first = blocks[0][0] if blocks else self.frames_sent
        if self.windows.n_frames is not None:
            probs_all = probs_all[: max(0, self.windows.n_frames - first)]
        t = tr.Transcription.from_heads(np.arange(first, first + len(probs_all), dtype=np.float64) * sm.hop
                                        / sm.sample_rate, self.pitches, probs_all, self.heads)
        for head, p in (("frame", t.probabilities), ("onset", t.onsets)):
            if p is not None and not np.isfinite(p).all():
                raise StreamError(CLOSE_INTERNAL, f"the model produced {int((~np.isfinite(p)).sum())} non-finite "
                                                  f"{head} probabilities", "error")
        now = time.monotonic() if now is None else now
        lat, keys = [], [n for n, _ in self.arrivals]
        for k in range(first, first + len(probs_all)):
            arrived = self._arrival(k, keys)
            if arrived is not None:
                lat.append(max(0.0, now - arrived))
        self.latencies.extend(lat)
        # arrivals before the next frame's centre are not needed again
        nxt = (first + len(probs_all)) * sm.hop * self.header.sample_rate / sm.sample_rate
        drop = bisect.bisect_left([n for n, _ in self.arrivals], nxt)
        if drop > 1:
            del self.arrivals[: drop - 1]
        messages: list[dict] = []
        if len(probs_all) and self.header.send_frames:
            msg = {"type": "frames", "start": first, "times": tr.round_list(t.times, TIME_DECIMALS),
                   "probabilities": tr.round_list(t.probabilities, PROBABILITY_DECIMALS)}
            if t.onsets is not None:
                msg["onsets"] = tr.round_list(t.onsets, PROBABILITY_DECIMALS)
            msg["latency_s"] = round(max(lat), 4) if lat else None
            messages.append(msg)
        self.frames_sent = first + len(probs_all)
        messages += self.tracker.push(t.probabilities, t.onsets, t.velocities)
        return messages, lat

    def finish(self) -> list[dict]:
        return self.tracker.finish()

    def summary(self, model: str, reason: str) -> dict:
        lat = np.asarray(self.latencies) if self.latencies else None
        return {"type": "summary", "protocol": PROTOCOL_VERSION, "model": model, "reason": reason,
                "duration": round(self.input_seconds, TIME_DECIMALS), "frames": self.frames_sent,
                "frame_rate": self.sm.sample_rate / self.sm.hop, "decoding": self.header.decoding,
                "notes": self.tracker.notes,
                "latency": None if lat is None else {"p50_s": round(float(np.percentile(lat, 50)), 4),
                                                      "p99_s": round(float(np.percentile(lat, 99)), 4),
                                                      "max_s": round(float(lat.max()), 4)}}


