"""Response shapes, for validation and for the OpenAPI document at /docs."""
from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong")


class ClassifyResult(BaseModel):
    filename: str
    label: str = Field(description="most probable class")
    confidence: float = Field(description="probability of that class")
    probabilities: dict[str, float] = Field(description="class name -> probability, summing to 1")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult] = Field(description="one per uploaded file, in upload order")


class Note(BaseModel, extra="allow"):
    onset: float = Field(description="seconds")
    offset: float = Field(description="seconds")
    pitch: int = Field(description="MIDI note number")
    confidence: float = Field(description="mean frame probability over the note")


class Decoding(BaseModel):
    onset_threshold: float = Field(description="a note starts where the onset head (or, for frame-only models, "
                                               "the frame probability) reaches this")
    frame_threshold: float = Field(description="a note lasts while the frame probability stays above this")
    min_note_length: float = Field(description="shorter notes are dropped (seconds)")
    minimum_frequency: float | None = Field(None, description="Hz; notes below were dropped (only when given)")
    maximum_frequency: float | None = Field(None, description="Hz; notes above were dropped (only when given)")


class TranscribeResponse(BaseModel):
    """One recording. Several files in one request (format=json): ``{"model", "results": [...]}``, one of these per
    file with its ``filename``, in upload order."""
    filename: str | None = Field(None, description="several files only: the upload's file name")
    model: str
    duration: float = Field(description="length of the recording, seconds")
    sample_rate: int = Field(description="rate the model analysed the audio at (Hz); uploads are resampled to it")
    frame_rate: float = Field(description="frames per second")
    times: list[float] | None = Field(None, description="frame centres, seconds (left out with frames=false)")
    pitches: list[int] | None = Field(None, description="MIDI note numbers of the probability columns")
    probabilities: list[list[float]] | None = Field(
        None, description="probabilities[i][j]: probability that pitches[j] sounds at times[i] (the frame head), "
                          "rounded to 3 decimals (left out with frames=false)")
    onsets: list[list[float]] | None = Field(
        None, description="models with an onset head only: onsets[i][j], probability that a note of pitches[j] "
                          "starts at times[i], rounded to 3 decimals")
    decoding: Decoding = Field(description="the thresholds the notes were decoded with: the query's, else the "
                                           "model's calibrated defaults")
    notes: list[Note] = Field(description="note events; notes may carry further keys (velocity, pitch bends) as "
                                          "the transcriber provides them")


class ModelInfo(BaseModel, extra="allow"):
    name: str
    task: str
    route: str
    arch: str | None
    version: str = Field(description="the first 12 hex digits of the checkpoint's sha256: new weights, new version")
    inputs: list[dict] = Field(description="what the route takes (multipart field, content)")
    outputs: list[dict] = Field(description="what it returns (name, datatype, shape)")
    checkpoint: str
    sha256: str
    parameters: int
    device: str
    metrics: dict = Field(description="evaluation metrics recorded with the checkpoint (as in the model card)")
    model_card: str | None
    labels: list[str] | None = Field(None, description="classifier: class names")
    input_size: list[int] | None = Field(None, description="classifier: [H, W] the images are resized to")
    test_time_augmentation: str | None = Field(None, description="classifier: 'flip' when DCN_CLASSIFY_TTA is on")
    pitches: list[int] | None = Field(None, description="transcriber: MIDI numbers of the output columns")
    pitch_range: list[int] | None = Field(None, description="transcriber: [lowest, highest] MIDI number")
    sample_rate: int | None = Field(None, description="transcriber: model input rate (Hz)")
    hop_length: int | None = None
    frame_rate: float | None = Field(None, description="transcriber: frames per second")
    window_seconds: float | None = Field(None, description="transcriber: audio per batched window")
    heads: list[str] | None = Field(None, description="transcriber: output heads, 'frame' first; 'onset' when notes "
                                                      "are decoded from an onset head")
    decoding: dict | None = Field(None, description="transcriber: calibrated note-decoding defaults "
                                                    "(onset_threshold, frame_threshold, min_note_length) that "
                                                    "/transcribe uses when a threshold is not given")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
