"""python scripts/render_tails.py DIR [KIND]: how long rendered notes ring after their note-off.

For every note of the test split's KIND recordings (training.data.render.recording_kind: solo, piano, ensemble;
default solo) that is followed by at least 0.5 s in which no note of the recording sounds, the time from its
note-off until the recording's level (10 ms RMS) has fallen 20 dB below the note's peak (capped at 0.5 s). Prints
the count and the median and quartiles. The transcriber card compares these with real recordings (where v2, which
learned to end notes at that 20 dB point, ended about +60 ms after the annotated note-off).
"""
import csv
import glob
import json
import sys

import numpy as np
import soundfile as sf

from training.data.render import recording_kind


def tails(root: str, kind: str = "solo") -> np.ndarray:
    with open(f"{root}/metadata.jsonl") as f:
        meta = {r["id"]: r for r in map(json.loads, f)}
    out = []
    for wav in sorted(glob.glob(f"{root}/test_data/*.wav")):
        if recording_kind(meta[wav.split("/")[-1][:-4]]) != kind:
            continue
        x, sr = sf.read(wav)
        hop = sr // 100
        n = len(x) // hop
        env = 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, 1) + 1e-12)
        labels = wav.replace("_data", "_labels").replace(".wav", ".csv")
        with open(labels) as f:
            rows = sorted((int(r["start_time"]) / 44100, int(r["end_time"]) / 44100) for r in csv.DictReader(f))
        for s, e in rows:
            if any(s2 < e + 0.5 and e2 > e - 1e-6 and (s2, e2) != (s, e) for s2, e2 in rows):
                continue  # another note sounds within 0.5 s of this note-off
            a, b = int(s * 100), int(e * 100)
            if b <= a or b + 50 >= n:
                continue
            quiet = np.flatnonzero(env[b: b + 50] < env[a:b].max() - 20)
            out.append((quiet[0] if len(quiet) else 50) / 100)
    return np.array(out)


if __name__ == "__main__":
    t = tails(*sys.argv[1:3])
    print(f"{sys.argv[1]}: {len(t)} notes followed by >= 0.5 s of silence; time to -20 dB: median "
          f"{1000 * np.median(t):.0f} ms, quartiles {1000 * np.percentile(t, 25):.0f} / {1000 * np.percentile(t, 75):.0f} ms")
