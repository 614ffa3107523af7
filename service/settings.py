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
    transcriber_checkpoint: Path = Field(CHECKPOINT_DIR / "musicnet_complex.pt",
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
    request_timeout_s: float = Field(30.0, gt=0, description="deadline from arrival to answer; past it: 504")

    # Upload limits
    max_upload_bytes: int = Field(64 * 2**20, ge=1, description="request body size; enforced while reading (413)")
    max_files: int = Field(64, ge=1, description="images per /classify request (413)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="decoded width*height per image (decompression bombs)")
    max_audio_seconds: float = Field(600.0, gt=0, description="recording length per /transcribe request (413)")

    # Server (python -m service)
    host: str = Field("127.0.0.1", description="bind address (--host overrides)")
    port: int = Field(8000, ge=0, le=65535, description="port (--port overrides)")
    log_level: str = Field("info", description="debug, info, warning, error")
