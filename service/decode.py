"""Uploads -> model inputs, with limits. Formats are sniffed from the bytes; the client's content type is not trusted.

Every failure is a ``DecodeError`` carrying the HTTP status the client should see (400 bad data,
413 over a limit, 415 not a supported format) and a message that says what was wrong.
These functions are CPU-bound and blocking: call them from a worker thread.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageOps

IMAGE_FORMATS = {"PNG", "JPEG", "BMP", "GIF", "WEBP"}
# libsndfile major formats (SoundFile.format); MP3 reads as "MP3" or "MPEG"; WAVEX/RF64 are WAV variants.
AUDIO_FORMATS = {"WAV", "WAVEX", "RF64", "FLAC", "OGG", "MP3", "MPEG"}
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 32
_BLOCK_FRAMES = 1 << 18


class DecodeError(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int) -> torch.Tensor:
    """Image file bytes -> uint8 tensor (3, H, W), RGB, resized to ``size`` = (H, W)."""
    if not data:
        raise DecodeError(400, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise DecodeError(400, f"image too large to decode (decompression bomb?): {e}") from None
    except Exception:  # noqa: BLE001 - PIL signals "not an image" with many exception types
        raise DecodeError(415, "not an image in a supported format (PNG, JPEG, BMP, GIF, WebP)") from None
    if img.format not in IMAGE_FORMATS:
        raise DecodeError(415, f"unsupported image format {img.format}; use PNG, JPEG, BMP, GIF or WebP")
    width, height = img.size
    # Check the declared size before decoding: a few KB of PNG can claim gigapixels.
    if width * height > max_pixels:
        raise DecodeError(400, f"image is {width}x{height} = {width * height} pixels, over the limit of "
                               f"{max_pixels} pixels (decompression bomb?)")
    if width == 0 or height == 0:
        raise DecodeError(400, f"image has no pixels ({width}x{height})")
    h, w = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.draft("RGB", (2 * w, 2 * h))  # JPEG: decode at a reduced scale, much cheaper for photos
            img = ImageOps.exif_transpose(img) or img
            img = img.convert("RGB").resize((w, h), Image.BILINEAR, reducing_gap=2.0)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for truncated or corrupt data
        raise DecodeError(400, f"cannot decode {img.format} image: {type(e).__name__}: {e}") from None
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def decode_audio(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """Audio file bytes -> (mono float32 samples, sample rate), refusing recordings over ``max_seconds``."""
    if not data:
        raise DecodeError(400, "empty file")
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - libsndfile's "unknown format" and cffi errors alike
        raise DecodeError(415, "not an audio file in a supported format (WAV, FLAC, OGG, MP3)") from None
    with f:
        if f.format not in AUDIO_FORMATS:
            raise DecodeError(415, f"unsupported audio format {f.format}; use WAV, FLAC, OGG or MP3")
        sr, channels = f.samplerate, f.channels
        if not 0 < sr <= MAX_SAMPLE_RATE:
            raise DecodeError(400, f"unsupported sample rate {sr} Hz")
        if not 0 < channels <= MAX_CHANNELS:
            raise DecodeError(400, f"unsupported channel count {channels}")
        max_frames = int(max_seconds * sr)
        if f.frames > max_frames:
            raise DecodeError(413, f"recording is {f.frames / sr:.1f} s long; the limit is {max_seconds:g} s")
        # Read in blocks and mix down as we go: memory stays at one mono copy, and a header that lies
        # about its length cannot make us decode more than the limit.
        blocks, n = [], 0
        try:
            while True:
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                n += len(block)
                if n > max_frames:
                    raise DecodeError(413, f"recording is longer than the limit of {max_seconds:g} s")
                blocks.append(block.mean(axis=1, dtype=np.float32))
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - corrupt data surfaces as assorted libsndfile errors
            raise DecodeError(400, f"cannot decode {f.format} audio: {type(e).__name__}: {e}") from None
    if n == 0:
        raise DecodeError(400, "audio has no samples")
    return np.concatenate(blocks), sr
