"""Service configuration: environment variables prefixed ``DCN_`` (e.g. ``DCN_DEVICE=cuda``)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "models" / "checkpoints"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DCN_", extra="ignore")

    # Models
    classifier_checkpoint: Path = Field(CHECKPOINT_DIR / "cifar10_complex.pt",
                                        description="checkpoint served at /classify")
    transcriber_checkpoint: Path = Field(CHECKPOINT_DIR / "musicnet_complex_v2.pt",
                                         description="checkpoint served at /transcribe")
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

    # Connections (python -m service; uvicorn with the h11 parser)
    max_header_bytes: int = Field(16_384, ge=1024, description="request line + headers; over it: 431, closed")
    max_header_count: int = Field(100, ge=8, description="headers per request; over it: 431")
    header_timeout_s: float = Field(10.0, gt=0, description="a connection must send a complete request head "
                                                            "within this (slow or silent clients are closed)")
    body_timeout_s: float = Field(15.0, gt=0, description="longest pause between body chunks (408)")
    upload_timeout_s: float = Field(120.0, gt=0, description="whole upload (408); the deadline starts after it")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")
    max_connections: int = Field(512, ge=1, description="open connections and requests; beyond: 503 at once")
    shutdown_grace_s: float = Field(20.0, ge=0, description="on SIGTERM: /readyz 503 and new requests 503 at once; "
                                                            "requests in flight get this long to finish, then 503")

    # Server (python -m service)
    host: str = Field("127.0.0.1", description="bind address (--host overrides)")
    port: int = Field(8000, ge=0, le=65535, description="port (--port overrides)")
    log_level: str = Field("info", description="debug, info, warning, error")

    # Hardening, round two (issue 21): connections, live streams, origins
    header_timeout_pressure_s: float = Field(1.0, gt=0, description="header timeout for new and idle connections "
                                                                     "while more than half of max_connections are "
                                                                     "open")
    stream_header_timeout_s: float = Field(3.0, gt=0, description="a live stream must send its header within this "
                                                                  "(1008); it takes a stream slot only then")
    stream_max_message_seconds: float = Field(2.0, gt=0, description="audio in one WebSocket message (1009 beyond)")
    stream_max_messages_per_s: float = Field(200.0, gt=0, description="messages a stream may send per second "
                                                                      "(bursts of as many); faster ones are read "
                                                                      "more slowly (back-pressure)")
    allowed_origins: list[str] = Field(default_factory=list, description="origins (scheme://host[:port]) besides "
                                       "the service's own whose pages may open the live stream or POST uploads; "
                                       "'*' allows any. Requests without an Origin header (scripts) are not "
                                       "affected")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host header values accepted (names, no "
                                     "port; '*' any). Empty: any, except that a server bound to a loopback "
                                     "address accepts only localhost names (DNS rebinding)")
    stream_max_speed: float = Field(10.0, ge=1, description="a client ahead of real time (beyond the margin) is "
                                                            "read as fast as its audio is transcribed, at most this "
                                                            "many times real time; 1: strictly real time")
