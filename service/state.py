"""The service's state, built by the lifespan: the served models' runners and batchers, readiness and draining,
and how a request's work runs (decode pool, batcher) within its deadline, its client and the shutdown."""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import torch
from fastapi import HTTPException, Request

from models.checkpoint import resolve_device

from .batcher import Batcher, BatcherStopped, QueueFull
from .decode import DecodeCancelled, DecodePools
from .metrics import Metrics
from .runners import ClassifierRunner, TranscriberRunner
from .settings import Settings
from .stream import StreamModel, build_stream_model

log = logging.getLogger("service")
DEADLINE = "dcn.deadline"  # scope key: monotonic deadline, set when the upload is complete (the route starts)
# model key (GET /models/{name}, metrics label) -> its setting
MODEL_SETTINGS = {"classifier": "classifier_checkpoint", "transcriber": "transcriber_checkpoint"}


class ClientDisconnected(Exception):
    pass


class ShuttingDown(Exception):
    pass


class Service:
    """What the lifespan builds: the runners and their batchers, and whether they are ready."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.classifier: ClassifierRunner | None = None
        self.transcriber: TranscriberRunner | None = None
        self.batchers: dict[str, Batcher] = {}
        self.stream_model: StreamModel | None = None  # the transcriber for live streams (short windows)
        self.streams_active = 0  # open live streams
        metrics.streams_active.set_function(lambda: self.streams_active)
        self.item_seconds: dict[str, float] = {}
        self.ready = False
        self.draining = False   # shutdown started: not ready, new uploads refused, in-flight ones finishing
        self.in_flight = 0      # upload requests being served
        self._stopping: asyncio.Event | None = None  # set when the grace period is over: waiting requests get 503
        # A bounded pool for decoding: memory and CPU spent on decoding are bounded by its size.
        self.decoder = DecodePools(settings.decode_concurrency)  # one pool per route

    def load(self) -> None:
        """Blocking; raises CheckpointError / RuntimeError with a clear message (startup fails fast)."""
        s = self.settings
        try:
            device = resolve_device(s.device)
        except RuntimeError as e:
            raise RuntimeError(f"DCN_DEVICE={s.device}: {e}") from None
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)  # process-wide, the batcher threads included
        t0 = time.perf_counter()
        if s.classifier_checkpoint is not None:
            self.classifier = ClassifierRunner(s.classifier_checkpoint, device, flip_tta=s.classify_tta)
        if s.transcriber_checkpoint is not None:
            self.transcriber = TranscriberRunner(s.transcriber_checkpoint, device)
        log.info("loaded %s on %s in %.1fs", " and ".join(r.name for r in self.runners.values()), device,
                 time.perf_counter() - t0)
        self.stream_model, t1 = None, time.perf_counter()
        if s.stream_max_concurrent and self.transcriber is not None:
            try:
                self.stream_model = build_stream_model(self.transcriber.model, self.transcriber.meta,
                                                       s.stream_block_frames)
            except Exception as e:  # noqa: BLE001 - uploads must still be served; streams get 1013
                log.error("live streams disabled: %s: %s", type(e).__name__, e)
        if self.stream_model is not None:
            if self.stream_model.model is not self.transcriber.model:
                self.transcriber.add_window_model(self.stream_model.model)
            log.info("live streams: blocks of %d frames, %d edge frame(s), latency %.3f s (+ compute), largest "
                     "difference from offline %.2g; checked in %.1fs", self.stream_model.block_frames,
                     self.stream_model.edge, self.stream_model.algorithmic_latency_s,
                     self.stream_model.max_difference, time.perf_counter() - t1)
        if s.warmup:
            t0 = time.perf_counter()
            for name, runner in self.runners.items():
                size = self.batch_size(name)
                runner.warmup(size)
                # Warm runs, timed: a full batch's seconds per item seed the batcher's admission estimate.
                t1 = time.perf_counter()
                runner.warmup(1)
                t2 = time.perf_counter()
                runner.warmup(size)  # batches of 1 and of `size`
                full = (time.perf_counter() - t2) - (t2 - t1) if size > 1 else t2 - t1
                self.item_seconds[name] = max(full, 1e-6) / size
            log.info("warmed up in %.1fs", time.perf_counter() - t0)

    async def start(self) -> None:
        s = self.settings
        self._stopping = asyncio.Event()
        self.draining = False
        self.decoder = DecodePools(s.decode_concurrency)
        await asyncio.to_thread(self.load)
        for name, runner in self.runners.items():
            size = self.batch_size(name)
            delay = s.classify_max_batch_delay_ms if name == "classifier" else s.transcribe_max_batch_delay_ms
            batcher = Batcher(name, runner.predict, max_batch_size=size, max_batch_delay_ms=delay,
                              max_queue_size=s.max_queue_size, item_seconds=self.item_seconds.get(name),
                              admission_margin=s.admission_margin,
                              busy_batch_size=s.stream_upload_batch_size if name == "transcriber" else None)
            batcher.on_batch = self.metrics.watch_model(name, lambda b=batcher: b.depth)
            batcher.on_wait = self.metrics.queue_wait.labels(name).observe
            self.metrics.model_info.labels(name, runner.name, runner.version, str(runner.device)).set(1)
            batcher.start()
            self.batchers[name] = batcher
        self.ready = True
        self.metrics.ready.set(1)

    async def begin_shutdown(self, grace_s: float) -> None:
        """Not ready from now on; wait up to ``grace_s`` for requests in flight, then answer the rest 503."""
        self.draining = True
        self.metrics.ready.set(0)
        deadline = time.monotonic() + grace_s
        while (self.in_flight or self.streams_active) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # live streams see `draining`: they flush, send their summary and close
        if self.in_flight:
            log.warning("shutdown grace period of %g s over: answering %d request(s) in flight 503", grace_s,
                        self.in_flight)
            if self._stopping is not None:
                self._stopping.set()
            for batcher in self.batchers.values():
                batcher.abort("the service is shutting down")
            until = time.monotonic() + 2
            while self.in_flight and time.monotonic() < until:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        for batcher in self.batchers.values():
            await batcher.stop()
        self.decoder.shutdown()

    @property
    def runners(self) -> dict[str, ClassifierRunner | TranscriberRunner]:
        """The loaded models by key (classifier, transcriber); a model whose checkpoint setting is empty is absent."""
        return {k: r for k, r in (("classifier", self.classifier), ("transcriber", self.transcriber)) if r is not None}

    def batch_size(self, name: str) -> int:
        s = self.settings
        return s.classify_max_batch_size if name == "classifier" else s.transcribe_max_batch_size

    def served(self, name: str) -> bool:
        return getattr(self.settings, MODEL_SETTINGS[name]) is not None

    def runner(self, name: str) -> Any:
        """The model's runner for a route: 404 when this instance does not serve it, 503 before it is loaded."""
        if not self.served(name):
            raise HTTPException(404, f"the {name} is not served by this instance (DCN_{MODEL_SETTINGS[name].upper()}"
                                     " is empty)")
        runner = self.runners.get(name)
        if runner is None:
            raise HTTPException(503, "models are not loaded yet", headers={"Retry-After": "1"})
        return runner

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.draining and all(b.running for b in self.batchers.values())

    def check_ready(self) -> None:
        """503 unless ready; call after ``runner(name)`` so that a model not served is a 404 first."""
        if self.draining:
            raise HTTPException(503, "the service is shutting down; retry on another replica",
                                headers={"Retry-After": "1", "Connection": "close"})
        if not self.is_ready:
            raise HTTPException(503, "service is not ready", headers={"Retry-After": "1"})

    def precheck(self, model: str, cost: tuple[int, float] | None = None) -> None:
        """Before any decoding: 503 at once when the model's queue is full or its backlog exceeds the deadline."""
        try:
            items, decode_s = cost or (None, 0.0)  # cost: (items, decoding seconds) from the upload's header
            self.batchers[model].precheck(self.settings.request_timeout_s, items,
                                          decode_s + self.decoder[model].wait_s())
        except QueueFull as e:
            self.metrics.rejected.labels(model, "queue_full").inc()
            raise HTTPException(503, f"{e}; retry later", headers={"Retry-After": _retry_after(e)}) from None
        except BatcherStopped as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None

    async def decode(self, request: Request, model: str, deadline: float, fn: Callable[..., Any], *args: Any
                     ) -> Any:
        """``fn(*args, should_stop=...)`` in the decode pool, within the deadline; it stops (and the client gets
        504 / 499 / 503) when the deadline passes, the client goes away or the grace period ends."""
        reason: list[str] = []
        work = asyncio.wrap_future(self.decoder[model].submit(
            functools.partial(fn, *args, should_stop=lambda: reason[0] if reason else None)))
        try:
            return await self._guard(request, model, work, deadline, reason)
        except DecodeCancelled:  # only after a reason was given, which _guard has answered already
            raise HTTPException(503, "decoding stopped") from None

    async def _guard(self, request: Request, model: str, work: Awaitable[Any], deadline: float,
                     reason: list[str]) -> Any:
        rejected = self.metrics.rejected
        try:
            return await _unless_disconnected(request, work, deadline - time.monotonic(), self._stopping)
        except TimeoutError:
            reason.append("deadline")
            rejected.labels(model, "timeout").inc()
            raise HTTPException(504, f"not answered within the deadline of {self.settings.request_timeout_s:g} s"
                                ) from None
        except ClientDisconnected:
            reason.append("disconnected")
            rejected.labels(model, "disconnected").inc()
            raise HTTPException(499, "client closed the request") from None
        except ShuttingDown:
            reason.append("shutdown")
            rejected.labels(model, "shutdown").inc()
            raise HTTPException(503, "the service is shutting down; retry on another replica",
                                headers={"Retry-After": "1", "Connection": "close"}) from None

    async def run_batched(self, request: Request, model: str, items: list[Any], deadline: float | None = None
                          ) -> list[Any]:
        """Items through the model's batcher within the request's deadline; HTTP errors for every way it fails."""
        self.check_ready()
        if deadline is None:
            deadline = request.scope.get(DEADLINE) or time.monotonic() + self.settings.request_timeout_s
        rejected = self.metrics.rejected
        try:
            return await self._guard(request, model, self.batchers[model].submit(items, deadline - time.monotonic()),
                                     float("inf"), [])
        except QueueFull as e:
            rejected.labels(model, "queue_full").inc()
            raise HTTPException(503, f"{e}; retry later", headers={"Retry-After": _retry_after(e)}) from None
        except TimeoutError:
            rejected.labels(model, "timeout").inc()
            raise HTTPException(504, f"not answered within the deadline of {self.settings.request_timeout_s:g} s"
                                ) from None
        except BatcherStopped as e:
            rejected.labels(model, "shutdown").inc()
            raise HTTPException(503, str(e), headers={"Retry-After": "1", "Connection": "close"}) from None


def _retry_after(e: QueueFull) -> str:
    return str(max(1, math.ceil(e.retry_after)))


async def _unless_disconnected(request: Request, work: Awaitable[Any], timeout: float = float("inf"),
                               stopping: asyncio.Event | None = None) -> Any:
    """Await ``work``, cancelling it (so its items leave the queue) if the client disconnects first, the
    timeout passes (TimeoutError) or ``stopping`` is set (ShuttingDown)."""
    async def disconnected() -> None:
        # The body is fully read by now, so the next ASGI message is the disconnect (or the end of the response).
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(disconnected())
    stop_task = asyncio.ensure_future(stopping.wait()) if stopping is not None else None
    tasks = {work_task, watch_task} | ({stop_task} if stop_task else set())
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED,
                           timeout=None if timeout == float("inf") else max(0.0, timeout))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
    if work_task.done() and not work_task.cancelled():
        return work_task.result()
    try:
        await work_task  # let the cancellation take the job's items out of the queue
    except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - its result no longer matters
        pass
    if watch_task.done() and not watch_task.cancelled():
        raise ClientDisconnected
    if stop_task is not None and stop_task.done() and not stop_task.cancelled():
        raise ShuttingDown
    raise TimeoutError



def start_deadline(request: Request) -> float:
    """The request's deadline, from now (the upload is complete when a route starts); kept in the scope."""
    deadline = time.monotonic() + request.app.state.service.settings.request_timeout_s
    request.scope[DEADLINE] = deadline
    return deadline
