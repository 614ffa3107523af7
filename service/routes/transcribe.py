"""POST /transcribe (recordings -> frame probabilities and notes, through the transcriber's batcher) and the
live stream (WebSocket /transcribe/stream, protocol in service/stream.py). Notes are decoded by
``models.inference`` as the dcn-transcribe command and ``transcribe_file`` decode them."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile, WebSocket
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from models.inference import BOUNDS, decode, dumps, resolve_decoding, transcription_json
from models.transcription import notes_to_csv, notes_to_midi, transcription_npz

from ..decode import DecodeError
from ..responses import BINARY, UPLOAD_ERRORS, NonFiniteOutput, error_doc
from ..schemas import TranscribeResponse
from ..state import Service, start_deadline
from ..stream import PROTOCOL_DOC, protocol_description, serve_stream

# format -> (media type, file extension of the attachment; None: inline JSON). "mid" and "midi" are one format.
FORMATS = {"json": ("application/json", None), "npz": ("application/octet-stream", "npz"),
           "midi": ("audio/midi", "mid"), "mid": ("audio/midi", "mid"), "csv": ("text/csv", "csv")}
CLOSE_POLICY = 1008


def _option(name: str, description: str) -> Any:
    lo, hi = BOUNDS[name]
    return Query(None, ge=lo, le=hi, description=description)


def add_routes(r: FastAPI, service: Service) -> None:
    settings = service.settings

    @r.post("/transcribe", response_model=TranscribeResponse,
            summary="Transcribe recordings (WAV, FLAC, OGG, MP3; any rate; mono or stereo)",
            responses={**UPLOAD_ERRORS,
                       200: {"description": "JSON (default; several files: {model, results: [one body per file, "
                                            "with its filename]}); a NumPy .npz archive of the same arrays, float32 "
                                            "(format=npz); a MIDI file (format=midi or mid); or the notes as CSV "
                                            "with the header onset,offset,pitch,confidence (format=csv). The binary "
                                            "formats take one file per request",
                             "content": {"application/octet-stream": BINARY, "audio/midi": BINARY,
                                         "text/csv": {"schema": {"type": "string"},
                                                      "example": "onset,offset,pitch,confidence\n"
                                                                 "0.26,0.74,69,0.9312\n"}}},
                       422: {"description": "invalid or unknown parameters; frame_threshold over onset_threshold "
                                            "for a frame-only model; several files with a binary format"},
                       500: error_doc("internal error, e.g. the model produced non-finite probabilities")})
    async def transcribe(
            request: Request,
            file: Annotated[list[UploadFile], File(description="audio file; repeat the field for several "
                                                               "(format=json only)")],
            onset_threshold: float | None = _option(
                "onset_threshold", "a note starts where the onset probability (frame-only models: the frame "
                                   "probability) reaches this; default: the model's calibrated value (GET /models, "
                                   "decoding)"),
            frame_threshold: float | None = _option(
                "frame_threshold", "a note lasts while the frame probability stays above this; default: the "
                                   "model's calibrated value"),
            min_note_length: float | None = _option(
                "min_note_length", "shorter notes are dropped (SECONDS, at most 10; Basic Pitch's "
                                   "minimum_note_length is milliseconds); default: the model's calibrated value"),
            minimum_frequency: float | None = _option("minimum_frequency", "Hz: notes below are dropped"),
            maximum_frequency: float | None = _option("maximum_frequency", "Hz: notes above are dropped"),
            midi_tempo: float = Query(120.0, gt=0, le=1000, description="format=midi: tempo written in the file "
                                                                        "(beats per minute; times are in seconds)"),
            monophonic: bool = Query(False, description="at most one note at a time (a voice, a solo wind or "
                                                        "string line)"),
            pitch_bends: bool = Query(False, description="each note's fine pitch: per-frame cents in the JSON notes "
                                                         "(pitch_bends), pitch-wheel events in MIDI (a channel per "
                                                         "sounding note)"),
            frames: bool = Query(True, description="format=json: false leaves out times, pitches, probabilities "
                                                   "and onsets (notes and decoding only: a few KB)"),
            format: Literal["json", "npz", "midi", "mid", "csv"] = Query("json", description="response format"),
    ) -> Response:
        deadline = start_deadline(request)  # the upload is complete: the deadline counts from here
        runner = service.runner("transcriber")
        service.check_ready()
        if len(file) > settings.max_files:
            raise HTTPException(413, f"{len(file)} files; the limit is {settings.max_files} per request")
        if len(file) > 1 and format != "json":
            raise HTTPException(422, f"format={format} answers with one file; {len(file)} were sent. Send one file "
                                     "per request, or use format=json for several")
        try:
            decoding = resolve_decoding(runner.model, runner.meta, onset_threshold=onset_threshold,
                                        frame_threshold=frame_threshold, min_note_length=min_note_length,
                                        minimum_frequency=minimum_frequency, maximum_frequency=maximum_frequency,
                                        monophonic=monophonic, pitch_bends=pitch_bends)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        service.precheck("transcriber")  # overloaded: refuse before spending CPU on decoding
        datas = [await f.read() for f in file]
        costs = [c for c in [await run_in_threadpool(runner.upload_cost, d) for d in datas] if c is not None]
        declared_s = sum(c[0] for c in costs) * runner.model.frames_per_window * runner.model.hop_length \
            / runner.sample_rate
        if costs and declared_s <= settings.max_audio_seconds:  # long audio refused from the headers, before decoding
            # (over the length limit: decoding answers 413 from the header, a client error, not a retry-later 503)
            service.precheck("transcriber", (sum(c[0] for c in costs), sum(c[1] for c in costs)))
        names = [f.filename or f"file{i}" for i, f in enumerate(file)]

        def decode_all(should_stop: Callable[[], str | None]) -> list[tuple[torch.Tensor, int, float]]:
            # The recording-length limit is per request: each file gets what the ones before it left.
            out, left = [], settings.max_audio_seconds
            for name, data in zip(names, datas):
                try:
                    out.append(runner.decode(data, left, should_stop))
                except DecodeError as e:
                    raise DecodeError(e.status_code, e.detail if len(datas) == 1 else f"{name}: {e.detail}"
                                      ) from None
                left -= out[-1][2]
            return out

        decoded = await service.decode(request, "transcriber", deadline, decode_all)
        datas.clear()  # the uploads are decoded: free them before inference
        windows = [w for d in decoded for w in d[0]]
        window_probs = await service.run_batched(request, "transcriber", windows, deadline)

        def finish() -> bytes:
            bodies, start = [], 0
            for name, (w, n_frames, duration) in zip(names, decoded):
                t = runner.stitch(window_probs[start: start + len(w)], n_frames)
                start += len(w)
                for head, p in (("frame", t.probabilities), ("onset", t.onsets)):
                    if p is not None and not np.isfinite(p).all():
                        raise NonFiniteOutput(f"{int((~np.isfinite(p)).sum())} non-finite {head} probabilities")
                notes = decode(t, decoding)
                if format in ("midi", "mid"):
                    return notes_to_midi(notes, tempo_bpm=midi_tempo)
                if format == "csv":
                    return notes_to_csv(notes).encode()
                if format == "npz":
                    return transcription_npz(t, notes, duration, runner.sample_rate, runner.frame_rate, decoding)
                bodies.append(transcription_json(runner.name, duration, runner.sample_rate, runner.frame_rate, t, decoding, notes,
                                                 frames, extra={"filename": name} if len(names) > 1 else None))
            try:
                return dumps(bodies[0] if len(bodies) == 1 else {"model": runner.name, "results": bodies})
            except ValueError as e:  # NaN / inf past the check above: never a 200 with invalid JSON
                raise NonFiniteOutput(str(e)) from None

        body = await run_in_threadpool(finish)
        media_type, ext = FORMATS[format]
        headers = {}
        if ext:
            # Only safe characters in the header: the client's file name could hold quotes or non-Latin-1 text.
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(file[0].filename or "").stem) or "transcription"
            headers["Content-Disposition"] = f'attachment; filename="{stem}.{ext}"'
        return Response(body, media_type=media_type, headers=headers)

    @r.get("/transcribe/stream", summary="Live transcription over a WebSocket: the protocol",
           description=PROTOCOL_DOC)
    async def transcribe_stream_protocol() -> dict[str, Any]:
        service.runner("transcriber")  # 404 when the transcriber is not served
        return protocol_description(service)

    @r.websocket("/transcribe/stream")
    async def transcribe_stream(websocket: WebSocket) -> None:
        if not service.served("transcriber"):
            detail = "the transcriber is not served by this instance (DCN_TRANSCRIBER_CHECKPOINT is empty)"
            await websocket.accept()
            await websocket.send_text(json.dumps({"type": "error", "code": CLOSE_POLICY, "outcome": "not_served",
                                                  "detail": detail}))
            await websocket.close(CLOSE_POLICY, detail[:120])
            return
        await serve_stream(websocket, service)

