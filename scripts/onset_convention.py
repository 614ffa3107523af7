"""Does a timing convention separate our labels from the ones real transcribers learned? Onset errors by system.

    python scripts/onset_convention.py --data /work/data/v5tl-eval/realistic --split test \
        --checkpoint models/checkpoints/musicnet_complex_v2.pt [--checkpoint ...] [--group-by group] [--threads 2]

Basic Pitch learned its onsets from real annotated recordings (MAESTRO, GuitarSet, MedleyDB, ...); our models from
the renders' labels. If the renders put an onset where real annotations do not (a sample's attack trimmed
differently, a room's delay, a label at the key press rather than where the tone speaks), Basic Pitch's onsets
are offset on the renders by that much, costing it onset F1 at the 50 ms tolerance, and ours are offset the other
way on real audio. For every system this prints, per group: the median and quartiles of (estimated - reference)
onset over notes matched by pitch and onset within 150 ms (mir_eval's matching, as scored), the share of those outside 50 ms,
onset F1 as scored (50 ms), and onset F1 with every estimated note moved by the shift that scores best (-60..+60 ms
in 5 ms steps) with that shift. A best shift of a few ms says the conventions agree; a large one, that the split
misjudges the system by its timing, not its hearing.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
from collections import defaultdict

import numpy as np

from benchmarks.transcribe_compare import BasicPitch, Project, find_items, reference
from training.metrics import note_errors, note_metrics

SHIFTS_MS = np.arange(-60, 61, 5)


def shifted(notes: list[dict], s: float) -> list[dict]:
    """Every note moved by ``s`` seconds (a note moved before 0 is dropped, as it would be from the recording)."""
    return [{**n, "onset": n["onset"] + s, "offset": n["offset"] + s} for n in notes if n["onset"] + s >= 0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--checkpoint", action="append", default=[], help="repeatable; project checkpoints to compare")
    ap.add_argument("--no-basic-pitch", action="store_true")
    ap.add_argument("--group-by", default=None, help="metadata field (group, instrument, kind, ...)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-files", type=int, default=None)
    a = ap.parse_args(argv)
    systems = [(os.path.basename(c).removesuffix(".pt"), Project(c, a.threads)) for c in a.checkpoint]
    if not a.no_basic_pitch:
        systems.append(("basic_pitch", BasicPitch(a.threads)))
    items = find_items(a.data, a.split)[: a.max_files]
    # per system and group: onset errors, and (tp, n_est, n_ref) at every shift
    errors: dict = defaultdict(list)
    counts: dict = defaultdict(lambda: np.zeros((len(SHIFTS_MS), 3)))
    for i, item in enumerate(items):
        groups = ["all"] + ([str(item.meta.get(a.group_by, "?"))] if a.group_by else [])
        for name, system in systems:
            out = system.run(item.audio, None)
            ref_i, ref_p = reference(item, out.seconds)
            errs = note_errors(ref_i, ref_p, out.notes, onset_tolerance=0.15)["onset_errors"]
            row = np.array([[note_metrics(ref_i, ref_p, shifted(out.notes, s / 1000))["note_recall"] * len(ref_p),
                             len(out.notes), len(ref_p)] for s in SHIFTS_MS])
            for g in groups:
                errors[name, g] += errs
                counts[name, g] += row
        print(f"{i + 1}/{len(items)} {item.id}", flush=True)
    zero = int(np.flatnonzero(SHIFTS_MS == 0)[0])
    print("\n| group | system | onset error median (ms) | quartiles (ms) | matched beyond 50 ms | onset F1 | best shift "
          "(ms) | onset F1 shifted |\n|---|---|---|---|---|---|---|---|")
    for (name, g), c in sorted(counts.items(), key=lambda kv: (kv[0][1] != "all", kv[0][1], kv[0][0])):
        e = 1000 * np.asarray(errors[name, g])
        f1 = 2 * c[:, 0] / np.maximum(c[:, 1] + c[:, 2], 1)
        best = int(np.argmax(f1))
        q1, med, q3 = np.percentile(e, [25, 50, 75]) if len(e) else (np.nan,) * 3
        print(f"| {g} | {name} | {med:+.0f} | {q1:+.0f} .. {q3:+.0f} | {np.mean(np.abs(e) > 50) if len(e) else 0:.1%} "
              f"| {f1[zero]:.3f} | {SHIFTS_MS[best]:+d} | {f1[best]:.3f} |")


if __name__ == "__main__":
    main()
