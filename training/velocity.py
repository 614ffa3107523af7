"""Note velocity from the level of a note's attack, fitted on renders whose velocities are known.

    python -m training.velocity --checkpoint runs/musicnet/v5/model_cal.pt \
        --data /work/data/v3b-keys-eval/realistic --data /work/data/v3b-piano-keys-eval/realistic --split val \
        --out models/checkpoints/musicnet_complex_v5.pt

Why not a learned head: v3 trained one as Onsets and Frames does (squared error at note onsets) and it did not
learn (Pearson r 0.045 against the rendered velocities; models/checkpoints/musicnet_complex_v3.md). The renders
play every recording at a random level, so in a 4-second crop how loud a note is says little about how hard it
was played; what does carry over is how loud it is *relative to the other notes of the same recording*.

What this fits instead: ``ComplexNoteTranscriber.attack_level_db`` reads, off the complex front end, the level of
each key's first four harmonics at its loudest within 60 ms of the frame (no parameters), and the model maps it
to velocity / 127 = sigmoid(slope * (dB - level)). ``slope`` relates logit(velocity / 127) to that level *within*
each recording (each recording's mean removed, so that its playback level does not count; the ratio of spreads,
see ``fit_line``), ``level`` puts the recordings' average level at their average velocity. As in Basic Pitch, the velocity
of a quietly recorded file is lower throughout; mir_eval's velocity metric (and Onsets and Frames') rescales
velocities per recording for that reason.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import build_model, read_checkpoint, save_checkpoint
from models.transcription import transcribe

PROBE_SLOPE = 0.05  # while fitting, the output is sigmoid(0.05 * dB): invertible without saturating at -100..0 dB


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def attack_levels(model, wav: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """(level dB at each labelled note's onset frame and key, its rendered velocity) for one recording; notes
    without a velocity or outside the model's keys are left out. ``model`` has ``level_velocity=(PROBE_SLOPE, 0)``."""
    import soundfile as sf

    from training.data.musicnet import Labels
    audio, sr = sf.read(str(wav), dtype="float32")
    tr = transcribe(model, audio, sr)
    lab = Labels.from_csv(labels)
    intervals, pitches, velocities = lab.notes_with_velocity()
    lo, hi = int(tr.pitches[0]), int(tr.pitches[-1])
    keep = (velocities > 0) & (pitches >= lo) & (pitches <= hi) & (intervals[:, 0] < tr.times[-1])
    frame = np.clip(np.searchsorted(tr.times, intervals[keep, 0]), 0, len(tr.times) - 1)
    db = _logit(tr.velocities[frame, pitches[keep] - lo]) / PROBE_SLOPE
    return db, velocities[keep].astype(np.float64)


def fit_line(per_file: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
    """(slope, level, r): logit(v / 127) = slope * (dB - level), the slope from within-file deviations; r is the
    Pearson r of fitted and rendered velocities within files, averaged with note-count weights.

    The slope is the ratio of the deviations' spreads (signed by their correlation), not the least-squares one:
    with r about 0.5 least squares would squeeze every note towards the mean velocity (a MIDI file of mezzo-fortes);
    this way the estimates spread as widely as the played velocities do. mir_eval's velocity metric rescales per
    file, so it is indifferent to the choice."""
    xs = [(x - x.mean(), _logit(v / 127) - _logit(v / 127).mean()) for x, v in per_file if len(x) >= 3]
    dx, dy = np.concatenate([a for a, _ in xs]), np.concatenate([b for _, b in xs])
    slope = float(np.sign((dx * dy).sum()) * dy.std() / max(dx.std(), 1e-12))
    x_all = np.concatenate([x for x, _ in per_file])
    y_all = np.concatenate([_logit(v / 127) for _, v in per_file])
    level = float(x_all.mean() - y_all.mean() / slope) if slope else 0.0
    rs = [(np.corrcoef(x, v)[0, 1], len(x)) for x, v in per_file if len(x) >= 3 and x.std() > 0 and v.std() > 0]
    r = float(np.average([a for a, _ in rs], weights=[n for _, n in rs])) if rs else float("nan")
    return slope, level, r


def fit(checkpoint: str, data: list[str], split: str = "val", out: str | None = None, threads: int = 2) -> dict:
    """Fit the level -> velocity map on ``data`` folders (MusicNet layout with a velocity label column) and save
    the checkpoint with ``level_velocity`` set (``out``, default: in place)."""
    torch.set_num_threads(threads)
    blob = read_checkpoint(checkpoint)
    probe = build_model(blob["arch"], dict(blob["config"], level_velocity=(PROBE_SLOPE, 0.0)))
    probe.load_state_dict(blob["state_dict"])
    probe.eval()
    per_file = []
    for root in data:
        for wav in sorted((Path(root) / f"{split}_data").glob("*.wav")):
            db, vel = attack_levels(probe, wav, Path(root) / f"{split}_labels" / f"{wav.stem}.csv")
            if len(db):
                per_file.append((db, vel))
    if not per_file:
        raise SystemExit(f"no labelled velocities in the {split} split of {data}")
    slope, level, r = fit_line(per_file)
    cfg = dict(blob["config"], level_velocity=[round(slope, 5), round(level, 3)])
    model = build_model(blob["arch"], cfg)
    model.load_state_dict(blob["state_dict"])
    report = {"data": list(data), "split": split, "recordings": len(per_file),
              "notes": int(sum(len(x) for x, _ in per_file)), "slope_per_db": round(slope, 5),
              "level_db": round(level, 3), "level_r_within_file": round(r, 3)}
    save_checkpoint(out or checkpoint, model, blob["arch"], cfg, dict(blob["meta"], velocity_fit=report))
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.velocity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, action="append", help="MusicNet-layout folder (repeatable, pooled)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", default=None, help="write the checkpoint here (default: in place)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    print(json.dumps(fit(a.checkpoint, a.data, a.split, a.out, a.threads), indent=1))


if __name__ == "__main__":
    main()
