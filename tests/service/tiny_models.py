"""Tiny stand-ins for the shipped models: same contracts (checkpoint, ``classify``, transcriber API), instant
forward passes, predictable outputs, and an optional per-forward delay for the queue/deadline tests."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import register_architecture, save_checkpoint

CLASS_NAMES = ["red", "green", "blue"]


@register_architecture("test_tiny_classifier")
class TinyClassifier(nn.Module):
    """Float images in [0, 1] -> logits; the dominant colour channel wins (red image -> "red")."""

    def __init__(self, num_classes: int = 3, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.fc = nn.Linear(3, num_classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:3, :3] = 10 * torch.eye(3)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.fc(x.mean(dim=(2, 3)))


@register_architecture("test_tiny_transcriber")
class TinyTranscriber(nn.Module):
    """Every pitch sounds where the audio is loud: logits = gain * mean|x| per frame + bias."""

    def __init__(self, sample_rate: int = 8000, hop_length: int = 80, pitches: tuple[int, ...] = tuple(range(60, 72)),
                 frames_per_window: int = 25, context: int = 40, delay_s: float = 0.0) -> None:
        super().__init__()
        self.sample_rate, self.hop_length, self.pitches = sample_rate, hop_length, list(pitches)
        self.frames_per_window, self.context, self.delay_s = frames_per_window, context, delay_s
        self.gain = nn.Parameter(torch.full((len(pitches),), 20.0))
        self.bias = nn.Parameter(torch.full((len(pitches),), -2.0))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        # frame k of a window covers samples [k*hop, k*hop + hop + 2*context) of it: centred on its frame
        frames = windows.unfold(1, self.hop_length + 2 * self.context, self.hop_length)[:, :self.frames_per_window]
        energy = frames.abs().mean(-1, keepdim=True)  # (B, F, 1)
        return energy * self.gain + self.bias


@register_architecture("test_tiny_onset_transcriber")
class TinyOnsetTranscriber(TinyTranscriber):
    """A note-level model: the frame head of TinyTranscriber plus an onset head that fires on the frame whose
    second half is louder than its first (where a sound starts), and calibrated ``decoding`` defaults."""

    heads = ("frame", "onset")

    def __init__(self, decoding: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.decoding = dict(decoding or {})

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        frame = super().forward(windows)
        frames = windows.unfold(1, self.hop_length + 2 * self.context, self.hop_length)[:, :self.frames_per_window]
        half = frames.shape[-1] // 2
        rise = frames[..., half:].abs().mean(-1, keepdim=True) - frames[..., :half].abs().mean(-1, keepdim=True)
        onset = (30 * rise - 3).expand_as(frame)
        return torch.stack([frame, onset], dim=-1)  # (B, F, P, heads)


def make_onset_checkpoint(folder: Path, decoding: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"decoding": decoding}
    m = TinyOnsetTranscriber(**cfg)
    return save_checkpoint(folder / "tiny_onsets.pt", m, "test_tiny_onset_transcriber", cfg,
                           {"task": "transcription", "sample_rate": m.sample_rate, "hop_length": m.hop_length,
                            "pitches": m.pitches, "metrics": {"note_f1": 0.5}})


def make_checkpoints(folder: Path, classifier_delay_s: float = 0.0, transcriber_delay_s: float = 0.0,
                     ) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ccfg = {"num_classes": 3, "delay_s": classifier_delay_s}
    cls = save_checkpoint(folder / "tiny_classifier.pt", TinyClassifier(**ccfg), "test_tiny_classifier", ccfg,
                          {"task": "image-classification", "class_names": CLASS_NAMES, "input_size": [8, 8],
                           "metrics": {"val_accuracy": 1.0}})
    tcfg = {"delay_s": transcriber_delay_s}
    m = TinyTranscriber(**tcfg)
    tr = save_checkpoint(folder / "tiny_transcriber.pt", m, "test_tiny_transcriber", tcfg,
                         {"task": "transcription", "sample_rate": m.sample_rate, "hop_length": m.hop_length,
                          "pitches": m.pitches, "metrics": {"frame_f1": 0.5}})
    return cls, tr
