"""What one worker runs: a callable class per model for Ray Data's ``map_batches`` (the model loads once per
worker, lazily, so a run that only skips loads nothing). A batch is a few input rows; the windows of all the
batch's files go through the model together, ``batch_size`` at a time, as the service batches requests.

No Ray here: the classes take and return plain column dicts, so they are testable without it. Output bytes come
from the transcription API the CLI uses (``models.inference``: resolved decoding, ``TranscriptionResult.save``), so
a file's outputs equal ``dcn-transcribe``'s.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from models import transcription as tr
from models.checkpoint import file_sha256, load_checkpoint
from models.inference import AudioError, load_audio, load_transcriber, transcription_result


def is_url(path: str) -> bool:
    return "://" in path


@contextmanager
def local_copy(path: str) -> Iterator[tuple[str, str]]:
    """(a local file with the input's bytes, their sha256). URLs (s3://, gs://, ... whatever pyarrow.fs reads) are
    copied to a temporary file with the same suffix, so the CLI's reader sees the same bytes and the same type."""
    if not is_url(path):
        if not Path(path).is_file():
            raise AudioError("no such file" if not Path(path).exists() else "not a file")
        yield path, file_sha256(path)
        return
    import pyarrow.fs  # the batch extra; only URLs need it
    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    with fs.open_input_stream(inner) as f:
        data = f.read()
    with tempfile.NamedTemporaryFile(suffix=Path(inner).suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        yield tmp.name, file_sha256(tmp.name)


def write_atomically(outs: list[str], write) -> None:
    """``write(temporary_paths)`` then rename each into place: a worker killed mid-write leaves no partial output
    under the real name (the temporary name keeps the whole ending, .notes.json too, which selects the format)."""
    tmps = [Path(o).with_name(f".part-{os.getpid()}-{Path(o).name}") for o in outs]
    try:
        write(tmps)
        for t, o in zip(tmps, outs):
            os.replace(t, o)
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]} if rows else {}


class _Worker:
    """Shared by both models: lazy model load, hash + skip check, the result row."""

    def __init__(self, checkpoint: str, threads: int, device: str, loader=load_checkpoint) -> None:
        self.checkpoint, self.threads, self.device, self.loader = checkpoint, threads, device, loader
        self.model: torch.nn.Module | None = None
        self.meta: dict = {}
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        torch.set_num_threads(threads)  # as the CLI's --threads: the same thread count gives the same bits

    def load(self) -> int:
        """Load the model if not yet loaded; 1 when this call loaded it (the summary counts model loads)."""
        if self.model is not None:
            return 0
        self.model, self.meta = self.loader(self.checkpoint, self.device)
        return 1

    def row(self, src: dict, status: str, reason: str = "", sha256: str = "", seconds: float = 0.0,
            **extra) -> dict:
        return {"path": str(src["path"]), "status": status, "reason": reason, "sha256": sha256,
                "outputs": str(src["outputs"]), "seconds": float(seconds), "windows": 0, "model_loads": 0,
                "worker": self.name, **extra}

    @staticmethod
    def unchanged(src: dict, sha256: str) -> bool:
        """Done before with the same bytes and every output still there: nothing to do."""
        outs = json.loads(str(src["outputs"]))
        return bool(src["prev_sha256"]) and sha256 == src["prev_sha256"] and all(Path(o).is_file() for o in outs)


class Transcriber(_Worker):
    """Audio rows (path, outputs, prev_sha256, prev_seconds) -> manifest rows; writes the CLI's output files.
    ``decoding``: ``models.inference.resolve_decoding``'s dict (the CLI's); ``midi_tempo`` and
    ``sonification_samplerate`` as the CLI's options of those names."""

    def __init__(self, checkpoint: str, decoding: dict, threads: int = 1, batch_size: int | None = None,
                 device: str = "cpu", midi_tempo: float = 120.0, sonification_samplerate: int = 22050) -> None:
        super().__init__(checkpoint, threads, device, load_transcriber)  # as the CLI: meta names the model (.json)
        self.decoding, self.midi_tempo, self.sonification_samplerate = decoding, midi_tempo, sonification_samplerate
        self.batch_size = batch_size or (16 if device.startswith("cuda") else 4)  # as models.transcription

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        results, pending, loads = [], [], 0
        for src in _rows(batch):
            sha = ""
            try:
                with local_copy(str(src["path"])) as (local, sha):
                    if self.unchanged(src, sha):
                        results.append(self.row(src, "skipped", sha256=sha, seconds=src["prev_seconds"], notes=0))
                        continue
                    audio, sr = load_audio(local)  # before the model: a file that cannot be read costs no load
                loads += self.load()
                seconds = len(audio) / sr
                mono = tr.prepare_audio(audio, sr, self.model.sample_rate)
            except (ValueError, OSError) as e:  # AudioError; ValueError: empty, NaN or infinite samples
                results.append(self.row(src, "failed", str(e), sha, notes=0))
                continue
            windows, n_frames = tr.cut_windows(self.model, mono)
            pending.append((src, sha, seconds, windows, n_frames))
        if pending:
            results += self._transcribe(pending)
        if results and loads:
            results[0]["model_loads"] = loads
        return _columns(results)

    @torch.inference_mode()
    def _transcribe(self, pending: list) -> list[dict]:
        m = self.model
        windows = torch.cat([p[3] for p in pending])
        probs = torch.cat([tr.predict_windows(m, windows[i: i + self.batch_size]).cpu()
                           for i in range(0, len(windows), self.batch_size)])
        out, start = [], 0
        pitches = np.asarray(m.pitches, dtype=np.int64)
        for src, sha, seconds, w, n_frames in pending:
            t = tr.Transcription.from_heads(tr.frame_times(m, n_frames), pitches,
                                            tr.stitch_windows(probs[start: start + len(w)], n_frames).numpy(),
                                            tr.heads(m))
            start += len(w)
            try:
                result = transcription_result(m, self.meta, t, seconds, self.decoding, str(src["path"]),
                                              self.midi_tempo)
            except AudioError as e:  # non-finite model output
                out.append(self.row(src, "failed", f"{e}; nothing written", sha, seconds, notes=0, windows=len(w)))
                continue
            outs = json.loads(str(src["outputs"]))
            try:
                write_atomically(outs, lambda tmps, result=result: [result.save(p, self.sonification_samplerate)
                                                                    for p in tmps])
            except OSError as e:
                out.append(self.row(src, "failed", f"cannot write outputs: {e}", sha, seconds, notes=0,
                                    windows=len(w)))
                continue
            out.append(self.row(src, "done", "", sha, seconds, notes=len(result.notes), windows=len(w)))
        return out


class Classifier(_Worker):
    """Image rows -> manifest rows with the top-k labels and probabilities (the service's decoder and classify)."""

    def __init__(self, checkpoint: str, input_size: tuple[int, int], threads: int = 1, top_k: int = 5,
                 device: str = "cpu", flip_tta: bool = True, max_pixels: int = 40_000_000) -> None:
        super().__init__(checkpoint, threads, device)
        self.input_size = tuple(input_size)  # the checkpoint's, given: images decode before the model loads
        self.top_k, self.flip_tta, self.max_pixels = top_k, flip_tta, max_pixels

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        from models.cifar import classify
        from service.decode import DecodeError, decode_image
        results, pending, loads = [], [], 0
        for src in _rows(batch):
            sha = ""
            try:
                with local_copy(str(src["path"])) as (local, sha):
                    if self.unchanged(src, sha):
                        results.append(self.row(src, "skipped", sha256=sha, labels="[]", probabilities="[]"))
                        continue
                    data = Path(local).read_bytes()
                pending.append((src, sha, decode_image(data, self.input_size, self.max_pixels)))
                loads += self.load()
            except (AudioError, DecodeError, OSError) as e:
                results.append(self.row(src, "failed", getattr(e, "detail", None) or str(e), sha, labels="[]",
                                        probabilities="[]"))
        if pending:
            with torch.inference_mode():
                probs = classify(self.model, torch.stack([p[2] for p in pending]), flip_tta=self.flip_tta)
            names = [str(n) for n in self.meta["class_names"]]
            top = probs.topk(min(self.top_k, probs.shape[1]), dim=1)
            for (src, sha, _), values, idx in zip(pending, top.values.tolist(), top.indices.tolist()):
                results.append(self.row(src, "done", "", sha, labels=json.dumps([names[i] for i in idx]),
                                        probabilities=json.dumps([round(v, 6) for v in values]), windows=1))
        if results and loads:
            results[0]["model_loads"] = loads
        return _columns(results)
