"""Dynamic batching: many requests' items -> one forward pass (as in LitServe / Ray Serve).

Each request submits a job (a list of items: images, or audio windows) to a bounded queue. One worker
task per model waits until ``max_batch_size`` items are pending or ``max_batch_delay_ms`` has passed,
takes items round-robin across jobs (so a long recording does not starve a short one), runs
``process`` in its own thread (off the event loop), and hands each job its results once all of its
items are done. A job whose request timed out or went away is dropped from the queue at once.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class QueueFull(Exception):
    """The queue has no room for the job; the client should retry later."""


class BatcherStopped(Exception):
    """The service is shutting down."""


class _Job:
    __slots__ = ("cancelled", "done", "future", "items", "next", "results")

    def __init__(self, items: Sequence[Any], future: asyncio.Future) -> None:
        self.items = items
        self.results: list[Any] = [None] * len(items)
        self.next = 0          # index of the next item to put in a batch
        self.done = 0          # items with results
        self.future = future
        self.cancelled = False

    @property
    def waiting(self) -> int:
        return len(self.items) - self.next


class Batcher:
    """``process(items) -> results`` (same length, same order) called on batches of up to ``max_batch_size``."""

    def __init__(self, name: str, process: Callable[[list[Any]], Sequence[Any]], *, max_batch_size: int,
                 max_batch_delay_ms: float, max_queue_size: int,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.name = name
        self.process = process
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay_ms / 1000
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch  # (batch size, seconds) -> None, for metrics
        self.depth = 0            # items waiting in the queue (not yet in a batch)
        self._jobs: deque[_Job] = deque()  # jobs with items still waiting, in round-robin order
        self._live: set[_Job] = set()        # every job not yet answered (waiting or in a running batch)
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # One thread per model: forward passes of one model never overlap, and never block the event loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"batcher-{name}")

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for job in list(self._live):
            if not job.future.done():
                job.future.set_exception(BatcherStopped(f"{self.name} is shutting down"))
        self._jobs.clear()
        self.depth = 0
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """Results for ``items`` in order. Raises QueueFull, TimeoutError, BatcherStopped or process' error.

        A job larger than the whole queue is still admitted into an empty queue, so the item limit
        bounds memory without making long (but allowed) recordings unservable.
        """
        if not self.running:
            raise BatcherStopped(f"{self.name} is not running")
        if not items:
            return []
        if self.depth and self.depth + len(items) > self.max_queue_size:
            raise QueueFull(f"{self.name} queue is full ({self.depth} items waiting)")
        job = _Job(items, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._live.add(job)
        self.depth += len(items)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(job.future, timeout)
        finally:
            # Done, failed, timed out, or the request was cancelled (client went away): whatever of
            # this job still waits leaves the queue now, so no forward pass is spent on it.
            job.cancelled = True
            self._live.discard(job)
            self.depth -= job.waiting
            job.next = len(job.items)

    def _take(self) -> list[tuple[_Job, int]]:
        """Up to max_batch_size items, one per job in turn."""
        batch: list[tuple[_Job, int]] = []
        while len(batch) < self.max_batch_size and self._jobs:
            job = self._jobs[0]
            if job.cancelled or job.waiting == 0:
                self._jobs.popleft()
                continue
            batch.append((job, job.next))
            job.next += 1
            self.depth -= 1
            self._jobs.rotate(-1)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.depth == 0:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Let the batch fill: wait until it is full or the delay since the first waiting item is over.
            fill_by = loop.time() + self.max_batch_delay
            while self.depth < self.max_batch_size and (left := fill_by - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.process, [j.items[i] for j, i in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: process returned {len(results)} results for {len(batch)} items")
            except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the worker
                for job, _ in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
            for (job, i), result in zip(batch, results):
                if job.future.done():
                    continue
                job.results[i] = result
                job.done += 1
                if job.done == len(job.items):
                    job.future.set_result(job.results)
