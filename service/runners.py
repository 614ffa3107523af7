"""The two served models behind one small adapter each: load, warm up, batch-predict, describe.

The service talks to models only through here, and to them only through ``models/`` APIs:
``models.checkpoint.load_checkpoint``, ``models.cifar.classify`` and ``models.transcription``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import transcription as tr
from models.checkpoint import CheckpointError, count_parameters, file_sha256, load_checkpoint

from .decode import DecodeError, decode_audio, decode_image


def _classify(model: nn.Module, images: torch.Tensor, flip_tta: bool) -> torch.Tensor:
    # Imported on first use: models/cifar.py registers the architectures and owns preprocessing/TTA.
    from models.cifar import classify
    return classify(model, images, flip_tta=flip_tta)


def _load(path: Path, device: torch.device, task: str, env: str) -> tuple[nn.Module, dict[str, Any]]:
    try:
        model, meta = load_checkpoint(path, device)
    except CheckpointError as e:
        raise CheckpointError(f"{env}: {e}") from None
    if meta.get("task", task) != task:
        raise CheckpointError(f"{env}: {path} is a {meta['task']!r} checkpoint, expected {task!r}")
    return model, meta


class _Runner:
    task: str
    route: str

    def __init__(self, path: str | Path, device: torch.device, env: str) -> None:
        self.path = Path(path)
        self.device = device
        self.model, self.meta = _load(self.path, device, self.task, env)
        self.name: str = self.meta.get("name") or self.path.stem
        self.sha256 = file_sha256(self.path)
        self.parameters = count_parameters(self.model)

    def info(self) -> dict[str, Any]:
        card = self.path.with_suffix(".md")
        return {"name": self.name, "task": self.task, "route": self.route, "arch": self.meta.get("arch"),
                "checkpoint": str(self.path), "sha256": self.sha256, "parameters": self.parameters,
                "device": str(self.device), "metrics": self.meta.get("metrics", {}),
                "model_card": str(card) if card.is_file() else None}


class ClassifierRunner(_Runner):
    task, route = "image-classification", "/classify"

    def __init__(self, path: str | Path, device: torch.device, flip_tta: bool = True) -> None:
        super().__init__(path, device, "DCN_CLASSIFIER_CHECKPOINT")
        self.flip_tta = flip_tta
        self.class_names: list[str] = list(self.meta["class_names"])
        self.input_size: tuple[int, int] = tuple(self.meta.get("input_size", (32, 32)))

    def decode(self, data: bytes, max_pixels: int) -> torch.Tensor:
        return decode_image(data, self.input_size, max_pixels)

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
                "test_time_augmentation": "flip" if self.flip_tta else None}


class TranscriberRunner(_Runner):
    task, route = "transcription", "/transcribe"

    def __init__(self, path: str | Path, device: torch.device) -> None:
        super().__init__(path, device, "DCN_TRANSCRIBER_CHECKPOINT")
        m = self.model
        self.sample_rate, self.hop_length = int(m.sample_rate), int(m.hop_length)
        self.pitches = np.asarray(m.pitches, dtype=np.int64)
        self.frame_rate = self.sample_rate / self.hop_length
        self.window_samples = tr.window_samples(m)

    def decode(self, data: bytes, max_seconds: float) -> tuple[torch.Tensor, int, float]:
        """File bytes -> (windows (W, window_samples), frames, duration in seconds)."""
        audio, sr = decode_audio(data, max_seconds)
        try:
            mono = tr.prepare_audio(audio, sr, self.sample_rate)
        except ValueError as e:  # empty, NaN or infinite samples
            raise DecodeError(400, str(e)) from None
        windows, n_frames = tr.cut_windows(self.model, mono)
        return windows, n_frames, len(audio) / sr

    @torch.inference_mode()
    def predict(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Batcher ``process``: audio windows (from any requests) -> (frames_per_window, P) probabilities."""
        return list(tr.predict_windows(self.model, torch.stack(windows)).cpu())

    def stitch(self, window_probs: list[torch.Tensor], n_frames: int) -> tr.Transcription:
        probs = tr.stitch_windows(torch.stack(window_probs), n_frames).numpy().astype(np.float32)
        return tr.Transcription(tr.frame_times(self.model, n_frames), self.pitches, probs)

    def warmup(self, batch_size: int) -> None:
        tr.prepare_audio(np.zeros(441, np.float32), 44_100, self.sample_rate)  # first resample imports librosa: slow
        for n in {1, batch_size}:
            self.predict([torch.zeros(self.window_samples)] * n)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "pitches": self.pitches.tolist(),
                "pitch_range": [int(self.pitches.min()), int(self.pitches.max())],
                "sample_rate": self.sample_rate, "hop_length": self.hop_length, "frame_rate": self.frame_rate,
                "window_seconds": self.window_samples / self.sample_rate}
