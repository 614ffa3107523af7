"""Size of POST /transcribe responses per minute of audio, for every format, through the real app.

    python -m benchmarks.transcribe_json_size [AUDIO_FILE] [--seconds 60] [--transcriber CKPT]

Without a file the input is benchmarks.transcribe_speed's synthetic piece (chords of harmonic tones, a new
one every 0.5 s). JSON size depends on what is played: every probability prints as "0.0" (3 bytes) up to
"0.123" (5 bytes) plus a comma; gzip (for reference only: the service does not compress) shows the redundancy.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import warnings
from pathlib import Path

import soundfile as sf
import torch

from benchmarks.transcribe_speed import synthetic_piece


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("audio", nargs="?", default=None)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic piece")
    ap.add_argument("--transcriber", default=None, help="checkpoint (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from service.app import create_app
    from service.settings import Settings

    if a.audio:
        data, name = Path(a.audio).read_bytes(), Path(a.audio).name
        seconds = sf.info(a.audio).duration
    else:
        buf = io.BytesIO()
        sf.write(buf, synthetic_piece(a.seconds), 44100, format="WAV")
        data, name, seconds = buf.getvalue(), "synthetic.wav", a.seconds
    settings = Settings(warmup=False, **({"transcriber_checkpoint": a.transcriber} if a.transcriber else {}))
    out = {"audio": name, "seconds": round(seconds, 2)}
    with TestClient(create_app(settings)) as c:
        for fmt in ("json", "npz", "midi", "csv"):
            r = c.post(f"/transcribe?format={fmt}", files={"file": (name, data)})
            r.raise_for_status()
            out[f"{fmt}_bytes_per_minute"] = round(len(r.content) * 60 / seconds)
            if fmt == "json":
                out["json_bytes"] = len(r.content)
                out["json_gzip1_bytes_per_minute"] = round(len(gzip.compress(r.content, 1)) * 60 / seconds)
                out["notes"] = len(r.json()["notes"])
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
