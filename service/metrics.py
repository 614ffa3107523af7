"""Prometheus instruments, on a registry per app (several apps in one process must not share counters).

Label values come from fixed sets only, so no request can grow /metrics: routes are templates ("unmatched" for
any other path), methods are the standard ones ("other" for any other token), models are the served keys."""
from __future__ import annotations

import platform
import time
from collections import deque
from collections.abc import Callable

import torch
from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
THROUGHPUT_WINDOW_S = 10.0
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
VERSION = "0.1.0"  # pyproject.toml's version


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dcn_requests", "HTTP requests by route and status", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("dcn_request_latency_seconds", "HTTP request latency", ["route"], registry=r)
        self.queue_depth = Gauge("dcn_queue_depth", "items (images or audio windows) waiting for a batch",
                                 ["model"], registry=r)
        self.batch_size = Histogram("dcn_batch_size", "items per forward pass", ["model"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_latency = Histogram("dcn_batch_latency_seconds", "forward-pass time per batch", ["model"],
                                       registry=r)
        self.items = Counter("dcn_items", "items processed by forward passes", ["model"], registry=r)
        self.items_per_second = Gauge("dcn_items_per_second",
                                      f"items processed per second over the last {THROUGHPUT_WINDOW_S:g} s",
                                      ["model"], registry=r)
        self.rejected = Counter("dcn_rejected", "requests not served: queue_full, timeout, disconnected",
                                ["model", "reason"], registry=r)
        self.ready = Gauge("dcn_ready", "1 when all models are loaded and warmed up", registry=r)
        self.queue_wait = Histogram("dcn_queue_wait_seconds", "time a request's items wait in the model's queue "
                                    "until the first of them is in a batch", ["model"], buckets=WAIT_BUCKETS,
                                    registry=r)
        self.model_info = Gauge("dcn_model_info", "1 per served model: its name, version (checkpoint sha256 prefix) "
                                "and device", ["model", "name", "version", "device"], registry=r)
        Info("dcn_build", "service version and runtime", registry=r).info(
            {"version": VERSION, "python": platform.python_version(), "torch": torch.__version__})
        # process_* (CPU seconds, resident memory, open files, start time) and python_info, as every exporter has
        r.register(PROCESS_COLLECTOR)
        r.register(PLATFORM_COLLECTOR)
        # live transcription (WebSocket /transcribe/stream)
        self.streams_active = Gauge("dcn_streams_active", "live transcription streams open", registry=r)
        self.streams = Counter("dcn_streams", "live streams ended, by outcome: completed, idle, max_duration, "
                               "shutdown, too_many, not_ready, bad_header, bad_audio, bad_message, overloaded, "
                               "disconnected, error", ["outcome"], registry=r)
        self.stream_audio_seconds = Counter("dcn_stream_audio_seconds", "seconds of audio received by live streams",
                                            registry=r)
        self.stream_latency = Histogram("dcn_stream_frame_latency_seconds",
                                        "live streams: from the arrival of a frame's centre sample to its frame "
                                        "being sent", buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1,
                                                               2, 5), registry=r)
        self.stream_throttled_seconds = Counter("dcn_stream_throttled_seconds",
                                                "seconds live streams were paused for sending faster than real "
                                                "time beyond the margin (back-pressure)", registry=r)
        self._recent: dict[str, deque[tuple[float, int]]] = {}

    def watch_model(self, model: str, depth: Callable[[], float]) -> Callable[[int, float], None]:
        """Wire one batcher's gauges; returns its on_batch hook."""
        self.queue_depth.labels(model).set_function(depth)
        recent = self._recent.setdefault(model, deque())
        self.items_per_second.labels(model).set_function(lambda: self._rate(recent))
        batch_size, batch_latency, items = (self.batch_size.labels(model), self.batch_latency.labels(model),
                                            self.items.labels(model))

        def on_batch(n: int, seconds: float) -> None:
            batch_size.observe(n)
            batch_latency.observe(seconds)
            items.inc(n)
            recent.append((time.monotonic(), n))
        return on_batch

    @staticmethod
    def _rate(recent: deque[tuple[float, int]]) -> float:
        now = time.monotonic()
        while recent and recent[0][0] < now - THROUGHPUT_WINDOW_S:
            recent.popleft()
        return sum(n for _, n in recent) / THROUGHPUT_WINDOW_S
