"""Protocol 1 of ``/transcribe/stream``: close codes, the header, control messages, the documentation."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
PROBABILITY_DECIMALS = 3  # as POST /transcribe's JSON
TIME_DECIMALS = 6
MAX_HEADER_BYTES = 4096
SAMPLE_FORMATS = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MAX_INPUT_RATE = 384_000
MIN_INPUT_RATE = 8_000  # below it a few bytes would be taken for minutes of audio
MAX_CHANNELS = 32
_RESAMPLE_SCALE = 2.0 ** -64  # as service/decode.py: soxr HQ computes in float32

# WebSocket close codes (RFC 6455) used by the stream.
CLOSE_NORMAL = 1000        # after the summary
CLOSE_GOING_AWAY = 1001    # the service is shutting down (the summary is sent first)
CLOSE_UNSUPPORTED = 1003   # a text message where audio was expected, or the reverse
CLOSE_INVALID = 1007       # malformed header, bad samples (NaN, inf, far over full scale), a partial sample at the end
CLOSE_POLICY = 1008        # idle / less audio than real time, no header in time, maximum duration (summary first)
CLOSE_TOO_BIG = 1009       # a message over the size limit (bytes: uvicorn closes it; seconds of audio: we do)
CLOSE_INTERNAL = 1011      # the model failed or produced non-finite probabilities
CLOSE_TRY_LATER = 1013     # too many streams, not ready, or too far behind (overloaded)


class StreamError(Exception):
    """Ends a stream with a close code and a reason (also sent first as an ``error`` message)."""

    def __init__(self, code: int, reason: str, outcome: str, summary: bool = False) -> None:
        super().__init__(reason)
        self.code, self.reason, self.outcome, self.summary = code, reason, outcome, summary


@dataclass
class StreamHeader:
    sample_rate: int
    channels: int
    sample_format: str
    decoding: dict[str, float]
    send_frames: bool = True
    monophonic: bool = False

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
    try:
        h = json_object(text)
    except ValueError as e:
        raise bad(str(e)) from None
    known = {"protocol", "type", "sample_rate", "channels", "format", "onset_threshold", "frame_threshold",
             "min_note_length", "frames", "monophonic"}
    unknown = sorted(set(h) - known)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}")
    if h.get("type", "start") != "start":
        raise bad(f"type must be 'start', got {_short(h.get('type'))}")
    if h.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise bad(f"protocol {_short(h.get('protocol'))} is not supported; this server speaks protocol "
                  f"{PROTOCOL_VERSION}")
    sr, ch, fmt = h.get("sample_rate"), h.get("channels", 1), h.get("format", "int16")
    if isinstance(sr, bool) or not isinstance(sr, int) or not MIN_INPUT_RATE <= sr <= MAX_INPUT_RATE:
        raise bad(f"sample_rate must be an integer from {MIN_INPUT_RATE} to {MAX_INPUT_RATE} Hz, got {_short(sr)}")
    if isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= MAX_CHANNELS:
        raise bad(f"channels must be an integer from 1 to {MAX_CHANNELS}, got {_short(ch)}")
    if not isinstance(fmt, str) or fmt not in SAMPLE_FORMATS:
        raise bad(f"format must be one of {', '.join(SAMPLE_FORMATS)} (little-endian), got {_short(fmt)}")
    decoding = dict(defaults)
    for key, hi in (("onset_threshold", 1.0), ("frame_threshold", 1.0), ("min_note_length", 60.0)):
        v = h.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
            raise bad(f"{key} must be a number from 0 to {hi:g}, got {_short(v)}")
        decoding[key] = float(v)
    if "onset" not in model_heads and decoding["frame_threshold"] > decoding["onset_threshold"]:
        raise bad(f"frame_threshold ({decoding['frame_threshold']:g}) must not exceed onset_threshold "
                  f"({decoding['onset_threshold']:g}) for this frame-only model")
    frames, mono = h.get("frames", True), h.get("monophonic", False)
    if not isinstance(frames, bool):
        raise bad(f"frames must be true or false, got {_short(frames)}")
    if not isinstance(mono, bool):
        raise bad(f"monophonic must be true or false, got {_short(mono)}")
    if mono and "onset" not in model_heads:
        raise bad("monophonic decoding needs a model with an onset head")
    return StreamHeader(sr, ch, fmt, decoding, frames, mono)



def _short(value: Any) -> str:
    """A client's value in an error message: its repr, cut (a reason must fit a close frame)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def json_object(text: str) -> dict[str, Any]:
    """A text message -> a JSON object; ValueError saying what is wrong (too long, not JSON, too deep, not an
    object). Never anything else: a malformed message must be a 1007, not a traceback."""
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"longer than {MAX_HEADER_BYTES} bytes")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - one error type for every malformed message
    return value


def parse_control(text: str | None) -> dict[str, Any]:
    """A text message after the header: ``{"type": "end"}`` or ``{"type": "ping", "time": t}`` (``t`` a finite
    number, a string or absent). 1003 for anything else that is text, 1007 for a malformed one."""
    expected = 'text messages after the header must be {"type": "end"} or {"type": "ping"}; audio is binary'
    if text is None:
        raise StreamError(CLOSE_UNSUPPORTED, expected, "bad_message")
    try:
        control = json_object(text)
    except ValueError as e:  # plain text is not a control message (1003); a broken one is malformed (1007)
        plain = str(e).startswith(("not JSON", "not a JSON object"))
        raise StreamError(CLOSE_UNSUPPORTED if plain else CLOSE_INVALID,
                          expected if plain else f"bad control message: {e}", "bad_message") from None
    kind = control.get("type")
    if not isinstance(kind, str) or kind not in ("end", "ping"):
        raise StreamError(CLOSE_UNSUPPORTED, expected, "bad_message")
    t = control.get("time")
    if kind == "ping" and not (t is None or (isinstance(t, str) and len(t) <= 64) or (
            isinstance(t, int) and not isinstance(t, bool)) or (isinstance(t, float) and math.isfinite(t))):
        raise StreamError(CLOSE_INVALID, f"bad ping: time must be a finite number or a short string, got "
                                         f"{_short(t)}", "bad_message")
    return control


def dumps(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)



PROTOCOL_DOC = """\
**Live transcription, protocol 1.** Open a WebSocket to `/transcribe/stream` (`ws://` or `wss://`).

Client -> server:
1. One text message, the header (JSON), within the header timeout (3 s): `{"type": "start", "protocol": 1,
   "sample_rate": 48000, "channels": 1, "format": "int16"}` (8 to 384 kHz). `format`: `int16` or `float32`, little-endian, channels interleaved, full scale 1.0 for
   float32. Optional: `onset_threshold`, `frame_threshold`, `min_note_length` (as POST /transcribe; default the
   model's calibrated values), `monophonic` (true: at most one note at a time, as POST /transcribe?monophonic=true)
   and `frames` (false: note events only, no frame probabilities).
2. Binary messages of audio (a sample frame may be split across messages), sent as it is recorded: at most
   `max_message_seconds` of audio and `max_message_bytes` per message, at most `max_messages_per_s` messages per
   second (faster ones are read more slowly). Audio keeps the stream open; pings do not.
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

Close codes: 1000 done; 1001 the service is shutting down (after a summary: on shutdown every stream stops being
read, its tail is transcribed and its summary sent); 1003 text where audio was expected or the reverse; 1007 a
malformed header or control message, or invalid audio (NaN, inf, float32 over 1000 x full scale, a partial sample
frame at `end`); 1008 no header within the header timeout, no audio for the idle timeout or that much less audio
than real time, or the maximum duration reached (after a summary, except for the header); 1009 a message over the
size limit (bytes or seconds of audio); 1011 internal error; 1013 too many streams, not ready, or overloaded
(retry later). A client that sends faster than real time by more than the margin is slowed down, never dropped:
the server reads it no faster than it transcribes it (at most `max_speed` x real time; TCP back-pressure).
"""


