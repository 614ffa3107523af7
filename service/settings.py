"""Service configuration: environment variables prefixed ``DCN_`` (e.g. ``DCN_DEVICE=cuda``).

A ``DCN_`` variable that is not a setting below (a misspelling such as ``DCN_DEVIC``) stops startup, as does a value
a setting does not accept; ``settings_error`` turns either into one line that names the variable."""
from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "models" / "checkpoints"
PREFIX = "DCN_"
# DCN_ variables of the project's other tools (tests, containers, training), not of the service: never refused.
OTHER_TOOLS = {"DCN_ARTIFACTS", "DCN_CHROMIUM", "DCN_COMPILED_BN", "DCN_CONTAINER_CACHE", "DCN_HOST_ADDRESS",
               "DCN_HOST_PORT", "DCN_SAMPLES_DIR", "DCN_URL", "DCN_BASE_SUITE"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    # Models. An empty value: that model is not served (its routes answer 404); at least one must be.
    classifier_checkpoint: Path | None = Field(CHECKPOINT_DIR / "cifar10_complex.pt",
                                               description="checkpoint served at /classify; empty: not served")
    transcriber_checkpoint: Path | None = Field(CHECKPOINT_DIR / "musicnet_complex_v5.pt",
                                                description="checkpoint served at /transcribe and "
                                                            "/transcribe/stream; empty: not served")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available, else cpu")
    classify_tta: bool = Field(True, description="average each image with its mirror image (as the model card's "
                                                 "accuracy was measured); false doubles /classify throughput")
    warmup: bool = Field(True, description="run one full-size batch per model before reporting ready")
    torch_threads: int = Field(0, ge=0, description="CPU threads per forward pass; 0 = torch's default (one per "
                                                    "core). 1 can be much faster on a CPU shared with other jobs")

    # Dynamic batching (per model). max_batch_size=1 disables batching.
    classify_max_batch_size: int = Field(64, ge=1, description="images per forward pass")
    classify_max_batch_delay_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill")
    transcribe_max_batch_size: int = Field(16, ge=1, description="audio windows per forward pass")
    transcribe_max_batch_delay_ms: float = Field(10.0, ge=0, description="how long a batch waits to fill")
    max_queue_size: int = Field(1024, ge=1, description="pending items (images or windows) per model; more: 503")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline from the end of the upload to the answer "
                                                             "(decoding and inference); past it: 504")
    admission_margin: float = Field(0.8, gt=0, le=1, description="a job is refused (503) when its estimated finish "
                                                                 "(queue ahead of it, round-robin) is later than "
                                                                 "this fraction of its time left to the deadline")

    # Upload limits
    max_upload_bytes: int = Field(64 * 2**20, ge=1, description="request body size; enforced while reading (413)")
    max_files: int = Field(64, ge=1, description="images per /classify request (413)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="decoded width*height per image (decompression bombs)")
    max_image_decode_bytes: int = Field(320_000_000, ge=1, description="memory to decode one image (decoded + RGB "
                                                                       "copy, from its header), 400 over it")
    max_request_decode_bytes: int = Field(2**30, ge=1, description="the same summed over a /classify request's "
                                                                   "images, checked before any is decoded (413)")
    decode_concurrency: int = Field(2, ge=1, description="uploads decoded at once (a thread pool); the others "
                                                         "wait, within their deadline. Bounds decode memory")
    max_audio_seconds: float = Field(600.0, gt=0, description="recording length per /transcribe request (413)")

    # Live transcription (WebSocket /transcribe/stream)
    stream_max_concurrent: int = Field(16, ge=0, description="open live streams; more are closed at once (1013)")
    stream_block_frames: int = Field(10, ge=1, description="frames per streamed block (latency vs CPU); a divisor "
                                                           "of the model's frames_per_window, the nearest below")
    stream_max_seconds: float = Field(3600.0, gt=0, description="audio per stream; then flushed, summary, closed "
                                                                "(1008)")
    stream_idle_timeout_s: float = Field(10.0, gt=0, description="no message (header or audio) for this long: "
                                                                 "flushed, summary, closed (1008)")
    stream_realtime_margin_s: float = Field(1.0, ge=0, description="how far a client may send ahead of real time; "
                                                                   "beyond it the server stops reading for a while "
                                                                   "(back-pressure)")
    stream_max_backlog_s: float = Field(5.0, gt=0, description="audio received but not yet transcribed; beyond it "
                                                               "the stream is closed as overloaded (1013)")
    stream_max_message_bytes: int = Field(1 << 20, ge=4096, description="one WebSocket message (1009 beyond)")
    stream_upload_batch_size: int = Field(1, ge=1, description="upload windows per forward pass while live streams "
                                                               "are open (stream windows go first, on their own): "
                                                               "bounds how long a stream waits behind uploads")
    stream_header_timeout_s: float = Field(3.0, gt=0, description="a live stream must send its header within this "
                                                                  "(1008); it takes a stream slot only then")
    stream_max_message_seconds: float = Field(2.0, gt=0, description="audio in one WebSocket message (1009 beyond)")
    stream_max_messages_per_s: float = Field(200.0, gt=0, description="messages a stream may send per second "
                                                                      "(bursts of as many); faster ones are read "
                                                                      "more slowly (back-pressure)")
    stream_max_speed: float = Field(10.0, ge=1, description="a client ahead of real time (beyond the margin) is "
                                                            "read as fast as its audio is transcribed, at most this "
                                                            "many times real time; 1: strictly real time")

    # Connections (python -m service; uvicorn with the h11 parser)
    max_header_bytes: int = Field(16_384, ge=1024, description="request line + headers; over it: 431, closed")
    max_header_count: int = Field(100, ge=8, description="headers per request; over it: 431")
    header_timeout_s: float = Field(10.0, gt=0, description="a connection must send a complete request head "
                                                            "within this (slow or silent clients are closed)")
    header_timeout_pressure_s: float = Field(1.0, gt=0, description="header timeout for new and idle connections "
                                                                     "while more than half of max_connections are "
                                                                     "open")
    body_timeout_s: float = Field(15.0, gt=0, description="longest pause between body chunks (408)")
    upload_timeout_s: float = Field(120.0, gt=0, description="whole upload (408); the deadline starts after it")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")
    max_connections: int = Field(512, ge=1, description="open connections and requests; beyond: 503 at once")
    shutdown_grace_s: float = Field(20.0, ge=0, description="on SIGTERM: /readyz 503 and new requests 503 at once; "
                                                            "requests in flight get this long to finish, then 503")

    # Origins: which web pages may use the service (DNS rebinding, cross-site uploads and streams)
    allowed_origins: list[str] = Field(default_factory=list, description="origins (scheme://host[:port]) besides "
                                       "the service's own whose pages may open the live stream or POST uploads; "
                                       "'*' allows any. Requests without an Origin header (scripts) are not "
                                       "affected")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host header values accepted (names, no "
                                     "port; '*' any). Empty: any, except that a server bound to a loopback "
                                     "address accepts only localhost names (DNS rebinding)")

    # Server (python -m service)
    host: str = Field("127.0.0.1", description="bind address (--host overrides)")
    port: int = Field(8000, ge=0, le=65535, description="port (--port overrides)")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="debug, info, warning, error, critical")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line (with the "
                                                                    "request id), for log collectors")

    @field_validator("classifier_checkpoint", "transcriber_checkpoint", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _something_served(self) -> Settings:
        if self.classifier_checkpoint is None and self.transcriber_checkpoint is None:
            raise ValueError("DCN_CLASSIFIER_CHECKPOINT and DCN_TRANSCRIBER_CHECKPOINT are both empty: nothing to "
                             "serve")
        unknown = unknown_variables(os.environ)
        if unknown:
            raise ValueError(unknown[0])
        return self


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per DCN_ variable that is no setting (with the closest setting's name when there is one)."""
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    out = []
    for name in sorted(environ):
        if name.upper().startswith(PREFIX) and name.upper() not in known | OTHER_TOOLS:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            out.append(f"{name} is not a setting{hint}; the settings are in service/settings.py and the README")
    return out


def settings_error(e: ValidationError) -> str:
    """A settings ValidationError as one line: the variable, what is wrong, the value given."""
    first = e.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "__root__"]
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:
        return msg
    given = first.get("input")
    shown = f" (got {given!r})" if isinstance(given, (str, int, float)) else ""
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{PREFIX}{loc[0].upper()}: {msg}{shown}{more}"
