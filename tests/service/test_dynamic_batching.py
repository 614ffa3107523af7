"""Dynamic batching: the Batcher on its own, then concurrent requests sharing batches in the real app."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.app import create_app
from service.batcher import Batcher, BatcherStopped, QueueFull

from .conftest import TestClient, audio_bytes, image_bytes, metric, settings_for, tone


def run(coro):
    return asyncio.run(coro)


class Recorder:
    """A ``process`` that records its batches and can be held (to fill the queue deterministically)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list) -> list:
        self.gate.wait(5)
        time.sleep(self.delay)
        self.batches.append(list(items))
        return [x * 10 for x in items]


def test_batches_fill_up_and_results_go_back_in_order():
    async def main():
        rec = Recorder()
        b = Batcher("t", rec, max_batch_size=8, max_batch_delay_ms=50, max_queue_size=100)
        b.start()
        out = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(8)))
        await b.stop()
        return rec, out
    rec, out = run(main())
    assert out == [[i * 10, (i + 100) * 10] for i in range(8)]
    assert [len(x) for x in rec.batches] == [8, 8]  # 16 items from 8 requests in 2 forward passes


def test_round_robin_lets_a_short_job_overtake_a_long_one():
    async def main():
        rec = Recorder(delay=0.01)
        b = Batcher("t", rec, max_batch_size=4, max_batch_delay_ms=20, max_queue_size=1000)
        b.start()
        done: list[str] = []

        async def job(name, items):
            await b.submit(items)
            done.append(name)
        await asyncio.gather(job("long", list(range(40))), job("short", [1000, 1001]))
        await b.stop()
        return rec, done
    rec, done = run(main())
    assert done == ["short", "long"]
    assert {1000, 1001} <= set(rec.batches[0])  # the short job rides in the first batch
    assert sum(map(len, rec.batches)) == 42 and max(map(len, rec.batches)) == 4


def test_batch_size_one_and_no_delay():
    async def main():
        rec = Recorder()
        b = Batcher("t", rec, max_batch_size=1, max_batch_delay_ms=0, max_queue_size=100)
        b.start()
        out = await asyncio.gather(*(b.submit([i]) for i in range(5)))
        await b.stop()
        return rec, out
    rec, out = run(main())
    assert out == [[i * 10] for i in range(5)] and all(len(x) == 1 for x in rec.batches)


def test_queue_full_timeout_cancel_and_errors():
    async def main():
        rec = Recorder()
        rec.gate.clear()  # the worker blocks inside its first batch
        b = Batcher("t", rec, max_batch_size=1, max_batch_delay_ms=0, max_queue_size=3)
        b.start()
        first = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0.05)  # taken by the worker, stuck in process()
        queued = asyncio.create_task(b.submit([2, 3]))
        await asyncio.sleep(0)
        assert b.depth == 2
        with pytest.raises(QueueFull):
            await b.submit([4, 5])
        # a deadline that passes while waiting: TimeoutError, and its items leave the queue
        with pytest.raises(TimeoutError):
            await b.submit([6], timeout=0.05)
        assert b.depth == 2
        queued.cancel()  # e.g. the client went away
        await asyncio.sleep(0.01)
        assert b.depth == 0
        rec.gate.set()
        assert await first == [10]
        await asyncio.sleep(0.05)
        assert rec.batches == [[1]]  # nothing of the cancelled or timed-out jobs was processed

        def broken(items):
            raise RuntimeError("model failed")
        b2 = Batcher("u", broken, max_batch_size=4, max_batch_delay_ms=0, max_queue_size=10)
        b2.start()
        with pytest.raises(RuntimeError, match="model failed"):
            await b2.submit([1, 2])
        assert await asyncio.wait_for(b.submit([7]), 1) == [70]  # the worker survives
        await b2.stop()
        await b.stop()
        with pytest.raises(BatcherStopped):
            await b.submit([8])
    run(main())


def test_oversized_job_admitted_into_empty_queue():
    async def main():
        b = Batcher("t", Recorder(), max_batch_size=4, max_batch_delay_ms=0, max_queue_size=3)
        b.start()
        out = await b.submit(list(range(10)))
        await b.stop()
        return out
    assert run(main()) == [x * 10 for x in range(10)]


def _post_many(client, n, **kwargs):
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: client.post(**kwargs), range(n)))


def test_concurrent_classify_requests_share_batches(checkpoints):
    app = create_app(settings_for(checkpoints, classify_max_batch_size=32, classify_max_batch_delay_ms=200))
    with TestClient(app) as c:
        responses = _post_many(c, 16, url="/classify", files={"file": ("x.png", image_bytes("PNG", (0, 0, 255)))})
        assert all(r.status_code == 200 and r.json()["results"][0]["label"] == "blue" for r in responses)
        text = c.get("/metrics").text
    batches = metric(text, "dcn_batch_size_count", model="classifier")
    assert metric(text, "dcn_items_total", model="classifier") == 16
    assert metric(text, "dcn_batch_size_sum", model="classifier") == 16
    assert batches < 16  # at least two requests shared a forward pass
    assert metric(text, "dcn_batch_size_bucket", model="classifier", le="1.0") < batches
    assert metric(text, "dcn_requests_total", route="/classify", status="200") == 16
    assert metric(text, "dcn_items_per_second", model="classifier") > 0


def test_long_and_short_recordings_progress_together(slow_checkpoints):
    app = create_app(settings_for(slow_checkpoints, transcribe_max_batch_size=4, transcribe_max_batch_delay_ms=20,
                                  warmup=False))
    finished: dict[str, float] = {}
    with TestClient(app) as c:
        def go(name, seconds):
            data = audio_bytes(tone(seconds=seconds, sr=8000), sr=8000)
            if name == "short":
                time.sleep(0.3)  # the long one is already being processed
            r = c.post("/transcribe", files={"file": (f"{name}.wav", data)})
            assert r.status_code == 200, r.text
            finished[name] = time.monotonic()
            return len(r.json()["times"])
        with ThreadPoolExecutor(2) as pool:
            frames = list(pool.map(go, ["long", "short"], [20.0, 0.5]))
        text = c.get("/metrics").text
    assert frames == [2001, 51]
    # 81 windows for the long one at 4 per 0.05 s pass: > 1 s; the short one must not wait for all of them
    assert finished["short"] < finished["long"]
    assert metric(text, "dcn_batch_size_sum", model="transcriber") == 81 + 3


def test_queue_full_returns_503_with_retry_after(slow_checkpoints):
    app = create_app(settings_for(slow_checkpoints, classify_max_batch_size=1, classify_max_batch_delay_ms=0,
                                  max_queue_size=2, warmup=False))
    with TestClient(app) as c:
        responses = _post_many(c, 10, url="/classify", files={"file": ("x.png", image_bytes())})
        text = c.get("/metrics").text
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503} and codes.count(200) >= 3, codes
    full = [r for r in responses if r.status_code == 503]
    assert all(r.headers["retry-after"] == "1" and "queue is full" in r.json()["detail"] for r in full)
    assert metric(text, "dcn_rejected_total", model="classifier", reason="queue_full") == len(full)
    assert metric(text, "dcn_requests_total", route="/classify", status="503") == len(full)


def test_deadline_returns_504(slow_checkpoints):
    app = create_app(settings_for(slow_checkpoints, request_timeout_s=0.2, classify_max_batch_size=1, warmup=False))
    with TestClient(app) as c:
        responses = _post_many(c, 3, url="/classify", files={"file": ("x.png", image_bytes())})
        assert all(r.status_code == 504 and "deadline" in r.json()["detail"] for r in responses)
        time.sleep(0.5)
        text = c.get("/metrics").text
    assert metric(text, "dcn_rejected_total", model="classifier", reason="timeout") == 3
    assert metric(text, "dcn_queue_depth", model="classifier") == 0
    assert metric(text, "dcn_items_total", model="classifier") <= 1  # only the batch already running


def test_stop_answers_every_waiting_request():
    async def main():
        rec = Recorder()
        rec.gate.clear()  # the first batch hangs in process() until the gate opens
        b = Batcher("t", rec, max_batch_size=1, max_batch_delay_ms=0, max_queue_size=10)
        b.start()
        running = asyncio.create_task(b.submit([1]))
        waiting = asyncio.create_task(b.submit([2]))
        await asyncio.sleep(0.05)
        threading.Timer(0.2, rec.gate.set).start()  # let the executor thread finish so stop() can join it
        await b.stop()
        for task in (running, waiting):
            with pytest.raises(BatcherStopped):
                await asyncio.wait_for(task, 1)
    run(main())
