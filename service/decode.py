"""Uploads -> model inputs, with limits. Formats are sniffed from the bytes; the client's content type is not trusted.

Every failure is a ``DecodeError`` carrying the HTTP status the client should see (400 bad or damaged data,
413 over a limit, 415 not a supported format) and a message that says what was wrong. A file that starts
with the signature of a supported format but cannot be read is damaged (400), not unsupported (415).
These functions are CPU-bound and blocking: call them from a worker thread. ``should_stop`` (optional)
is polled between blocks of work; when it returns a reason the decode stops with ``DecodeCancelled``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import io
import re
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageOps

# MPO: multi-picture JPEG as phone cameras write it; the first picture is the photo.
IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP"}
# libsndfile major formats (SoundFile.format); MP3 reads as "MP3" or "MPEG"; WAVEX/RF64 are WAV variants.
AUDIO_FORMATS = {"WAV", "WAVEX", "RF64", "FLAC", "OGG", "MP3", "MPEG"}
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 32
_BLOCK_FRAMES = 1 << 16
_RESAMPLE_SCALE = 2.0 ** -64
StopCheck = Callable[[], "str | None"]


class DecodeError(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class DecodeCancelled(Exception):
    """The request's deadline passed, its client went away or the service is shutting down: stop decoding."""


def _check(should_stop: StopCheck | None) -> None:
    if should_stop is not None and (reason := should_stop()):
        raise DecodeCancelled(reason)


class DecodePool:
    """A bounded thread pool for one route's decoding (memory and CPU spent on decoding are bounded by its size),
    which knows how long its queue is: jobs waiting or running, and their mean duration (measured)."""

    def __init__(self, name: str, workers: int) -> None:
        self.name, self.workers = name, workers
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix=f"decode-{name}")
        self.jobs = 0               # submitted, not finished
        self.mean_s: float | None = None  # moving average of a job's duration
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> Future:
        def run() -> Any:
            t0 = time.perf_counter()
            try:
                return fn()
            finally:
                took = time.perf_counter() - t0
                with self._lock:
                    self.mean_s = took if self.mean_s is None else 0.8 * self.mean_s + 0.2 * took
        with self._lock:
            self.jobs += 1
        future = self.executor.submit(run)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future) -> None:
        with self._lock:
            self.jobs -= 1

    @property
    def waiting(self) -> int:
        """Jobs queued behind the running ones."""
        return max(0, self.jobs - self.workers)

    def wait_s(self) -> float:
        """About how long a job submitted now waits before it starts."""
        return (self.mean_s or 0.0) * self.waiting / self.workers if self.jobs >= self.workers else 0.0

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class DecodePools:
    """One DecodePool per route, so that a flood of one kind (image bombs) cannot starve the other (audio)."""

    def __init__(self, workers: int) -> None:
        self.pools = {"classifier": DecodePool("image", workers), "transcriber": DecodePool("audio", workers)}

    def __getitem__(self, model: str) -> DecodePool:
        return self.pools[model]

    def shutdown(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()


class AudioCost:
    """Seconds of decoding (and resampling) per input sample, measured on the decodes done (a moving average),
    seeded with a cautious value: a long recording can be refused before it is decoded when it cannot finish."""

    def __init__(self, seconds_per_sample: float = 5e-8) -> None:
        self.seconds_per_sample = seconds_per_sample
        self._lock = threading.Lock()

    def observe(self, samples: int, seconds: float) -> None:
        if samples >= 1_000_000:  # short decodes are dominated by fixed costs
            with self._lock:
                self.seconds_per_sample = 0.7 * self.seconds_per_sample + 0.3 * seconds / samples

    def estimate(self, samples: int) -> float:
        return self.seconds_per_sample * samples


AUDIO_COST = AudioCost()


def describe_seconds(seconds: float, limit: float) -> str:
    """A duration in an over-the-limit message, with enough digits to differ from the limit (2.04 s, not 2.0 s)."""
    for digits in range(1, 7):
        text = f"{seconds:.{digits}f}"
        if float(text) != limit:
            return text
    return repr(seconds)


def _without_addresses(message: str) -> str:
    """An exception's text without object reprs (``<_io.BytesIO object at 0x7f...>``): no heap addresses."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the upload", message)


def _image_signature(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _audio_signature(data: bytes) -> str | None:
    if data[:4] in (b"RIFF", b"RIFX", b"RF64") and data[8:12] == b"WAVE":
        return "WAV"
    if data.startswith(b"fLaC"):
        return "FLAC"
    if data.startswith(b"OggS"):
        return "OGG"
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "MP3"
    return None


def image_bytes_per_pixel(mode: str) -> int:
    """PIL's in-memory size of one pixel: 1 byte for 1/L/P, 2 for 16-bit grey, 4 for everything else."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


class ImageHeader:
    """What an image file's header says, read without decoding any pixels."""

    def __init__(self, img: Image.Image) -> None:
        self.img, self.format, self.mode = img, img.format, img.mode
        self.width, self.height = img.size
        # decoded + converted to RGB, both held at once during conversion
        self.decoded_bytes = self.width * self.height * (image_bytes_per_pixel(self.mode) + 4)


def open_image(data: bytes, max_pixels: int, max_bytes: int | None = None) -> ImageHeader:
    """Sniff and check an image's header: format, pixel and decoded-byte limits. Reads no pixel data."""
    if not data:
        raise DecodeError(400, "empty file")
    signature = _image_signature(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise DecodeError(400, f"image too large to decode (decompression bomb?): {e}") from None
    except Exception as e:  # noqa: BLE001 - PIL signals "not an image" with many exception types
        if signature:
            raise DecodeError(400, f"damaged {signature} image: {type(e).__name__}: {_without_addresses(str(e))}"
                              ) from None
        raise DecodeError(415, "not an image in a supported format (PNG, JPEG, BMP, GIF, WebP)") from None
    if img.format not in IMAGE_FORMATS:
        raise DecodeError(415, f"unsupported image format {img.format}; use PNG, JPEG, BMP, GIF or WebP")
    header = ImageHeader(img)
    width, height = img.size
    # Check the declared size before decoding: a few KB of PNG can claim gigapixels.
    if width * height > max_pixels:
        raise DecodeError(400, f"image is {width}x{height} = {width * height} pixels, over the limit of "
                               f"{max_pixels} pixels (decompression bomb?)")
    if width == 0 or height == 0:
        raise DecodeError(400, f"image has no pixels ({width}x{height})")
    if max_bytes is not None and header.decoded_bytes > max_bytes:
        raise DecodeError(400, f"image is {width}x{height} {img.mode}: {header.decoded_bytes} bytes to decode, over "
                               f"the limit of {max_bytes} bytes (decompression bomb?)")
    return header


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int, max_bytes: int | None = None,
                 should_stop: StopCheck | None = None) -> torch.Tensor:
    """Image file bytes -> uint8 tensor (3, H, W), RGB, resized to ``size`` = (H, W)."""
    header = open_image(data, max_pixels, max_bytes)
    _check(should_stop)
    img = header.img
    h, w = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.draft("RGB", (2 * w, 2 * h))  # JPEG: decode at a reduced scale, much cheaper for photos
            ImageOps.exif_transpose(img, in_place=True)  # not a copy (a full-size copy when there is no EXIF)
            if img.mode in ("RGB", "L"):  # no alpha: resize first, so no full-size RGB copy is made
                img = img.resize((w, h), Image.BILINEAR, reducing_gap=2.0).convert("RGB")
            else:
                img = img.convert("RGB").resize((w, h), Image.BILINEAR, reducing_gap=2.0)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for truncated or corrupt data
        raise DecodeError(400, f"cannot decode {header.format} image (damaged?): {type(e).__name__}: "
                               f"{_without_addresses(str(e))}") from None
    finally:
        header.img = None
        if header.decoded_bytes > 16 * 2**20:
            release_memory()
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


_libc = None


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc): large decodes must not leave the RSS high when idle."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        _libc = False


def _open_audio(data: bytes) -> sf.SoundFile:
    if not data:
        raise DecodeError(400, "empty file")
    signature = _audio_signature(data)
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - libsndfile's "unknown format" and cffi errors alike
        if signature:
            why = _without_addresses(re.sub(r"Error opening <[^>]*>: ", "", str(e)))  # not the BytesIO's repr
            raise DecodeError(400, f"damaged or unreadable {signature} audio: {why}") from None
        raise DecodeError(415, "not an audio file in a supported format (WAV, FLAC, OGG, MP3)") from None
    if f.format not in AUDIO_FORMATS:
        f.close()
        raise DecodeError(415, f"unsupported audio format {f.format}; use WAV, FLAC, OGG or MP3")
    sr, channels = f.samplerate, f.channels
    if not 0 < sr <= MAX_SAMPLE_RATE:
        f.close()
        raise DecodeError(400, f"unsupported sample rate {sr} Hz (1 to {MAX_SAMPLE_RATE} Hz)")
    if not 0 < channels <= MAX_CHANNELS:
        f.close()
        raise DecodeError(400, f"unsupported channel count {channels}")
    return f


def audio_header(data: bytes) -> tuple[int, int, int]:
    """(declared frames, sample rate, channels) from the header, without decoding."""
    with _open_audio(data) as f:
        return f.frames, f.samplerate, f.channels


def decode_audio(data: bytes, max_seconds: float, target_rate: int | None = None,
                 should_stop: StopCheck | None = None) -> tuple[np.ndarray, int]:
    """Audio file bytes -> (mono samples, their rate), refusing recordings over ``max_seconds``.

    With ``target_rate``, the audio is resampled block by block as it is decoded (soxr HQ, streaming),
    so a high-rate file is never held at its full rate; the samples are then float64 (a float32 sum of
    huge samples could overflow) at ``target_rate``. Without it: float32 at the file's rate.
    """
    samples, rate, _ = decode_audio_ex(data, max_seconds, target_rate, should_stop)
    return samples, rate


def decode_audio_ex(data: bytes, max_seconds: float, target_rate: int | None = None,
                    should_stop: StopCheck | None = None) -> tuple[np.ndarray, int, float]:
    """``decode_audio`` plus the recording's duration in seconds (at its own rate)."""
    f = _open_audio(data)
    with f:
        sr = f.samplerate
        max_frames = int(max_seconds * sr)
        if f.frames > max_frames:
            raise DecodeError(413, f"recording is {describe_seconds(f.frames / sr, max_seconds)} s long; the limit "
                                   f"is {max_seconds:g} s")
        stream = None
        if target_rate is not None and target_rate != sr:
            import soxr  # the resampler librosa's soxr_hq uses; streaming gives the same samples
            stream = soxr.ResampleStream(sr, target_rate, 1, dtype="float64", quality="HQ")
        # Read in blocks and mix down as we go: memory stays at one mono copy (at the target rate when
        # resampling), and a header that lies about its length cannot make us decode more than the limit.
        blocks, n, t0 = [], 0, time.perf_counter()
        try:
            while True:
                _check(should_stop)
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                n += len(block)
                if n > max_frames:
                    raise DecodeError(413, f"recording is longer than the limit of {max_seconds:g} s")
                # float64 sum: two channels near the float32 limit must not mix down to inf
                mono = block.mean(axis=1, dtype=np.float64)
                if stream is None:
                    blocks.append(mono.astype(np.float32))
                else:
                    if not np.isfinite(mono).all():
                        raise DecodeError(400, "audio contains NaN or infinite samples")
                    # soxr HQ computes in float32: scale by an exact power of two so that samples near the
                    # float32 limit cannot overflow inside the filter (scaled back below, in float64)
                    blocks.append(stream.resample_chunk(mono * _RESAMPLE_SCALE, last=False))
        except (DecodeError, DecodeCancelled):
            raise
        except Exception as e:  # noqa: BLE001 - corrupt data surfaces as assorted libsndfile errors
            raise DecodeError(400, f"cannot decode {f.format} audio (damaged?): {type(e).__name__}: {e}") from None
        if n == 0:
            raise DecodeError(400, "audio has no samples")
        if stream is not None:
            blocks.append(stream.resample_chunk(np.zeros(0, np.float64), last=True))
        AUDIO_COST.observe(n * f.channels, time.perf_counter() - t0)
    rate = sr if stream is None else target_rate
    out = np.concatenate(blocks)
    if stream is not None:
        out /= _RESAMPLE_SCALE
    if out.size == 0:  # a few input samples resample to nothing: keep one
        out = np.zeros(1, out.dtype)
    return out, rate, n / sr
