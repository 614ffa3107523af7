"""Dynamic batching: many requests' items -> one forward pass (as in LitServe / Ray Serve).

Each request submits a job (a list of items: images, or audio windows) to a bounded queue. One worker
task per model waits until ``max_batch_size`` items are pending or ``max_batch_delay_ms`` has passed,
takes items round-robin across jobs (so a long recording does not starve a short one), runs
``process`` in its own thread (off the event loop), and hands each job its results once all of its
items are done. A job whose request timed out or went away is dropped from the queue at once.

Admission: a job is refused (``QueueFull``, HTTP 503 + Retry-After) when the queue has no room, or when,
with a deadline, the round-robin estimate says it would not finish in time or would push an admitted job
past its own deadline (finish of job j ~ seconds per item x sum over queued jobs k of min(waiting_k,
waiting_j)). Seconds per item are measured on the batches run (a moving average), seeded by warm-up.
So under overload some long jobs finish and the rest are refused at once, instead of all of them
being served together and all missing the deadline.

Priority jobs (live streams: a window or two each, latency-bound) are taken before any other job and batched
only with each other; while they keep coming (within ``PRIORITY_RECENT_S``), the other jobs' batches are capped
at ``busy_batch_size`` items, so a stream never waits behind more than one short batch of uploads.
"""
from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PRIORITY_RECENT_S = 1.0


class QueueFull(Exception):
    """The queue has no room for the job, or could not finish it in time; the client should retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatcherStopped(Exception):
    """The service is shutting down."""


class _Job:
    __slots__ = ("cancelled", "deadline", "done", "future", "items", "next", "priority", "results", "submitted")

    def __init__(self, items: Sequence[Any], future: asyncio.Future, deadline: float = float("inf"),
                 priority: bool = False) -> None:
        self.items = items
        self.priority = priority
        self.deadline = deadline  # time.monotonic() by which it must be answered
        self.results: list[Any] = [None] * len(items)
        self.next = 0          # index of the next item to put in a batch
        self.done = 0          # items with results
        self.future = future
        self.cancelled = False
        self.submitted = time.monotonic()

    @property
    def waiting(self) -> int:
        return len(self.items) - self.next


class Batcher:
    """``process(items) -> results`` (same length, same order) called on batches of up to ``max_batch_size``."""

    def __init__(self, name: str, process: Callable[[list[Any]], Sequence[Any]], *, max_batch_size: int,
                 max_batch_delay_ms: float, max_queue_size: int,
                 on_batch: Callable[[int, float], None] | None = None, item_seconds: float | None = None,
                 admission_margin: float = 0.8, busy_batch_size: int | None = None) -> None:
        self.name = name
        self.process = process
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay_ms / 1000
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch  # (batch size, seconds) -> None, for metrics
        self.on_wait: Callable[[float], None] | None = None  # a job's seconds queued until its first batch
        self.depth = 0            # items waiting in the queue (not yet in a batch)
        self.item_seconds = item_seconds  # moving average of forward-pass seconds per item (None: not known)
        self.admission_margin = admission_margin
        self.busy_batch_size = busy_batch_size  # cap on other jobs' batches while priority jobs come
        self._last_priority = -float("inf")
        self._urgent: deque[_Job] = deque()  # priority jobs with items still waiting, round-robin
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
        self._urgent.clear()
        self.depth = 0
        self._executor.shutdown(wait=True)

    def _drain_seconds(self) -> float:
        return max(1.0, (self.item_seconds or 0.0) * self.depth)

    def precheck(self, timeout: float | None = None, items: int | None = None, before_s: float = 0.0) -> None:
        """Before decoding an upload: QueueFull if the queue is full already, or its backlog alone would take
        longer than ``timeout`` (so an overloaded service refuses work before spending CPU on it). With ``items``
        (known from the upload's header) and ``before_s`` (seconds of decoding first): QueueFull also when that
        job would not be admitted once decoded (the admission rule of ``submit``)."""
        if timeout is not None and items is not None:
            if before_s > self.admission_margin * timeout:
                raise QueueFull(f"decoding this upload would take about {before_s:.1f} s, more than its deadline "
                                f"allows", max(1.0, before_s))
            self._admit(items, time.monotonic() + timeout - before_s)
        if not self.running:
            raise BatcherStopped(f"{self.name} is not running")
        if self.depth >= self.max_queue_size:
            raise QueueFull(f"{self.name} queue is full ({self.depth} items waiting)", self._drain_seconds())
        if (timeout is not None and self.depth and self.item_seconds
                and self.item_seconds * self.depth > self.admission_margin * timeout):
            raise QueueFull(f"{self.name} is busy: {self.depth} items waiting, about "
                            f"{self.item_seconds * self.depth:.1f} s of work, more than this request's deadline "
                            f"allows", self._drain_seconds())

    def _admit(self, n: int, deadline: float) -> None:
        """QueueFull if a job of ``n`` items due by ``deadline`` cannot be served in time (see the module doc)."""
        if not self.item_seconds or not self.depth or deadline == float("inf"):
            return
        now = time.monotonic()
        jobs = [j for j in self._live if not j.cancelled and j.waiting]
        waiting = sorted(j.waiting for j in jobs)
        prefix = [0]
        for w in waiting:
            prefix.append(prefix[-1] + w)

        def items_until_done(w: int) -> int:  # round-robin: every queued job contributes min(its items, w)
            i = bisect.bisect_right(waiting, w)
            return prefix[i] + w * (len(waiting) - i)

        margin, per_item = self.admission_margin, self.item_seconds
        finish = per_item * (items_until_done(n) + n)
        if finish > margin * (deadline - now):
            raise QueueFull(f"{self.name} is busy: this job would take about {finish:.1f} s with the work queued "
                            f"ahead of it, more than its deadline allows", self._drain_seconds())
        for j in jobs:
            before = per_item * items_until_done(j.waiting)
            after = before + per_item * min(n, j.waiting)
            if before <= margin * (j.deadline - now) < after:
                raise QueueFull(f"{self.name} is busy: admitting this job would make an earlier one miss its "
                                f"deadline", self._drain_seconds())

    def abort(self, reason: str) -> int:
        """Answer every waiting job with BatcherStopped(reason) (shutdown grace period over); returns how many."""
        n = 0
        for job in list(self._live):
            if not job.future.done():
                job.future.set_exception(BatcherStopped(reason))
                n += 1
        return n

    async def submit(self, items: Sequence[Any], timeout: float | None = None, priority: bool = False
                     ) -> list[Any]:
        """Results for ``items`` in order. Raises QueueFull, TimeoutError, BatcherStopped or process' error.
        ``priority``: served before the other jobs, in batches of their own (see the module doc).

        A job larger than the whole queue is still admitted into an empty queue, so the item limit
        bounds memory without making long (but allowed) recordings unservable.
        """
        if not self.running:
            raise BatcherStopped(f"{self.name} is not running")
        if not items:
            return []
        if self.depth and self.depth + len(items) > self.max_queue_size:
            raise QueueFull(f"{self.name} queue is full ({self.depth} items waiting)", self._drain_seconds())
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        if not priority:
            self._admit(len(items), deadline)
        job = _Job(items, asyncio.get_running_loop().create_future(), deadline, priority)
        if priority:
            self._last_priority = time.monotonic()
            self._urgent.append(job)
        else:
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
        """Up to max_batch_size items, one per job in turn; priority jobs first and on their own."""
        batch: list[tuple[_Job, int]] = []
        limit = self.max_batch_size
        for jobs in (self._urgent, self._jobs):
            if batch:
                break
            if jobs is self._jobs and self.busy_batch_size and \
                    time.monotonic() - self._last_priority < PRIORITY_RECENT_S:
                limit = min(limit, self.busy_batch_size)
            while len(batch) < limit and jobs:
                job = jobs[0]
                if job.cancelled or job.waiting == 0:
                    jobs.popleft()
                    continue
                batch.append((job, job.next))
                if job.next == 0 and self.on_wait is not None:
                    self.on_wait(time.monotonic() - job.submitted)
                job.next += 1
                self.depth -= 1
                jobs.rotate(-1)
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
            seconds = time.perf_counter() - t0
            if (len(batch) == self.max_batch_size or self.depth) and not batch[0][0].priority:
                # per-item cost under load, not of a lone item; priority (stream) items are other, smaller work
                per_item = seconds / len(batch)
                self.item_seconds = (per_item if self.item_seconds is None
                                     else 0.8 * self.item_seconds + 0.2 * per_item)
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
            for (job, i), result in zip(batch, results):
                if job.future.done():
                    continue
                job.results[i] = result
                job.done += 1
                if job.done == len(job.items):
                    job.future.set_result(job.results)
