"""Live transcription over a WebSocket (``/transcribe/stream``), one concept per module: ``protocol`` (messages,
close codes, the header, the limits), ``model`` (the short-window model copy and the windower), ``audio`` (bytes ->
model-rate samples), ``session`` (one stream's state), ``route`` (the WebSocket side: pacing, limits, shutdown).

Pipeline of one stream: binary chunks of any size -> whole sample frames (little-endian int16 or float32,
interleaved channels) -> mono float64 (as uploads are mixed down) -> soxr HQ resampling to the model rate,
incremental (the resampler uploads use, so the same samples) -> blocks of ``block_frames`` frames cut with the
model's context -> the transcriber's batcher (shared with POST /transcribe) -> frame probabilities -> incremental
note decoding (the same rules as ``models.transcription.decode_notes``, with a bounded look-ahead) -> JSON messages.

Streamed == offline. The transcribers are convolutional in time, so a model copy with fewer frames per window
gives the same frames, except that layers zero-padded in time (the note transcriber's head) see the window's
edge. A stream window therefore carries ``edge`` extra frames on each side (found numerically at start-up: the
smallest edge whose frames equal the offline model's), and a block that starts or ends an offline window is
computed at that edge of its stream window, where the offline window had it too. Blocks never straddle an offline
window: ``block_frames`` divides the model's ``frames_per_window``.

Latency of frame k (centred at sample k * hop): its block must be complete, plus the edge, plus the model's
context (look-ahead), then a forward pass: at most (block_frames - 1 + edge) * hop + context samples of waiting
(``algorithmic_latency_s``), on average half a block less; notes need up to ``note look-ahead`` more frames.
"""
from .audio import AudioInput
from .model import StreamModel, Windower, build_stream_model
from .protocol import PROTOCOL_DOC, StreamError, StreamHeader, parse_header
from .route import protocol_description, serve_stream
from .session import StreamSession

__all__ = ["PROTOCOL_DOC", "AudioInput", "StreamError", "StreamHeader", "StreamModel", "StreamSession", "Windower",
           "build_stream_model", "parse_header", "protocol_description", "serve_stream"]
