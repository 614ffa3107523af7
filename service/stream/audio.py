"""A stream's audio bytes -> mono float32 at the model rate, incrementally (the upload path's mix-down and
resampler, so the same samples)."""
from __future__ import annotations

import numpy as np

from models import transcription as tr

from .protocol import _RESAMPLE_SCALE, CLOSE_INVALID, SAMPLE_FORMATS, StreamError, StreamHeader


class AudioInput:
    """Bytes of interleaved little-endian samples -> mono float32 at the model rate, incrementally; the same
    mix-down and resampler as uploads (service/decode.py), so a streamed WAV gives the samples its upload does."""

    def __init__(self, header: StreamHeader, target_rate: int) -> None:
        self.header = header
        self.dtype = SAMPLE_FORMATS[header.sample_format]
        self.rest = b""
        self.frames_in = 0  # input sample frames so far
        self.resampler = None
        if header.sample_rate != target_rate:
            import soxr
            self.resampler = soxr.ResampleStream(header.sample_rate, target_rate, 1, dtype="float64", quality="HQ")

    def _mono(self, data: bytes) -> np.ndarray:
        x = np.frombuffer(data, self.dtype).reshape(-1, self.header.channels)
        if self.header.sample_format == "int16":
            x = x.astype(np.float32) / np.float32(32768)  # as libsndfile reads PCM_16 as float
        else:
            if not np.isfinite(x).all():
                raise StreamError(CLOSE_INVALID, "audio contains NaN or infinite samples", "bad_audio")
            peak = float(np.abs(x).max()) if x.size else 0.0
            if peak > tr.MAX_PEAK:
                raise StreamError(CLOSE_INVALID, f"float32 samples must be full scale +-1.0 (at most "
                                                 f"{tr.MAX_PEAK:g}); got a peak of {peak:.3g}", "bad_audio")
        return x.mean(axis=1, dtype=np.float64)

    def feed(self, data: bytes) -> np.ndarray:
        data = self.rest + data
        whole = len(data) - len(data) % self.header.bytes_per_frame
        self.rest = data[whole:]
        mono = self._mono(data[:whole])
        self.frames_in += mono.size
        if self.resampler is None:
            return mono.astype(np.float32)
        return (self.resampler.resample_chunk(mono * _RESAMPLE_SCALE, last=False) / _RESAMPLE_SCALE
                ).astype(np.float32)

    def finish(self) -> np.ndarray:
        if self.rest:
            raise StreamError(CLOSE_INVALID, f"the stream ended inside a sample frame ({len(self.rest)} of "
                                             f"{self.header.bytes_per_frame} bytes)", "bad_audio")
        if self.resampler is None:
            return np.zeros(0, np.float32)
        return (self.resampler.resample_chunk(np.zeros(0, np.float64), last=True) / _RESAMPLE_SCALE
                ).astype(np.float32)


