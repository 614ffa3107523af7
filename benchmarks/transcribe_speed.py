"""Transcription speed as real-time factor (audio seconds per wall second), median of several runs.

    python -m benchmarks.transcribe_speed [--checkpoint models/checkpoints/musicnet_complex.pt]
        [--arch complex_frame_transcriber|musicnet_paper_complex|musicnet_paper_real] [--seconds 180]
        [--threads 2] [--runs 5] [--device cpu|cuda] [--batch-size N (default: 4 on CPU, 16 on GPU)]

Times the whole public path, models.transcription.transcribe(): 44.1 kHz stereo in (so resampling
and down-mixing count), probabilities for every frame out. The input is a synthetic 3-minute
piece (random chords of harmonic tones), since speed does not depend on what is played.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from models.checkpoint import build_model, count_parameters, load_checkpoint
from models.transcription import transcribe
from training.loop import hardware_string


def synthetic_piece(seconds: float, sr: int = 44100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * sr), dtype=np.float32)
    t = np.arange(int(0.5 * sr)) / sr
    env = np.exp(-3 * t).astype(np.float32)
    for start in range(0, len(out) - len(t), len(t)):
        for m in rng.integers(40, 90, size=3):
            f = 440 * 2 ** ((m - 69) / 12)
            out[start: start + len(t)] += 0.1 * env * sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3))
    return np.stack([out, out], 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--arch", default="complex_frame_transcriber", help="untrained model when no --checkpoint")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write-meta", action="store_true", help="store the result under meta['speed'] of --checkpoint")
    ap.add_argument("--input-rate", type=int, default=44100, help="rate of the stereo test input (resampling counts)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.checkpoint:
        model, meta = load_checkpoint(a.checkpoint, device)
        arch = meta["arch"]
    else:
        model, arch = build_model(a.arch, {}).to(device).eval(), a.arch
    sr = a.input_rate
    audio = synthetic_piece(a.seconds, sr)
    transcribe(model, audio[: sr * 10], sr, a.batch_size)  # warm-up: allocator, kernels, librosa import
    times = []
    for _ in range(a.runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr = transcribe(model, audio, sr, a.batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    result = {"arch": arch, "audio_seconds": a.seconds, "frames": int(len(tr.times)), "runs": a.runs,
              "median_seconds": round(med, 3), "real_time_factor": round(a.seconds / med, 1),
              "all_seconds": [round(t, 3) for t in times], "batch_size": a.batch_size or "auto", "input_rate": sr,
              "hardware": hardware_string(device), "params": count_parameters(model)}
    print(json.dumps(result))
    if a.write_meta and a.checkpoint:
        from models.checkpoint import read_checkpoint, save_checkpoint
        blob = read_checkpoint(a.checkpoint)
        speed = dict(blob["meta"].get("speed", {}))
        speed[f"{device.type}_{a.threads}threads" if device.type == "cpu" else device.type] = result
        save_checkpoint(a.checkpoint, model.cpu(), blob["arch"], blob["config"], dict(blob["meta"], speed=speed))
    return result


if __name__ == "__main__":
    main()
