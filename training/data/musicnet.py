"""MusicNet-layout datasets: the real MusicNet (Thickstun et al. 2017) or the corpus renderer's output.

Layout (what MusicNet ships, what training/data/render.py writes)::

    ROOT/train_data/ID.wav   ROOT/train_labels/ID.csv   (44.1 kHz audio)
    ROOT/test_data/ID.wav    ROOT/test_labels/ID.csv

CSV columns ``start_time,end_time,instrument,note,start_beat,end_beat,note_value``; ``start_time`` and
``end_time`` are sample indices at 44.1 kHz, ``note`` a MIDI pitch, ``instrument`` a GM program.
A note is sounding at sample s when start_time <= s < end_time (MusicNet's interval-tree semantics).

Audio is resampled once to the model rate and cached as int16 ``.npy`` next to the data (or under
``cache_dir``), then memory-mapped, so a 10-hour corpus costs no RAM and no repeated resampling.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MUSICNET_RATE = 44100
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus")  # MusicNet ships .wav; compressed copies load the same


@dataclass
class Labels:
    """One recording's notes as sorted arrays (sample units at the recording's label rate, 44.1 kHz)."""
    start: np.ndarray       # (N,) int64, sorted ascending
    end: np.ndarray         # (N,) int64
    pitch: np.ndarray       # (N,) int64 MIDI
    instrument: np.ndarray  # (N,) int64 GM program
    max_duration: int       # longest note, bounds the search window of queries
    velocity: np.ndarray | None = None  # (N,) int64 MIDI velocity 1-127 (the renderer's extra column), -1 unknown

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "Labels":
        rows = []
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            for r in reader:
                vel = r.get("velocity")
                rows.append((int(float(r["start_time"])), int(float(r["end_time"])), int(float(r["note"])),
                             int(float(r["instrument"])), int(float(vel)) if vel not in (None, "") else -1))
        arr = np.array(rows, dtype=np.int64).reshape(-1, 5)
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        dur = int((arr[:, 1] - arr[:, 0]).max()) if len(arr) else 0
        return cls(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], dur, arr[:, 4])

    def active(self, positions: np.ndarray, pitches: list[int] | np.ndarray) -> np.ndarray:
        """(len(positions), len(pitches)) float32 0/1: which pitches sound at each sample position.

        Only notes that can overlap [min(positions), max(positions)] are visited (binary search on
        the sorted starts, bounded by the longest note), so a query costs O(log N + notes in range).
        """
        positions = np.asarray(positions, dtype=np.int64)
        pitches = np.asarray(pitches, dtype=np.int64)
        out = np.zeros((len(positions), len(pitches)), dtype=np.float32)
        if len(positions) == 0 or len(self.start) == 0:
            return out
        lo, hi = int(positions.min()), int(positions.max())
        i0 = np.searchsorted(self.start, lo - self.max_duration, side="left")
        i1 = np.searchsorted(self.start, hi, side="right")
        column = np.full(int(pitches.max()) + 1 if len(pitches) else 1, -1)
        column[pitches] = np.arange(len(pitches))
        order = np.argsort(positions, kind="stable")
        sorted_pos = positions[order]
        for s, e, p in zip(self.start[i0:i1], self.end[i0:i1], self.pitch[i0:i1]):
            if p < 0 or p >= len(column) or column[p] < 0:
                continue
            a, b = np.searchsorted(sorted_pos, s, "left"), np.searchsorted(sorted_pos, e, "left")
            if b > a:
                out[order[a:b], column[p]] = 1.0
        return out

    def onsets(self, positions: np.ndarray, pitches: list[int] | np.ndarray, half_width: int,
               spread: int = 0, values: str | None = None) -> np.ndarray:
        """(len(positions), len(pitches)) float32 0/1: a note of the pitch starts within ``half_width``
        samples of the position (frame centres, ascending), marked at the nearest position and at ``spread``
        positions either side of it (a target as wide as the uncertainty of where an attack is heard).
        ``values="velocity"``: the marks hold velocity / 127 instead of 1, and -1 where no note starts or its
        velocity is unknown (a mask for the velocity loss)."""
        positions = np.asarray(positions, dtype=np.int64)
        pitches = np.asarray(pitches, dtype=np.int64)
        out = np.full((len(positions), len(pitches)), -1.0 if values else 0.0, dtype=np.float32)
        if len(positions) == 0 or len(self.start) == 0:
            return out
        i0 = np.searchsorted(self.start, positions[0] - half_width, side="left")
        i1 = np.searchsorted(self.start, positions[-1] + half_width, side="right")
        starts, notes = self.start[i0:i1], self.pitch[i0:i1]
        column = np.full(max(int(pitches.max()), int(notes.max(initial=0))) + 1, -1)
        column[pitches] = np.arange(len(pitches))
        k = np.clip(np.searchsorted(positions, starts), 1, len(positions) - 1)
        k = np.where(np.abs(positions[k - 1] - starts) <= np.abs(positions[k] - starts), k - 1, k)
        ok = (np.abs(positions[k] - starts) <= half_width) & (notes >= 0) & (column[np.maximum(notes, 0)] >= 0)
        mark = np.ones(int(ok.sum()), np.float32)
        if values == "velocity":
            vel = self.velocity[i0:i1][ok] if self.velocity is not None else np.full(int(ok.sum()), -1)
            mark = np.where(vel > 0, vel / 127.0, -1.0).astype(np.float32)
        for d in range(-spread, spread + 1):
            rows = k[ok] + d
            inside = (rows >= 0) & (rows < len(positions))
            out[rows[inside], column[notes[ok]][inside]] = mark[inside]
        return out

    def notes(self, rate: int = MUSICNET_RATE) -> tuple[np.ndarray, np.ndarray]:
        """Unique (intervals (N, 2) seconds, MIDI pitches (N,)): unisons of two instruments count once."""
        intervals, pitches, _ = self.notes_with_velocity(rate)
        return intervals, pitches

    def notes_with_velocity(self, rate: int = MUSICNET_RATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``notes`` plus each note's velocity (the first of a unison; -1 where the labels have none)."""
        if not len(self.start):
            return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64)
        arr, first = np.unique(np.stack([self.start, self.end, self.pitch], 1), axis=0, return_index=True)
        vel = self.velocity[first] if self.velocity is not None else np.full(len(arr), -1, np.int64)
        return arr[:, :2].astype(np.float64) / rate, arr[:, 2], vel


@dataclass
class Recording:
    id: str
    wav: Path
    labels: Labels
    audio: np.ndarray  # (samples,) int16 memmap at the dataset's sample_rate

    def __len__(self) -> int:
        return len(self.audio)


def resample_cached(wav: Path, sample_rate: int, cache_dir: Path) -> np.ndarray:
    """The recording as mono int16 at ``sample_rate``: resampled once, then a memmap of the cache."""
    cache = cache_dir / f"{wav.stem}.npy"
    if not cache.exists() or cache.stat().st_mtime < wav.stat().st_mtime:
        import soundfile as sf
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        if sr != sample_rate:
            try:
                import librosa  # lazily: slow to import, and only needed when the rates differ
                mono = librosa.resample(mono, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
            except ImportError:  # minimal environments (e.g. a bare GPU image): scipy's polyphase resampler
                from math import gcd
                from scipy.signal import resample_poly
                g = gcd(sr, sample_rate)
                mono = resample_poly(mono, sample_rate // g, sr // g)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, np.clip(np.round(mono * 32767), -32768, 32767).astype(np.int16))
        os.replace(tmp, cache)
    return np.load(cache, mmap_mode="r")


class MusicNet:
    """One split of a MusicNet-layout folder at a model sample rate.

    ``labels_at(i, positions)`` gives the piano roll at arbitrary sample positions of the model-rate
    audio (window centres), ``crop(i, start, length)`` float audio (zero outside the recording).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", sample_rate: int = 16000,
                 cache_dir: str | os.PathLike | None = None, label_rate: int = MUSICNET_RATE,
                 ids: list[str] | None = None, progress: bool = False) -> None:
        self.root, self.split, self.sample_rate, self.label_rate = Path(root), split, sample_rate, label_rate
        data, labels = self.root / f"{split}_data", self.root / f"{split}_labels"
        if not data.is_dir() or not labels.is_dir():
            raise FileNotFoundError(f"{root} has no {split}_data/ and {split}_labels/ (MusicNet layout)")
        cache = Path(cache_dir) if cache_dir else self.root / f".cache_{sample_rate}" / split
        wavs = sorted(p for p in data.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
        if ids is not None:
            keep = set(ids)
            wavs = [w for w in wavs if w.stem in keep]
        if progress:
            from tqdm import tqdm
            wavs = tqdm(wavs, desc=f"{split}: resample cache", leave=False)
        self.recordings = []
        for wav in wavs:
            csv_path = labels / f"{wav.stem}.csv"
            if not csv_path.exists():
                continue
            self.recordings.append(Recording(wav.stem, wav, Labels.from_csv(csv_path),
                                             resample_cached(wav, sample_rate, cache)))
        if not self.recordings:
            raise FileNotFoundError(f"no labelled recordings in {data}")

    def __len__(self) -> int:
        return len(self.recordings)

    @property
    def hours(self) -> float:
        return sum(len(r) for r in self.recordings) / self.sample_rate / 3600

    def to_label_samples(self, positions: np.ndarray) -> np.ndarray:
        """Model-rate sample positions -> label-rate (44.1 kHz) sample indices."""
        return np.round(np.asarray(positions, dtype=np.float64) * self.label_rate / self.sample_rate).astype(np.int64)

    def labels_at(self, index: int, positions: np.ndarray, pitches: list[int]) -> np.ndarray:
        return self.recordings[index].labels.active(self.to_label_samples(positions), pitches)

    def onsets_at(self, index: int, positions: np.ndarray, pitches: list[int], half_width: float,
                  spread: int = 0, values: str | None = None) -> np.ndarray:
        """Onset roll at model-rate frame centres; ``half_width`` in model-rate samples (half a hop)."""
        hw = int(round(half_width * self.label_rate / self.sample_rate))
        return self.recordings[index].labels.onsets(self.to_label_samples(positions), pitches, hw, spread, values)

    def crop(self, index: int, start: int, length: int) -> np.ndarray:
        """float32 audio [start, start + length) at the model rate; zeros outside the recording."""
        audio = self.recordings[index].audio
        out = np.zeros(length, dtype=np.float32)
        a, b = max(start, 0), min(start + length, len(audio))
        if b > a:
            out[a - start: b - start] = audio[a:b].astype(np.float32) / 32768.0
        return out

    def audio(self, index: int) -> np.ndarray:
        return np.asarray(self.recordings[index].audio, dtype=np.float32) / 32768.0
