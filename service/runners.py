"""The two served models behind one small adapter each: load, warm up, batch-predict, describe.

The service talks to models only through here, and to them only through ``models/`` APIs:
``models.checkpoint.load_checkpoint``, ``models.cifar.classify`` and ``models.transcription``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import transcription as tr
from models.checkpoint import CheckpointError, count_parameters, file_sha256, load_checkpoint

from .decode import AUDIO_COST, DecodeError, StopCheck, audio_header, decode_audio_ex, decode_image

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("service")
# Keys of a checkpoint's metrics that describe the training machine, not the model: never shown by /models.
PRIVATE_KEYS = {"command", "data", "dataset", "out", "cache_dir", "hardware", "git_commit"}


def _classify(model: nn.Module, images: torch.Tensor, flip_tta: bool) -> torch.Tensor:
    # Imported on first use: models/cifar.py registers the architectures and owns preprocessing/TTA.
    from models.cifar import classify
    return classify(model, images, flip_tta=flip_tta)


def _guess_task(model: nn.Module) -> str:
    return "transcription" if hasattr(model, "sample_rate") and hasattr(model, "pitches") else "image-classification"


def _task_evidence(task: str) -> str:
    return "a sample_rate and pitches" if task == "transcription" else "no sample_rate or pitches"


def _load(path: Path, device: torch.device, task: str, env: str) -> tuple[nn.Module, dict[str, Any]]:
    """Every way a checkpoint can be unusable is one CheckpointError line that names the setting and the file."""
    try:
        model, meta = load_checkpoint(path, device)
    except CheckpointError as e:
        raise CheckpointError(f"{env}: {e}") from None
    except TypeError as e:  # the architecture does not take an argument of the checkpoint's config
        raise CheckpointError(f"{env}: {path}: its config does not fit its architecture ({e})") from None
    except Exception as e:  # noqa: BLE001 - building a model can fail in many ways; say so in one line
        raise CheckpointError(f"{env}: {path}: cannot build the model: {type(e).__name__}: {e}") from None
    found = meta.get("task") or _guess_task(model)
    if found != task:
        how = "" if meta.get("task") else " (no 'task' in its meta; its architecture looks like one)"
        raise CheckpointError(f"{env}: {path} is a {found!r} checkpoint{how}, expected {task!r}")
    if not meta.get("task"):  # inferred from the model: say so, once
        log.warning("%s: %s has no 'task' in its meta; serving it as %r (its architecture %r has %s)", env, path,
                    task, meta.get("arch"), _task_evidence(task))
    return model, meta


def public_path(path: Path) -> str:
    """A path as /models shows it: relative to the repository when inside it, else the file name alone."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def public_metrics(value: Any) -> Any:
    """Metrics without commands, absolute paths or machine details (they say nothing about the model)."""
    if isinstance(value, dict):
        return {k: public_metrics(v) for k, v in value.items()
                if k not in PRIVATE_KEYS and not (isinstance(v, str) and v.startswith("/"))}
    if isinstance(value, list):
        return [public_metrics(v) for v in value]
    return value


class _Runner:
    task: str
    route: str

    def __init__(self, path: str | Path, device: torch.device, env: str) -> None:
        self.path = Path(path)
        self.device = device
        self.model, self.meta = _load(self.path, device, self.task, env)
        self.name: str = self.meta.get("name") or self.path.stem
        self.sha256 = file_sha256(self.path)
        self.version = self.sha256[:12]  # names the exact weights: a retrained checkpoint is a new version
        self.parameters = count_parameters(self.model)

    def info(self) -> dict[str, Any]:
        card = self.path.with_suffix(".md")
        return {"name": self.name, "task": self.task, "route": self.route, "arch": self.meta.get("arch"),
                "version": self.version, "checkpoint": public_path(self.path), "sha256": self.sha256, "parameters": self.parameters,
                "device": str(self.device), "metrics": public_metrics(self.meta.get("metrics", {})),
                "model_card": public_path(card) if card.is_file() else None}


class ClassifierRunner(_Runner):
    task, route = "image-classification", "/classify"

    def __init__(self, path: str | Path, device: torch.device, flip_tta: bool = True) -> None:
        super().__init__(path, device, "DCN_CLASSIFIER_CHECKPOINT")
        self.flip_tta = flip_tta
        names = self.meta.get("class_names")
        if not isinstance(names, (list, tuple)) or not names:
            raise CheckpointError(f"DCN_CLASSIFIER_CHECKPOINT: {self.path} has no class_names in its meta "
                                  f"(a list of label strings is required)")
        self.class_names: list[str] = [str(n) for n in names]
        self.input_size: tuple[int, int] = tuple(self.meta.get("input_size", (32, 32)))

    def decode(self, data: bytes, max_pixels: int, max_bytes: int | None = None,
               should_stop: StopCheck | None = None) -> torch.Tensor:
        return decode_image(data, self.input_size, max_pixels, max_bytes, should_stop)

    @torch.inference_mode()
    def predict(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Batcher ``process``: uint8 (3, H, W) images -> probability rows, on the CPU."""
        # classify() moves the batch to the model's device and returns probabilities on the batch's (CPU).
        return list(_classify(self.model, torch.stack(images), self.flip_tta).float())

    def warmup(self, batch_size: int) -> None:
        for n in {1, batch_size}:
            self.predict([torch.zeros(3, *self.input_size, dtype=torch.uint8)] * n)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "labels": self.class_names, "input_size": list(self.input_size),
                "test_time_augmentation": "flip" if self.flip_tta else None,
                "inputs": [{"name": "file", "content": "image: PNG, JPEG, BMP, GIF or WebP, any size and mode; "
                                                      f"resized to {self.input_size[0]}x{self.input_size[1]} RGB",
                            "repeatable": True}],
                "outputs": [{"name": "label", "datatype": "string"},
                            {"name": "probabilities", "datatype": "FP32", "shape": [len(self.class_names)]}]}


class TranscriberRunner(_Runner):
    task, route = "transcription", "/transcribe"

    def __init__(self, path: str | Path, device: torch.device) -> None:
        super().__init__(path, device, "DCN_TRANSCRIBER_CHECKPOINT")
        m = self.model
        try:
            self.sample_rate, self.hop_length = int(m.sample_rate), int(m.hop_length)
            self.pitches = np.asarray(m.pitches, dtype=np.int64)
            self.frame_rate = self.sample_rate / self.hop_length
            self.window_samples = tr.window_samples(m)
            self.heads = tr.heads(m)
            self.decoding = tr.decoding_defaults(m, self.meta)
        except Exception as e:  # noqa: BLE001 - a model that lacks part of the transcriber API: one line
            raise CheckpointError(f"DCN_TRANSCRIBER_CHECKPOINT: {self.path}: not a usable transcriber "
                                  f"({type(e).__name__}: {e})") from None
        self.window_models: dict[int, nn.Module] = {}

    def decode(self, data: bytes, max_seconds: float, should_stop: StopCheck | None = None
               ) -> tuple[torch.Tensor, int, float]:
        """File bytes -> (windows (W, window_samples), frames, duration in seconds).

        Resampled to the model rate block by block while decoding: never held at the file's rate."""
        audio, sr, duration = decode_audio_ex(data, max_seconds, self.sample_rate, should_stop)
        if audio.dtype == np.float64 and audio.size and np.isfinite(audio).all():
            peak = float(np.abs(audio).max())
            if peak > tr.MAX_PEAK:  # rescale before float32 (prepare_audio): resampled peaks may pass its range
                audio = audio / peak
        try:
            mono = tr.prepare_audio(audio, sr, self.sample_rate)
        except ValueError as e:  # empty, NaN or infinite samples
            raise DecodeError(400, f"audio cannot be analysed: {e}") from None
        windows, n_frames = tr.cut_windows(self.model, mono)
        return windows, n_frames, duration

    def upload_cost(self, data: bytes) -> tuple[int, float] | None:
        """(audio windows, estimated decoding seconds) of an upload, from its header alone; None when the header
        cannot be read (decoding will say why) or declares no length."""
        try:
            frames, rate, channels = audio_header(data)
        except DecodeError:
            return None
        if frames <= 0:
            return None
        n_frames = tr.count_frames(self.model, int(frames * self.sample_rate / rate))
        return -(-n_frames // int(self.model.frames_per_window)), AUDIO_COST.estimate(frames * channels)

    def add_window_model(self, model: nn.Module) -> None:
        """Serve windows of ``tr.window_samples(model)`` samples with ``model`` too (the live streams' copy with
        fewer frames per window); batches may mix both sizes."""
        self.window_models[tr.window_samples(model)] = model

    @torch.inference_mode()
    def predict(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Batcher ``process``: audio windows (from any requests) -> (frames_per_window, P, heads) probabilities.
        Windows of another length than the model's go to the model added for that length."""
        sizes = {w.numel() for w in windows}
        if sizes == {self.window_samples} or not self.window_models:
            return list(tr.predict_windows(self.model, torch.stack(windows)).cpu())
        out: list[torch.Tensor | None] = [None] * len(windows)
        for size in sizes:
            idx = [i for i, w in enumerate(windows) if w.numel() == size]
            model = self.model if size == self.window_samples else self.window_models[size]
            for i, p in zip(idx, tr.predict_windows(model, torch.stack([windows[i] for i in idx])).cpu()):
                out[i] = p
        return out  # type: ignore[return-value]

    def stitch(self, window_probs: list[torch.Tensor], n_frames: int) -> tr.Transcription:
        probs = tr.stitch_windows(torch.stack(window_probs), n_frames).numpy()
        return tr.Transcription.from_heads(tr.frame_times(self.model, n_frames), self.pitches, probs, self.heads)

    def decode_notes(self, t: tr.Transcription, onset_threshold: float | None = None,
                     frame_threshold: float | None = None, min_note_length: float | None = None) -> list[dict]:
        """Note events; a threshold left as None takes the model's calibrated default (``self.decoding``)."""
        return tr.decode_notes(t, onset_threshold, frame_threshold, min_note_length, defaults=self.decoding)

    def warmup(self, batch_size: int) -> None:
        tr.prepare_audio(np.zeros(441, np.float32), 44_100, self.sample_rate)  # first resample imports librosa: slow
        for n in {1, batch_size}:
            self.predict([torch.zeros(self.window_samples)] * n)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "pitches": self.pitches.tolist(),
                "pitch_range": [int(self.pitches.min()), int(self.pitches.max())],
                "sample_rate": self.sample_rate, "hop_length": self.hop_length, "frame_rate": self.frame_rate,
                "window_seconds": self.window_samples / self.sample_rate, "heads": list(self.heads),
                "decoding": dict(self.decoding),
                "inputs": [{"name": "file", "content": "audio: WAV, FLAC, OGG, MP3; any rate, mono or stereo; "
                                                      f"resampled to {self.sample_rate} Hz mono", "repeatable": True}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.pitches)],
                             "heads": list(self.heads)},
                            {"name": "notes", "datatype": "object",
                             "fields": ["onset", "offset", "pitch", "confidence"]}]}

