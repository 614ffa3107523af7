"""The WebSocket side of a live stream: admission, the header, reading with back-pressure, the processor task
that feeds the batcher, and the end (summary, close code) in every way a stream can end."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from .model import StreamModel
from .protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    MAX_CHANNELS,
    MAX_INPUT_RATE,
    MIN_INPUT_RATE,
    PROTOCOL_DOC,
    PROTOCOL_VERSION,
    SAMPLE_FORMATS,
    TIME_DECIMALS,
    StreamError,
    StreamHeader,
    dumps,
    parse_control,
    parse_header,
)
from .session import StreamSession

log = logging.getLogger("service.stream")


def ready_message(model: str, header: StreamHeader, sm: StreamModel, pitches: np.ndarray, heads: tuple[str, ...],
                  limits: dict[str, Any]) -> dict:
    return {"type": "ready", "protocol": PROTOCOL_VERSION, "model": model,
            "input": {"sample_rate": header.sample_rate, "channels": header.channels, "format": header.sample_format},
            "sample_rate": sm.sample_rate, "hop_length": sm.hop, "frame_rate": sm.sample_rate / sm.hop,
            "pitches": pitches.tolist(), "heads": list(heads), "decoding": header.decoding,
            "frames": header.send_frames, "latency": sm.info(), "limits": limits}


STEP_SECONDS = 1.0  # audio per transcription step at most (one block if a block is longer)


async def serve_stream(ws: Any, service: Any) -> None:
    """``WebSocket /transcribe/stream``: the protocol (PROTOCOL_DOC) around a StreamSession. ``service`` is
    app.Service (settings, metrics, transcriber, batchers, stream_model, readiness, active stream count).

    Costs are bounded in wall-clock time as well as in audio: a stream takes a slot only once its header is valid
    (within ``stream_header_timeout_s``), must keep sending audio (pings do not count; less audio than real time by
    more than the idle timeout ends it), may send at most ``stream_max_messages_per_s`` messages and
    ``stream_max_message_seconds`` of audio per message, is read no faster than its audio is transcribed once it is
    ahead of real time (and at most ``stream_max_speed`` times real time), and is transcribed in steps of at most
    STEP_SECONDS of audio. Steps ahead of real time queue as ordinary batcher jobs (admitted against the uploads'
    deadlines), the others as priority jobs. On shutdown every stream stops reading, flushes, sends its summary."""
    from ..batcher import BatcherStopped, QueueFull

    settings, metrics = service.settings, service.metrics
    await ws.accept()
    sent_close = False
    send_timeout = settings.stream_idle_timeout_s

    async def close(code: int, reason: str) -> None:
        nonlocal sent_close
        if not sent_close:
            sent_close = True
            try:  # a close reason has at most 123 bytes; a client that reads nothing must not hold us here
                await asyncio.wait_for(ws.close(code, reason[:120]), 2.0)
            except Exception:  # noqa: BLE001, S110 - the client may be gone already
                pass

    async def send(message: dict) -> None:
        try:
            await asyncio.wait_for(ws.send_text(dumps(message)), send_timeout)
        except TimeoutError:  # the client stopped reading: nothing more can be said to it
            raise StreamError(0, "", "slow_client") from None

    async def say_error(code: int, reason: str, outcome: str) -> None:
        try:
            await asyncio.wait_for(ws.send_text(dumps({"type": "error", "code": code, "outcome": outcome,
                                                       "detail": reason})), 2.0)
        except Exception:  # noqa: BLE001, S110 - the client may be gone
            pass
        await close(code, reason)

    def refusal() -> StreamError | None:
        if service.draining:
            return StreamError(CLOSE_GOING_AWAY, "the service is shutting down; reconnect to another replica",
                               "shutdown")
        if not service.is_ready or getattr(service, "stream_model", None) is None:
            return StreamError(CLOSE_TRY_LATER, "the service is not ready; retry in a second", "not_ready")
        if service.streams_active >= settings.stream_max_concurrent:
            return StreamError(CLOSE_TRY_LATER, f"too many live streams ({service.streams_active}, the limit is "
                                                f"{settings.stream_max_concurrent}); retry later", "too_many")
        return None

    if (e := refusal()) is not None:  # at once, before the header
        metrics.streams.labels(e.outcome).inc()
        return await say_error(e.code, e.reason, e.outcome)
    runner, sm = service.transcriber, service.stream_model
    batcher = service.batchers["transcriber"]
    idle_s, margin = settings.stream_idle_timeout_s, settings.stream_realtime_margin_s
    block_s = sm.block_frames * sm.hop / sm.sample_rate
    step_blocks = max(1, int(STEP_SECONDS / block_s))
    # pacing on transcription: what may stay untranscribed (a step, plus the look-ahead a block needs)
    pending_limit = step_blocks * block_s + sm.window_samples / sm.sample_rate
    session: StreamSession | None = None
    proc: asyncio.Task | None = None
    holding = False  # this stream has a slot
    outcome = "completed"
    try:
        # the header: no slot is held while waiting for it
        try:
            first = await asyncio.wait_for(ws.receive(), settings.stream_header_timeout_s)
        except TimeoutError:
            raise StreamError(CLOSE_POLICY, f"no header within {settings.stream_header_timeout_s:g} s", "idle"
                              ) from None
        if first["type"] == "websocket.disconnect":
            raise StreamError(0, "", "disconnected")
        header = parse_header(first.get("text"), runner.heads, runner.decoding)
        if (e := refusal()) is not None:
            raise e
        try:  # uploads and streams share the transcriber: an overloaded one takes no new stream
            batcher.precheck(settings.request_timeout_s)
        except (QueueFull, BatcherStopped):
            raise StreamError(CLOSE_TRY_LATER, "the service is overloaded; retry later", "overloaded") from None
        service.streams_active += 1
        holding = True
        session = StreamSession(header, sm, runner.pitches, runner.heads)
        frame_bytes = header.bytes_per_frame
        limits = {"max_seconds": settings.stream_max_seconds, "idle_timeout_s": idle_s,
                  "realtime_margin_s": margin, "max_backlog_s": settings.stream_max_backlog_s,
                  "max_message_bytes": settings.stream_max_message_bytes,
                  "max_message_seconds": settings.stream_max_message_seconds,
                  "max_messages_per_s": settings.stream_max_messages_per_s,
                  "max_speed": settings.stream_max_speed, "min_sample_rate": MIN_INPUT_RATE}
        await send(ready_message(runner.name, header, sm, runner.pitches, runner.heads, limits))
        wake, progress = asyncio.Event(), asyncio.Event()
        latency = metrics.stream_latency

        def urgent(blocks: list) -> bool:
            """A step due by now (not ahead of real time beyond the margin) goes before uploads."""
            end_s = (blocks[-1][0] + sm.block_frames) * sm.hop / sm.sample_rate
            return session.ended or service.draining or end_s <= time.monotonic() - session.started + margin

        async def process() -> None:
            assert session is not None
            while True:
                await wake.wait()
                wake.clear()
                while blocks := session.ready(step_blocks):
                    windows = [w for _, w in blocks]
                    while True:
                        now_urgent = urgent(blocks)
                        try:
                            probs = await batcher.submit(windows, settings.request_timeout_s, priority=now_urgent)
                            break
                        except QueueFull:
                            if now_urgent and session.behind_s() > settings.stream_max_backlog_s:
                                raise StreamError(CLOSE_TRY_LATER, "the service is overloaded: the stream fell too "
                                                                   "far behind; retry later", "overloaded") from None
                            await asyncio.sleep(0.05)
                        except TimeoutError:
                            if now_urgent:
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
                    progress.set()
                if session.ended:
                    return

        async def pace() -> None:
            """Back-pressure: stop reading while the client is ahead of real time beyond the margin, until its audio
            is transcribed (at most ``stream_max_speed`` x real time) or real time catches up."""
            nonlocal last_audio
            while not service.draining and not proc.done():
                elapsed = time.monotonic() - session.started
                if session.input_seconds - elapsed - margin <= 0:
                    return
                if (session.input_seconds - elapsed * settings.stream_max_speed - margin <= 0
                        and session.pending_seconds <= pending_limit):
                    return
                progress.clear()
                t0 = time.monotonic()
                try:
                    await asyncio.wait_for(progress.wait(), 0.1)
                except TimeoutError:
                    pass
                metrics.stream_throttled_seconds.inc(time.monotonic() - t0)
                last_audio = time.monotonic()  # paused by us: not idle

        proc = asyncio.create_task(process())
        reason, last_audio = "end", time.monotonic()
        rate, tokens, refilled = settings.stream_max_messages_per_s, settings.stream_max_messages_per_s, last_audio
        recv: asyncio.Task | None = None
        try:
            while True:
                if service.draining:  # checked on every message: a stream that never pauses is told too
                    reason = "shutdown"
                    break
                now = time.monotonic()
                if now - last_audio > idle_s or now - session.started - session.input_seconds > idle_s:
                    reason = "idle"  # no audio for the idle timeout, or that much less than real time
                    break
                if now - session.started > settings.stream_max_seconds + idle_s:
                    reason = "max_duration"
                    break
                if recv is None:
                    recv = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({recv, proc}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                if proc in done:
                    proc.result()  # raises the processor's StreamError
                if recv not in done:
                    continue
                message, recv, now = recv.result(), None, time.monotonic()
                if message["type"] == "websocket.disconnect":
                    raise StreamError(0, "", "disconnected")
                # message rate: a token bucket; beyond it, the next read waits (tiny messages cost nothing more)
                tokens = min(rate, tokens + (now - refilled) * rate) - 1
                refilled = now
                if tokens < 0:
                    metrics.stream_throttled_seconds.inc(-tokens / rate)
                    await asyncio.sleep(-tokens / rate)
                if message.get("bytes") is not None:
                    data = message["bytes"]
                    seconds = len(data) / frame_bytes / header.sample_rate
                    if seconds > settings.stream_max_message_seconds:
                        raise StreamError(CLOSE_TOO_BIG, f"a message of {seconds:.3f} s of audio; the limit is "
                                                         f"{settings.stream_max_message_seconds:g} s per message",
                                          "too_big")
                    left = settings.stream_max_seconds - session.input_seconds
                    cut = int(left * header.sample_rate) * frame_bytes
                    over = len(data) > cut
                    if over:
                        data = data[:max(0, cut - len(session.input.rest))]
                    before = session.input_seconds
                    session.feed(data, now)
                    metrics.stream_audio_seconds.inc(session.input_seconds - before)
                    if session.input_seconds > before:
                        last_audio = now
                    wake.set()
                    if over:
                        reason = "max_duration"
                        break
                    if (behind := session.behind_s()) > settings.stream_max_backlog_s:
                        raise StreamError(CLOSE_TRY_LATER, f"the service is overloaded: the stream fell {behind:.1f} "
                                                           "s behind real time; retry later", "overloaded")
                    await pace()
                    continue
                control = parse_control(message.get("text"))
                if control["type"] == "ping":  # answered, but it does not keep the stream alive: audio does
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
                     "idle": (CLOSE_POLICY, f"no audio for {idle_s:g} s, or {idle_s:g} s less than real time"),
                     "max_duration": (CLOSE_POLICY, f"the stream reached the limit of {settings.stream_max_seconds:g} s"),
                     }[reason]
        outcome = {"end": "completed"}.get(reason, reason)
        await close(code, why)
    except StreamError as e:
        outcome = e.outcome
        if e.code:
            await say_error(e.code, e.reason, e.outcome)
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
        if holding:
            service.streams_active -= 1
        metrics.streams.labels(outcome).inc()


def protocol_description(service: Any) -> dict[str, Any]:
    """GET /transcribe/stream: the protocol and this server's parameters."""
    s = service.settings
    sm: StreamModel | None = service.stream_model
    runner = service.transcriber
    return {"protocol": PROTOCOL_VERSION, "websocket": "/transcribe/stream",
            "model": None if runner is None else runner.name,
            "sample_formats": list(SAMPLE_FORMATS), "max_channels": MAX_CHANNELS, "max_sample_rate": MAX_INPUT_RATE,
            "min_sample_rate": MIN_INPUT_RATE,
            "header_example": {"type": "start", "protocol": PROTOCOL_VERSION, "sample_rate": 48000, "channels": 1,
                               "format": "int16"},
            "latency": None if sm is None else sm.info(),
            "limits": {"max_streams": s.stream_max_concurrent, "active_streams": service.streams_active,
                       "max_seconds": s.stream_max_seconds, "idle_timeout_s": s.stream_idle_timeout_s,
                       "realtime_margin_s": s.stream_realtime_margin_s, "max_backlog_s": s.stream_max_backlog_s,
                       "max_message_bytes": s.stream_max_message_bytes,
                       "max_message_seconds": s.stream_max_message_seconds,
                       "max_messages_per_s": s.stream_max_messages_per_s, "max_speed": s.stream_max_speed,
                       "header_timeout_s": s.stream_header_timeout_s},
            "close_codes": {"1000": "done (after the summary)", "1001": "service shutting down (after a summary)",
                            "1003": "text where audio was expected, or the reverse",
                            "1007": "malformed header, control message or invalid audio",
                            "1008": "no header in time, no audio for the idle timeout, or maximum duration (after a "
                                    "summary, except for the header)",
                            "1009": "message too big (bytes or seconds of audio)", "1011": "internal error",
                            "1013": "too many streams, not ready or overloaded: retry later"},
            "documentation": PROTOCOL_DOC}

