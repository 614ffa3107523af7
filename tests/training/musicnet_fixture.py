"""A tiny MusicNet-layout folder written by the tests: sine tones with known sample-unit labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
# (start_sample, end_sample, midi) per recording, at 44.1 kHz as in MusicNet.
NOTES = {
    "1001": [(0, 44100, 60), (22050, 66150, 64), (44100, 88200, 67)],
    "1002": [(4410, 48510, 57), (4410, 48510, 69), (52920, 88200, 72)],
}


def tone(midi: int, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    f = 440.0 * 2 ** ((midi - 69) / 12)
    return 0.2 * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)) * np.minimum(1, np.arange(n) / 200)


def write_fixture(root: Path, splits=("train", "test")) -> Path:
    for split in splits:
        (root / f"{split}_data").mkdir(parents=True, exist_ok=True)
        (root / f"{split}_labels").mkdir(parents=True, exist_ok=True)
        for rid, notes in NOTES.items():
            total = max(e for _, e, _ in notes) + RATE // 10
            audio = np.zeros(total)
            lines = ["start_time,end_time,instrument,note,start_beat,end_beat,note_value"]
            for s, e, m in notes:
                audio[s:e] += tone(m, e - s)
                lines.append(f"{s},{e},1,{m},0,1,Quarter")
            sf.write(root / f"{split}_data" / f"{rid}.wav", audio.astype(np.float32), RATE, subtype="PCM_16")
            (root / f"{split}_labels" / f"{rid}.csv").write_text("\n".join(lines) + "\n")
    return root
