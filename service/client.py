"""A small client for live transcription (protocol 1 of WebSocket /transcribe/stream, see service/stream.py).

    python -m service.client stream recording.wav                 # any file soundfile reads, sent in real time
    python -m service.client stream recording.flac --fast         # as fast as the server reads (its max_speed)
    arecord -q -f S16_LE -r 16000 -c 1 | python -m service.client stream - --sample-rate 16000
    python -m service.client stream song.wav --json > events.jsonl   # every server message, one per line
    python -m service.client stream song.wav --url http://10.0.0.5:8000   # or DCN_URL=http://10.0.0.5:8000

A WAV on stdin is recognised by its header; other stdin is raw little-endian PCM (--sample-rate, --channels,
--format). Notes are printed as the server sends them; the summary (latency, note count) at the end.
Exit status: 0 after the summary, 1 when the server closed the stream with an error, 2 when it cannot connect
(one line on stderr says why).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "DCN_URL"  # the service's address for the clients (also listed in service/settings.py)
NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def note_name(pitch: int) -> str:
    return f"{NAMES[pitch % 12]}{pitch // 12 - 1}"


def _read_exact(f: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def wav_stream_header(f: BinaryIO, first: bytes) -> tuple[int, int, str]:
    """A WAV header read from a pipe (no seeking): (rate, channels, format); ``f`` is left at the samples."""
    data = first + _read_exact(f, 12 - len(first))
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    rate = channels = bits = fmt_tag = None
    while True:
        head = _read_exact(f, 8)
        if len(head) < 8:
            raise ValueError("WAV stream without a data chunk")
        cid, size = head[:4], struct.unpack("<I", head[4:])[0]
        if cid == b"data":
            break
        body = _read_exact(f, size + (size & 1))
        if cid == b"fmt ":
            fmt_tag, channels, rate = struct.unpack("<HHI", body[:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if fmt_tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
                fmt_tag = struct.unpack("<H", body[24:26])[0]
    if (fmt_tag, bits) == (1, 16):
        return rate, channels, "int16"
    if (fmt_tag, bits) == (3, 32):
        return rate, channels, "float32"
    raise ValueError(f"WAV on stdin must be 16-bit PCM or 32-bit float (format {fmt_tag}, {bits} bits)")


def file_chunks(path: str, chunk_ms: float) -> tuple[dict, Iterator[bytes]]:
    import numpy as np
    import soundfile as sf

    f = sf.SoundFile(path)
    block = max(1, int(f.samplerate * chunk_ms / 1000))
    header = {"sample_rate": f.samplerate, "channels": f.channels, "format": "float32"}

    def chunks() -> Iterator[bytes]:
        with f:
            while True:
                x = f.read(block, dtype="float32", always_2d=True)
                if not len(x):
                    return
                yield np.ascontiguousarray(x, "<f4").tobytes()
    return header, chunks()


def stdin_chunks(args: argparse.Namespace) -> tuple[dict, Iterator[bytes]]:
    f = sys.stdin.buffer
    first = _read_exact(f, 4)
    if first == b"RIFF":
        rate, channels, fmt = wav_stream_header(f, first)
        pending = b""
    else:
        if not args.sample_rate:
            raise SystemExit("raw PCM on stdin needs --sample-rate (and --channels, --format if not 1, int16)")
        rate, channels, fmt, pending = args.sample_rate, args.channels, args.format, first
    frame_bytes = channels * (2 if fmt == "int16" else 4)

    def chunks() -> Iterator[bytes]:
        if pending:
            yield pending
        while True:
            data = f.read1(1 << 16) if hasattr(f, "read1") else f.read(4096 * frame_bytes)
            if not data:
                return
            yield data
    return {"sample_rate": rate, "channels": channels, "format": fmt}, chunks()


def stream_url(url: str) -> str:
    """The service's address (http://host:port) or the stream's (ws://host:port/transcribe/stream) -> the latter."""
    url = url.strip().rstrip("/")
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            url = ws + url[len(http):]
    if "://" not in url:
        url = "ws://" + url
    return url if url.endswith("/transcribe/stream") else url + "/transcribe/stream"


def stream(args: argparse.Namespace) -> int:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
    from websockets.sync.client import connect

    if args.source == "-":  # sent as it arrives (read1 returns what the pipe has)
        header, chunks = stdin_chunks(args)
    else:
        try:
            header, chunks = file_chunks(args.source, args.chunk_ms)
        except (OSError, RuntimeError) as e:  # missing file; soundfile's LibsndfileError is a RuntimeError
            sys.stderr.write(f"error: {args.source}: cannot read audio: {e}\n")
            return 2
    header = {"type": "start", "protocol": 1, **header, "frames": bool(args.json and args.frames)}
    for key in ("onset_threshold", "frame_threshold", "min_note_length"):
        if getattr(args, key) is not None:
            header[key] = getattr(args, key)
    bytes_per_second = header["sample_rate"] * header["channels"] * (2 if header["format"] == "int16" else 4)
    out = sys.stdout
    status = {"code": 0}

    def show(m: dict[str, Any]) -> None:
        if args.json:
            out.write(json.dumps(m) + "\n")
        elif m["type"] == "ready":
            lat = m["latency"]
            out.write(f"# {m['model']}: {len(m['pitches'])} pitches at {m['frame_rate']:g} frames/s; look-ahead "
                      f"{lat['algorithmic_latency_s'] * 1000:.0f} ms (blocks of {lat['block_frames']} frames)\n")
        elif m["type"] == "note_on":
            out.write(f"{m['onset']:9.3f}  on   {note_name(m['pitch']):>4} ({m['pitch']})\n")
        elif m["type"] == "note_off" and args.offs:
            out.write(f"{m['offset']:9.3f}  off  {note_name(m['pitch']):>4} ({m['pitch']})  "
                      f"{m['offset'] - m['onset']:.3f} s, confidence {m['confidence']:.2f}\n")
        elif m["type"] == "summary":
            lat = m.get("latency") or {}
            out.write(f"# {len(m['notes'])} notes in {m['duration']:.2f} s ({m['reason']}); frame latency "
                      f"p50 {lat.get('p50_s', float('nan')) * 1000:.0f} ms, p99 "
                      f"{lat.get('p99_s', float('nan')) * 1000:.0f} ms\n")
        elif m["type"] == "error":
            sys.stderr.write(f"error {m['code']}: {m['detail']}\n")
            status["code"] = 1
        out.flush()

    url = stream_url(args.url)
    try:
        ws = connect(url, max_size=None, open_timeout=args.timeout)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        sys.stderr.write(f"error: cannot connect to {url}: {why} (is the service running? start it with dcn-serve; "
                         f"--url or {URL_VARIABLE} give another address)\n")
        return 2
    with ws:
        ws.send(json.dumps(header))
        ready = json.loads(ws.recv(timeout=args.timeout))
        show(ready)
        # --fast: no further ahead than the server reads (max_speed x real time beyond its margin) plus a second.
        # Written faster, audio waits in the sockets' buffers (minutes of it) and so does this client's keep-alive
        # ping: its pong comes too late and the client drops its own connection (1011 / 1006).
        limits = ready.get("limits") or {}
        speed = float(limits.get("max_speed") or 0) if args.fast else 1.0
        ahead = float(limits.get("realtime_margin_s") or 0) + 1.0 if args.fast else 0.0

        def send_all() -> None:
            t0, sent = time.monotonic(), 0
            try:
                for data in chunks:
                    if speed > 0 and args.source != "-":  # files: paced; stdin: as it comes
                        wait = t0 + (sent / bytes_per_second - ahead) / speed - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                    ws.send(data)
                    sent += len(data)
                ws.send(json.dumps({"type": "end"}))
            except ConnectionClosed:
                pass

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        try:
            while True:
                m = json.loads(ws.recv())
                show(m)
                if m["type"] == "summary":
                    break
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code not in (1000,):
                sys.stderr.write(f"closed {e.rcvd.code}: {e.rcvd.reason}\n")
                status["code"] = 1
        except KeyboardInterrupt:  # Ctrl-C on a live input: end the stream properly, print the summary
            ws.send(json.dumps({"type": "end"}))
            for raw in ws:
                m = json.loads(raw)
                show(m)
                if m["type"] == "summary":
                    break
    return status["code"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stream", help="stream a file or stdin to /transcribe/stream and print the notes")
    p.add_argument("source", help="audio file, or - for stdin (a WAV stream, or raw PCM with --sample-rate)")
    p.add_argument("--url", default=os.environ.get(URL_VARIABLE) or DEFAULT_URL,
                   help=f"the service (http://host:port) or the stream's ws:// URL; default ${URL_VARIABLE}, else "
                        f"{DEFAULT_URL}")
    p.add_argument("--fast", action="store_true", help="send a file as fast as the server reads it (its max_speed x real "
                                                       "time), not in real time")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio per message (files)")
    p.add_argument("--sample-rate", type=int, help="raw stdin: sample rate")
    p.add_argument("--channels", type=int, default=1, help="raw stdin: channels")
    p.add_argument("--format", choices=["int16", "float32"], default="int16", help="raw stdin: sample format")
    p.add_argument("--onset-threshold", type=float)
    p.add_argument("--frame-threshold", type=float)
    p.add_argument("--min-note-length", type=float)
    p.add_argument("--offs", action="store_true", help="print note_off events too")
    p.add_argument("--json", action="store_true", help="print every server message as a JSON line")
    p.add_argument("--frames", action="store_true", help="with --json: ask for frame probabilities too")
    p.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    # bounds (the server checks the thresholds too; these fail before connecting)
    for name, lo, hi in (("chunk_ms", 1, 10_000), ("sample_rate", 1, 384_000), ("channels", 1, 64),
                         ("onset_threshold", 0, 1), ("frame_threshold", 0, 1), ("min_note_length", 0, 10),
                         ("timeout", 0.1, 3600)):
        value = getattr(args, name)
        if value is not None and not lo <= value <= hi:
            parser.error(f"--{name.replace('_', '-')} {value:g} is outside [{lo:g}, {hi:g}]")
    return stream(args)


if __name__ == "__main__":
    sys.exit(main())
