"""Our transcriber checkpoints side by side, without Basic Pitch (minutes instead of an hour): frame AP, note onset
F1, note F1 with offsets, median offset error and false harmonic / fragment notes, pooled over all files and per
group (metadata ``group``: solo / ensemble, or ``--group-by`` another field; solo pianos count as piano).

    python scripts/transcriber_ab.py --checkpoint models/checkpoints/musicnet_complex_v4.pt \
        --checkpoint models/checkpoints/musicnet_complex_v5.pt --data /work/data/v5tl-eval/realistic [--data ...]

Same reading, references, decoding (each model's calibrated defaults) and metrics as
``benchmarks.transcribe_compare``, whose project column it reproduces.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.transcribe_compare import find_items, frame_targets, read_audio, reference
from models.checkpoint import load_checkpoint
from models.transcription import decode_notes, decoding_defaults, transcribe
from training.metrics import average_precision, note_errors, note_metrics


def group_of(meta: dict, field: str) -> str:
    if meta.get("ensemble") == "solo_piano" and field == "group":
        return "piano"
    return str(meta.get(field, "?"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", required=True, help="repeatable")
    ap.add_argument("--data", action="append", required=True, help="repeatable: MusicNet-layout folders")
    ap.add_argument("--split", default="test")
    ap.add_argument("--group-by", default="group")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onset-threshold", type=float, default=None, help="instead of each model's calibrated one")
    ap.add_argument("--monophonic", action="store_true", help="decode at most one note at a time (single lines)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    models = [(Path(c).name, *load_checkpoint(c)) for c in a.checkpoint]
    for data in a.data:
        items = find_items(data, a.split)
        acc: dict[tuple[str, str], dict] = {}
        for it in items:
            audio, sr = read_audio(it.audio, None)
            ref_i, ref_p = reference(it, len(audio) / sr)
            for name, model, _ in models:
                tr = transcribe(model, audio, sr)
                notes = decode_notes(tr, onset_threshold=a.onset_threshold, defaults=decoding_defaults(model),
                                     monophonic=a.monophonic)
                m, e = note_metrics(ref_i, ref_p, notes), note_errors(ref_i, ref_p, notes)
                for g in ("all", group_of(it.meta, a.group_by)):
                    s = acc.setdefault((g, name), {"tp": 0, "tp_off": 0, "est": 0, "ref": 0, "targets": [],
                                                   "scores": [], "offsets": [], "harmonic": 0, "fragment": 0})
                    s["tp"] += round(m["note_recall"] * len(ref_p))
                    s["tp_off"] += round(m["note_with_offset_recall"] * len(ref_p))
                    s["est"] += len(notes)
                    s["ref"] += len(ref_p)
                    s["offsets"] += list(e["offset_errors"])
                    s["harmonic"] += e["false"]["harmonic"]
                    s["fragment"] += e["false"]["fragment"]
                    s["targets"].append(frame_targets(it, tr.times))
                    s["scores"].append(tr.probabilities)
        print(f"\n{data} ({a.split}, {len(items)} files)\n")
        print("| group | checkpoint | frame AP | onset F1 | F1 with offsets | offset error (ms) | notes est (ref) "
              "| harmonic | fragment |\n|---|---|---|---|---|---|---|---|---|")
        for (g, name), s in sorted(acc.items(), key=lambda kv: (kv[0][0] != "all", kv[0][0])):
            f1 = (lambda tp: 2 * tp / (s["est"] + s["ref"]) if s["est"] + s["ref"] else 0.0)
            ap_ = average_precision(np.concatenate(s["targets"]), np.concatenate(s["scores"]))
            off = 1000 * float(np.median(s["offsets"])) if s["offsets"] else float("nan")
            print(f"| {g} | {name} | {ap_:.4f} | {f1(s['tp']):.4f} | {f1(s['tp_off']):.4f} | {off:+.0f} | "
                  f"{s['est']} ({s['ref']}) | {s['harmonic']} | {s['fragment']} |", flush=True)


if __name__ == "__main__":
    main()
