"""Live transcription over a WebSocket (``/transcribe/stream``): per-stream state, kept apart from the routes.

Pipeline of one stream: binary chunks of any size -> whole sample frames (little-endian int16 or float32,
interleaved channels) -> mono float64 (as uploads are mixed down) -> soxr HQ resampling to the model rate,
incremental (the resampler uploads use, so the same samples) -> blocks of ``block_frames`` frames cut with the
model's context -> the transcriber's batcher (shared with POST /transcribe) -> frame probabilities -> incremental
note decoding (the same rules as ``models.transcription.decode_notes``, with a bounded look-ahead) -> JSON messages.

Streamed == offline. The transcribers are convolutional in time, so a model copy with fewer frames per window
gives the same frames, except that layers zero-padded in time (the note transcriber's head) see the window's
edge. A stream window therefore carries ``edge`` extra frames on each side (found numerically at start-up: the
smallest edge whose frames equal the offline model's), and a block that starts or ends an offline window is
computed at that edge of its stream window, where the offline window had it too. Blocks never straddle an offline
window: ``block_frames`` divides the model's ``frames_per_window``.

Latency of frame k (centred at sample k * hop): its block must be complete, plus the edge, plus the model's
context (look-ahead), then a forward pass: at most (block_frames - 1 + edge) * hop + context samples of waiting
(``algorithmic_latency_s``), on average half a block less; notes need up to ``note look-ahead`` more frames.
"""
from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models import transcription as tr
from models.checkpoint import build_model

log = logging.getLogger("service.stream")

PROTOCOL_VERSION = 1
PROBABILITY_DECIMALS = 3  # as POST /transcribe's JSON
TIME_DECIMALS = 6
MAX_HEADER_BYTES = 4096
SAMPLE_FORMATS = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MAX_INPUT_RATE = 384_000
MAX_CHANNELS = 32
_RESAMPLE_SCALE = 2.0 ** -64  # as service/decode.py: soxr HQ computes in float32

# WebSocket close codes (RFC 6455) used by the stream.
CLOSE_NORMAL = 1000        # after the summary
CLOSE_GOING_AWAY = 1001    # the service is shutting down (the summary is sent first)
CLOSE_UNSUPPORTED = 1003   # a text message where audio was expected, or the reverse
CLOSE_INVALID = 1007       # malformed header, bad samples (NaN, inf, far over full scale), a partial sample at the end
CLOSE_POLICY = 1008        # idle too long, no header in time, maximum duration reached (summary first)
CLOSE_TOO_BIG = 1009       # a message over the size limit (uvicorn closes it)
CLOSE_INTERNAL = 1011      # the model failed or produced non-finite probabilities
CLOSE_TRY_LATER = 1013     # too many streams, not ready, or too far behind (overloaded)


class StreamError(Exception):
    """Ends a stream with a close code and a reason (also sent first as an ``error`` message)."""

    def __init__(self, code: int, reason: str, outcome: str, summary: bool = False) -> None:
        super().__init__(reason)
        self.code, self.reason, self.outcome, self.summary = code, reason, outcome, summary


# ---------------------------------------------------------------------------------------------- the model copy


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

    def ready(self) -> list[tuple[int, torch.Tensor]]:
        sm, out = self.sm, []
        while True:
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


# ------------------------------------------------------------------------------------------------ audio input


@dataclass
class StreamHeader:
    sample_rate: int
    channels: int
    sample_format: str
    decoding: dict[str, float]
    send_frames: bool = True

    @property
    def bytes_per_frame(self) -> int:
        return self.channels * SAMPLE_FORMATS[self.sample_format].itemsize


def parse_header(text: str | bytes | None, model_heads: tuple[str, ...], defaults: dict[str, float]
                 ) -> StreamHeader:
    """The client's first message -> StreamHeader; StreamError(1007) with what is wrong."""
    def bad(why: str) -> StreamError:
        return StreamError(CLOSE_INVALID, f"bad header: {why}", "bad_header")

    if text is None:
        raise StreamError(CLOSE_UNSUPPORTED, "the first message must be the JSON header (text), not audio",
                          "bad_header")
    if len(text) > MAX_HEADER_BYTES:
        raise bad(f"longer than {MAX_HEADER_BYTES} bytes")
    try:
        h = json.loads(text)
    except ValueError as e:
        raise bad(f"not JSON ({e})") from None
    if not isinstance(h, dict):
        raise bad("not a JSON object")
    known = {"protocol", "type", "sample_rate", "channels", "format", "onset_threshold", "frame_threshold",
             "min_note_length", "frames"}
    unknown = sorted(set(h) - known)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}")
    if h.get("type", "start") != "start":
        raise bad(f"type must be 'start', got {h.get('type')!r}")
    if h.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise bad(f"protocol {h.get('protocol')!r} is not supported; this server speaks protocol {PROTOCOL_VERSION}")
    sr, ch, fmt = h.get("sample_rate"), h.get("channels", 1), h.get("format", "int16")
    if isinstance(sr, bool) or not isinstance(sr, int) or not 1 <= sr <= MAX_INPUT_RATE:
        raise bad(f"sample_rate must be an integer from 1 to {MAX_INPUT_RATE} Hz, got {sr!r}")
    if isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= MAX_CHANNELS:
        raise bad(f"channels must be an integer from 1 to {MAX_CHANNELS}, got {ch!r}")
    if fmt not in SAMPLE_FORMATS:
        raise bad(f"format must be one of {', '.join(SAMPLE_FORMATS)} (little-endian), got {fmt!r}")
    decoding = dict(defaults)
    for key, hi in (("onset_threshold", 1.0), ("frame_threshold", 1.0), ("min_note_length", 60.0)):
        v = h.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
            raise bad(f"{key} must be a number from 0 to {hi:g}, got {v!r}")
        decoding[key] = float(v)
    if "onset" not in model_heads and decoding["frame_threshold"] > decoding["onset_threshold"]:
        raise bad(f"frame_threshold ({decoding['frame_threshold']:g}) must not exceed onset_threshold "
                  f"({decoding['onset_threshold']:g}) for this frame-only model")
    frames = h.get("frames", True)
    if not isinstance(frames, bool):
        raise bad(f"frames must be true or false, got {frames!r}")
    return StreamHeader(sr, ch, fmt, decoding, frames)


class AudioInput:
    """Bytes of interleaved little-endian samples -> mono float32 at the model rate, incrementally; the same
    mix-down and resampler as uploads (service/decode.py), so a streamed WAV gives the samples its upload does."""

    def __init__(self, header: StreamHeader, target_rate: int) -> None:
        self.header = header
        self.dtype = SAMPLE_FORMATS[header.sample_format]
        self.rest = b""
        self.frames_in = 0  # input sample frames so far
        self.resampler = None
        if header.sample_rate != target_rate:
            import soxr
            self.resampler = soxr.ResampleStream(header.sample_rate, target_rate, 1, dtype="float64", quality="HQ")

    def _mono(self, data: bytes) -> np.ndarray:
        x = np.frombuffer(data, self.dtype).reshape(-1, self.header.channels)
        if self.header.sample_format == "int16":
            x = x.astype(np.float32) / np.float32(32768)  # as libsndfile reads PCM_16 as float
        else:
            if not np.isfinite(x).all():
                raise StreamError(CLOSE_INVALID, "audio contains NaN or infinite samples", "bad_audio")
            peak = float(np.abs(x).max()) if x.size else 0.0
            if peak > tr.MAX_PEAK:
                raise StreamError(CLOSE_INVALID, f"float32 samples must be full scale +-1.0 (at most "
                                                 f"{tr.MAX_PEAK:g}); got a peak of {peak:.3g}", "bad_audio")
        return x.mean(axis=1, dtype=np.float64)

    def feed(self, data: bytes) -> np.ndarray:
        data = self.rest + data
        whole = len(data) - len(data) % self.header.bytes_per_frame
        self.rest = data[whole:]
        mono = self._mono(data[:whole])
        self.frames_in += mono.size
        if self.resampler is None:
            return mono.astype(np.float32)
        return (self.resampler.resample_chunk(mono * _RESAMPLE_SCALE, last=False) / _RESAMPLE_SCALE
                ).astype(np.float32)

    def finish(self) -> np.ndarray:
        if self.rest:
            raise StreamError(CLOSE_INVALID, f"the stream ended inside a sample frame ({len(self.rest)} of "
                                             f"{self.header.bytes_per_frame} bytes)", "bad_audio")
        if self.resampler is None:
            return np.zeros(0, np.float32)
        return (self.resampler.resample_chunk(np.zeros(0, np.float64), last=True) / _RESAMPLE_SCALE
                ).astype(np.float32)


# ------------------------------------------------------------------------------------------------ one stream


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
                                   "onset" in self.heads)
        self.frames_sent = 0
        self.arrivals: list[tuple[int, float]] = []  # (input frames received after a chunk, its arrival time)
        self.latencies: list[float] = []
        self.ended = False

    @property
    def input_seconds(self) -> float:
        return self.input.frames_in / self.header.sample_rate

    def behind_s(self, now: float | None = None) -> float:
        """How far the transcription lags the audio that is due by now (received, but not ahead of real time):
        grows only when the service cannot keep up, not when a client sends ahead."""
        now = time.monotonic() if now is None else now
        due = min(self.input_seconds, now - self.started)
        return due - self.frames_sent * self.sm.hop / self.sm.sample_rate

    def feed(self, data: bytes, now: float | None = None) -> None:
        self.windows.push(self.input.feed(data))
        self.arrivals.append((self.input.frames_in, time.monotonic() if now is None else now))

    def end(self) -> None:
        self.windows.push(self.input.finish())
        if self.input.frames_in and not self.windows.received:  # as uploads: a few samples resample to one
            self.windows.push(np.zeros(1, np.float32))
        self.windows.finish()
        self.ended = True

    def ready(self) -> list[tuple[int, torch.Tensor]]:
        return self.windows.ready()

    def _arrival(self, frame: int) -> float | None:
        """When the input sample at frame ``frame``'s centre arrived."""
        sample = frame * self.sm.hop * self.header.sample_rate / self.sm.sample_rate
        keys = [n for n, _ in self.arrivals]
        i = bisect.bisect_right(keys, sample)
        return self.arrivals[i][1] if i < len(self.arrivals) else (self.arrivals[-1][1] if self.arrivals else None)

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
        lat = []
        for k in range(first, first + len(probs_all)):
            arrived = self._arrival(k)
            if arrived is not None:
                lat.append(max(0.0, now - arrived))
        self.latencies.extend(lat)
        if len(self.latencies) > 100_000:  # keep the recent ones
            del self.latencies[:50_000]
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
        messages += self.tracker.push(t.probabilities, t.onsets)
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


def dumps(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def ready_message(model: str, header: StreamHeader, sm: StreamModel, pitches: np.ndarray, heads: tuple[str, ...],
                  limits: dict[str, Any]) -> dict:
    return {"type": "ready", "protocol": PROTOCOL_VERSION, "model": model,
            "input": {"sample_rate": header.sample_rate, "channels": header.channels, "format": header.sample_format},
            "sample_rate": sm.sample_rate, "hop_length": sm.hop, "frame_rate": sm.sample_rate / sm.hop,
            "pitches": pitches.tolist(), "heads": list(heads), "decoding": header.decoding,
            "frames": header.send_frames, "latency": sm.info(), "limits": limits}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


# ----------------------------------------------------------------------------------------- the WebSocket side


async def serve_stream(ws: Any, service: Any) -> None:
    """``WebSocket /transcribe/stream``: the protocol in PROTOCOL (docs) around a StreamSession. ``service`` is
    app.Service (settings, metrics, transcriber, batchers, stream_model, readiness, active stream count)."""
    from .batcher import BatcherStopped, QueueFull

    settings, metrics = service.settings, service.metrics
    await ws.accept()
    sent_close = False

    async def close(code: int, reason: str) -> None:
        nonlocal sent_close
        if not sent_close:
            sent_close = True
            try:
                await ws.close(code, reason[:120])  # a close reason has at most 123 bytes
            except Exception:  # noqa: BLE001, S110 - the client may be gone already
                pass

    async def send(message: dict) -> None:
        await ws.send_text(dumps(message))

    async def refuse(code: int, reason: str, outcome: str) -> None:
        metrics.streams.labels(outcome).inc()
        try:
            await send({"type": "error", "code": code, "outcome": outcome, "detail": reason})
        except Exception:  # noqa: BLE001, S110
            pass
        await close(code, reason)

    if service.draining:
        return await refuse(CLOSE_GOING_AWAY, "the service is shutting down; reconnect to another replica",
                            "shutdown")
    if not service.is_ready or getattr(service, "stream_model", None) is None:
        return await refuse(CLOSE_TRY_LATER, "the service is not ready; retry in a second", "not_ready")
    if service.streams_active >= settings.stream_max_concurrent:
        return await refuse(CLOSE_TRY_LATER, f"too many live streams ({service.streams_active}, the limit is "
                                             f"{settings.stream_max_concurrent}); retry later", "too_many")
    service.streams_active += 1
    runner, sm = service.transcriber, service.stream_model
    batcher = service.batchers["transcriber"]
    idle_s = settings.stream_idle_timeout_s
    session: StreamSession | None = None
    proc: asyncio.Task | None = None
    outcome = "completed"
    try:
        # the header
        try:
            first = await asyncio.wait_for(ws.receive(), idle_s)
        except TimeoutError:
            raise StreamError(CLOSE_POLICY, f"no header within {idle_s:g} s", "idle") from None
        if first["type"] == "websocket.disconnect":
            raise StreamError(0, "", "disconnected")
        header = parse_header(first.get("text"), runner.heads, runner.decoding)
        session = StreamSession(header, sm, runner.pitches, runner.heads)
        limits = {"max_seconds": settings.stream_max_seconds, "idle_timeout_s": idle_s,
                  "realtime_margin_s": settings.stream_realtime_margin_s,
                  "max_backlog_s": settings.stream_max_backlog_s,
                  "max_message_bytes": settings.stream_max_message_bytes}
        await send(ready_message(runner.name, header, sm, runner.pitches, runner.heads, limits))
        wake = asyncio.Event()
        latency = metrics.stream_latency

        async def process() -> None:
            assert session is not None
            while True:
                await wake.wait()
                wake.clear()
                while blocks := session.ready():
                    windows = [w for _, w in blocks]
                    while True:
                        try:
                            probs = await batcher.submit(windows, settings.request_timeout_s, priority=True)
                            break
                        except QueueFull:
                            if session.behind_s() > settings.stream_max_backlog_s:
                                raise StreamError(CLOSE_TRY_LATER, "the service is overloaded: the stream fell too "
                                                                   "far behind; retry later", "overloaded") from None
                            await asyncio.sleep(0.05)
                        except TimeoutError:
                            raise StreamError(CLOSE_TRY_LATER, "the service is overloaded: no result within "
                                                               f"{settings.request_timeout_s:g} s", "overloaded"
                                              ) from None
                        except BatcherStopped:
                            raise StreamError(CLOSE_GOING_AWAY, "the service is shutting down", "shutdown"
                                              ) from None
                    messages, lat = session.results(blocks, probs)
                    for message in messages:
                        await send(message)
                    for v in lat:
                        latency.observe(v)
                if session.ended:
                    return

        proc = asyncio.create_task(process())
        reason, last_message = "end", time.monotonic()
        recv: asyncio.Task | None = None
        try:
            while True:
                if recv is None:
                    recv = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({recv, proc}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                if proc in done:
                    proc.result()  # raises the processor's StreamError
                now = time.monotonic()
                if recv not in done:
                    if service.draining:
                        reason = "shutdown"
                        break
                    if now - last_message > idle_s:
                        reason = "idle"
                        break
                    if now - session.started > settings.stream_max_seconds + idle_s:  # e.g. pings, no audio
                        reason = "max_duration"
                        break
                    continue
                message, recv, last_message = recv.result(), None, now
                if message["type"] == "websocket.disconnect":
                    raise StreamError(0, "", "disconnected")
                if message.get("bytes") is not None:
                    data = message["bytes"]
                    left = settings.stream_max_seconds - session.input_seconds
                    cut = int(left * header.sample_rate) * header.bytes_per_frame
                    over = len(data) > cut
                    if over:
                        data = data[:max(0, cut - len(session.input.rest))]
                    before = session.input_seconds
                    session.feed(data, now)
                    metrics.stream_audio_seconds.inc(session.input_seconds - before)
                    wake.set()
                    if over:
                        reason = "max_duration"
                        break
                    if (behind := session.behind_s()) > settings.stream_max_backlog_s:
                        raise StreamError(CLOSE_TRY_LATER, f"the service is overloaded: the stream fell {behind:.1f} "
                                                           "s behind real time; retry later", "overloaded")
                    # back-pressure: more than the margin ahead of real time -> stop reading for a while
                    while (ahead := session.input_seconds - (time.monotonic() - session.started)
                           - settings.stream_realtime_margin_s) > 0 and not service.draining:
                        if proc.done():
                            break
                        pause = min(ahead, 0.25)
                        metrics.stream_throttled_seconds.inc(pause)
                        await asyncio.sleep(pause)
                        last_message = time.monotonic()  # paused by us: not idle
                    continue
                text = message.get("text")
                try:
                    control = json.loads(text) if text is not None and len(text) <= MAX_HEADER_BYTES else None
                except ValueError:
                    control = None
                if not isinstance(control, dict) or control.get("type") not in ("end", "ping"):
                    raise StreamError(CLOSE_UNSUPPORTED, "text messages after the header must be {\"type\": "
                                                         "\"end\"} or {\"type\": \"ping\"}; audio is binary",
                                      "bad_message")
                if control["type"] == "ping":
                    await send({"type": "pong", "time": control.get("time"),
                                "received_s": round(session.input_seconds, TIME_DECIMALS)})
                    continue
                break  # end
        finally:
            if recv is not None and not recv.done():
                recv.cancel()
        # flush: the tail, the last frames and notes, the summary
        session.end()
        wake.set()
        await proc
        for message in session.finish():
            await send(message)
        await send(session.summary(runner.name, reason))
        code, why = {"end": (CLOSE_NORMAL, "end of stream"),
                     "shutdown": (CLOSE_GOING_AWAY, "the service is shutting down"),
                     "idle": (CLOSE_POLICY, f"no data for {idle_s:g} s"),
                     "max_duration": (CLOSE_POLICY, f"the stream reached the limit of {settings.stream_max_seconds:g} s"),
                     }[reason]
        outcome = {"end": "completed"}.get(reason, reason)
        await close(code, why)
    except StreamError as e:
        outcome = e.outcome
        if e.code:
            try:
                await send({"type": "error", "code": e.code, "outcome": e.outcome, "detail": e.reason})
            except Exception:  # noqa: BLE001, S110 - the client may be gone
                pass
            await close(e.code, e.reason)
    except Exception as e:
        if type(e).__name__ in ("WebSocketDisconnect", "ClientDisconnected", "ConnectionClosed"):
            outcome = "disconnected"
        else:
            log.exception("live stream failed")
            outcome = "error"
            await close(CLOSE_INTERNAL, f"internal error: {type(e).__name__}")
    finally:
        if proc is not None and not proc.done():
            proc.cancel()
            try:
                await proc
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110
                pass
        service.streams_active -= 1
        metrics.streams.labels(outcome).inc()


PROTOCOL_DOC = """\
**Live transcription, protocol 1.** Open a WebSocket to `/transcribe/stream` (`ws://` or `wss://`).

Client -> server:
1. One text message, the header (JSON): `{"type": "start", "protocol": 1, "sample_rate": 48000, "channels": 1,
   "format": "int16"}`. `format`: `int16` or `float32`, little-endian, channels interleaved, full scale 1.0 for
   float32. Optional: `onset_threshold`, `frame_threshold`, `min_note_length` (as POST /transcribe; default the
   model's calibrated values) and `frames` (false: note events only, no frame probabilities).
2. Binary messages of audio, any size (a sample frame may be split across messages), sent as it is recorded.
3. `{"type": "end"}` (text): the server transcribes the tail, sends the last frames and note events, then a
   `summary`, and closes with 1000. `{"type": "ping", "time": t}` is answered by `{"type": "pong", "time": t}`.
   Closing the socket without `end` drops the tail and the summary.

Server -> client (JSON text messages, in this order per block):
* `ready` (once, after the header): model, `pitches`, `frame_rate`, `heads`, `decoding`, `latency`
  (`algorithmic_latency_s`: the look-ahead the model needs, worst case; `block_frames`), `limits`.
* `frames`: `start` (index of the first frame), `times` (s, frame centres), `probabilities` (frames x pitches,
  the frame head) and, for note models, `onsets`, rounded to 3 decimals, as POST /transcribe; `latency_s`: how
  long ago the oldest of these frames' centre samples arrived. Concatenated, the frames of a stream equal POST
  /transcribe's for the same audio (within 1e-4 before rounding; the `ready` message says the difference found).
* `note_on`: `pitch`, `onset` (s), as soon as the note is certain (its onset is confirmed and it is already
  `min_note_length` long). `note_off`: the whole note, `onset`, `offset`, `pitch`, `confidence`, once it ended.
* `summary` (last): `duration`, `frames`, `notes` (all of them, exactly POST /transcribe's `notes` for the same
  audio), `decoding`, `latency` (p50/p99/max frame latency in seconds), `reason` (`end`, `idle`,
  `max_duration`, `shutdown`).
* `error`: `code`, `outcome`, `detail`, just before the server closes the socket with that code.

Close codes: 1000 done; 1001 the service is shutting down (after a summary); 1003 text where audio was expected
or the reverse; 1007 a malformed header or invalid audio (NaN, inf, float32 over 1000 x full scale, a partial
sample frame at `end`); 1008 no header or no data within the idle timeout, or the maximum duration reached (after
a summary); 1009 a message over the size limit; 1011 internal error; 1013 too many streams, not ready, or
overloaded (retry later). A client that sends faster than real time by more than the margin is slowed down: the
server stops reading (TCP back-pressure) until real time catches up.
"""


def protocol_description(service: Any) -> dict[str, Any]:
    """GET /transcribe/stream: the protocol and this server's parameters."""
    s = service.settings
    sm: StreamModel | None = service.stream_model
    runner = service.transcriber
    return {"protocol": PROTOCOL_VERSION, "websocket": "/transcribe/stream",
            "model": None if runner is None else runner.name,
            "sample_formats": list(SAMPLE_FORMATS), "max_channels": MAX_CHANNELS, "max_sample_rate": MAX_INPUT_RATE,
            "header_example": {"type": "start", "protocol": PROTOCOL_VERSION, "sample_rate": 48000, "channels": 1,
                               "format": "int16"},
            "latency": None if sm is None else sm.info(),
            "limits": {"max_streams": s.stream_max_concurrent, "active_streams": service.streams_active,
                       "max_seconds": s.stream_max_seconds, "idle_timeout_s": s.stream_idle_timeout_s,
                       "realtime_margin_s": s.stream_realtime_margin_s, "max_backlog_s": s.stream_max_backlog_s,
                       "max_message_bytes": s.stream_max_message_bytes},
            "close_codes": {"1000": "done (after the summary)", "1001": "service shutting down (after a summary)",
                            "1003": "text where audio was expected, or the reverse",
                            "1007": "malformed header or invalid audio",
                            "1008": "idle timeout or maximum duration (after a summary)",
                            "1009": "message too big", "1011": "internal error",
                            "1013": "too many streams, not ready or overloaded: retry later"},
            "documentation": PROTOCOL_DOC}
