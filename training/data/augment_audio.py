"""Audio degradations that make synthesised music look like real recordings.

Shared by the corpus renderer (applied once, at 44.1 kHz, where cheap) and the MusicNet trainer
(applied on the fly to every training crop, at the model rate). Every function takes a numpy
Generator so a seed reproduces the exact result. None of them moves notes in time or pitch, so
labels stay valid (reverb tails and detuning of a few cents are what real recordings do too).
"""
from __future__ import annotations

import numpy as np
from scipy import signal


def _biquad(kind: str, f0: float, gain_db: float, q: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """RBJ audio-EQ-cookbook peaking / shelving filter coefficients (b, a)."""
    a_lin = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * min(f0, 0.45 * sr) / sr
    alpha = np.sin(w0) / (2 * q)
    cw = np.cos(w0)
    if kind == "peak":
        b = [1 + alpha * a_lin, -2 * cw, 1 - alpha * a_lin]
        a = [1 + alpha / a_lin, -2 * cw, 1 - alpha / a_lin]
    else:
        sq = 2 * np.sqrt(a_lin) * alpha
        if kind == "low":
            b = [a_lin * ((a_lin + 1) - (a_lin - 1) * cw + sq), 2 * a_lin * ((a_lin - 1) - (a_lin + 1) * cw),
                 a_lin * ((a_lin + 1) - (a_lin - 1) * cw - sq)]
            a = [(a_lin + 1) + (a_lin - 1) * cw + sq, -2 * ((a_lin - 1) + (a_lin + 1) * cw),
                 (a_lin + 1) + (a_lin - 1) * cw - sq]
        else:  # high shelf
            b = [a_lin * ((a_lin + 1) + (a_lin - 1) * cw + sq), -2 * a_lin * ((a_lin - 1) + (a_lin + 1) * cw),
                 a_lin * ((a_lin + 1) + (a_lin - 1) * cw - sq)]
            a = [(a_lin + 1) - (a_lin - 1) * cw + sq, 2 * ((a_lin - 1) - (a_lin + 1) * cw),
                 (a_lin + 1) - (a_lin - 1) * cw - sq]
    b, a = np.asarray(b), np.asarray(a)
    return b / a[0], a / a[0]


def random_eq(x: np.ndarray, sr: int, rng: np.random.Generator, max_db: float = 9.0) -> np.ndarray:
    """Microphone / room colouration: a low shelf, a high shelf and 1-2 peaks with random gains."""
    sos = []
    bands = [("low", rng.uniform(80, 400), 0.7), ("high", rng.uniform(2000, 0.4 * sr), 0.7)]
    bands += [("peak", float(np.exp(rng.uniform(np.log(150), np.log(0.35 * sr)))), rng.uniform(0.5, 3.0))
              for _ in range(rng.integers(1, 3))]
    for kind, f0, q in bands:
        b, a = _biquad(kind, f0, rng.uniform(-max_db, max_db), q, sr)
        sos.append(np.concatenate([b, a]))
    return signal.sosfilt(np.stack(sos), x).astype(np.float32)


def synthetic_rir(sr: int, rng: np.random.Generator, rt60: float | None = None) -> np.ndarray:
    """Room impulse response: direct path + exponentially decaying noise tail with early reflections."""
    rt60 = rng.uniform(0.2, 1.8) if rt60 is None else rt60
    n = int(min(rt60, 1.5) * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail = signal.lfilter([1.0], [1.0, -rng.uniform(0.3, 0.8)], tail)  # air absorbs highs faster
    tail[: int(0.005 * sr)] = 0.0
    for _ in range(rng.integers(2, 6)):  # a few discrete early reflections
        k = int(rng.uniform(0.003, 0.04) * sr)
        if k < n:
            tail[k] += rng.uniform(-1, 1) * 3
    tail *= rng.uniform(0.05, 0.4) / (np.sqrt((tail ** 2).sum()) + 1e-9)  # direct-to-reverberant ratio
    tail[0] = 1.0
    return tail.astype(np.float32)


def add_reverb(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    y = signal.fftconvolve(x, synthetic_rir(sr, rng))[: len(x)]
    return y.astype(np.float32)


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float | None = None) -> np.ndarray:
    """White/pink/brown background noise (hiss, hum-free room tone) at a random SNR."""
    snr_db = rng.uniform(20, 50) if snr_db is None else snr_db
    noise = rng.standard_normal(len(x))
    colour = rng.integers(0, 3)
    if colour == 1:
        noise = signal.lfilter([0.049922, -0.095993, 0.050612, -0.004408], [1, -2.494956, 2.017265, -0.522189], noise)
    elif colour == 2:
        noise = signal.lfilter([1.0], [1.0, -0.98], noise)
    p_sig = float(np.mean(x ** 2)) + 1e-10
    noise *= np.sqrt(p_sig / (10 ** (snr_db / 10)) / (np.mean(noise ** 2) + 1e-12))
    return (x + noise).astype(np.float32)


def normalise_peak(x: np.ndarray, peak_db: float) -> np.ndarray:
    return (x * (10 ** (peak_db / 20) / (np.abs(x).max() + 1e-9))).astype(np.float32)


def degrade(x: np.ndarray, sr: int, rng: np.random.Generator, p_reverb: float = 0.5, p_eq: float = 0.7,
            p_noise: float = 0.5) -> np.ndarray:
    """The random chain used for training crops: reverb, EQ, noise, level."""
    if rng.random() < p_reverb:
        x = add_reverb(x, sr, rng)
    if rng.random() < p_eq:
        x = random_eq(x, sr, rng)
    if rng.random() < p_noise:
        x = add_noise(x, rng)
    return (x * 10 ** (rng.uniform(-20, 6) / 20)).astype(np.float32)  # recording level


def degrade_split(src: str, dst: str, split: str = "test", seed: int = 1234, snr_db: float = 20.0) -> int:
    """Copy one split of a MusicNet-layout folder with every recording made 'hard': synthetic room
    reverb, strong mic EQ (+-9 dB) and noise at ``snr_db`` (a stress test for robustness)."""
    import shutil
    from pathlib import Path

    import soundfile as sf
    src_p, dst_p = Path(src), Path(dst)
    (dst_p / f"{split}_data").mkdir(parents=True, exist_ok=True)
    (dst_p / f"{split}_labels").mkdir(parents=True, exist_ok=True)
    wavs = sorted((src_p / f"{split}_data").glob("*.wav"))
    for i, f in enumerate(wavs):
        rng = np.random.default_rng([seed, i])
        x, sr = sf.read(f, dtype="float32")
        x = add_noise(random_eq(add_reverb(x, sr, rng), sr, rng, max_db=9.0), rng, snr_db=snr_db)
        sf.write(dst_p / f"{split}_data" / f.name, normalise_peak(x, -3.0), sr, subtype="PCM_16")
        shutil.copy(src_p / f"{split}_labels" / f"{f.stem}.csv", dst_p / f"{split}_labels" / f"{f.stem}.csv")
    return len(wavs)


def room_rir(sr: int, rng: np.random.Generator, rooms: str = "wet") -> tuple[np.ndarray, dict]:
    """A physically simulated room (image-source method, pyroomacoustics): a shoebox of random size and
    RT60, source and microphone at random places in it. A different room model from synthetic_rir
    (which training uses), so the realistic split also tests rooms the model has never heard.

    ``rooms="dry"``: how solo and chamber recordings for transcription are usually made (Bach10, URMP,
    MAPS' close microphones): a smaller, damped room (RT60 0.15-0.45 s) and the microphone 0.4-1.5 m from
    the player, so the direct sound dominates. The wet rooms (RT60 0.25-1.3 s, microphone anywhere) made
    rendered notes ring 240 ms after the note-off against about 60 ms on the real recordings."""
    import pyroomacoustics as pra
    dry = rooms == "dry"
    if dry:
        dims = np.array([rng.uniform(4, 10), rng.uniform(3, 8), rng.uniform(2.5, 4)])
        rt60 = float(rng.uniform(0.15, 0.45))
    else:
        dims = np.array([rng.uniform(4, 20), rng.uniform(3, 15), rng.uniform(2.5, 8)])
        rt60 = float(rng.uniform(0.25, 1.3))
    try:
        absorption, order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # RT60 not reachable in this room: the driest it allows
        absorption, order = 0.99, 3
    room = pra.ShoeBox(dims, fs=sr, materials=pra.Material(absorption), max_order=min(order, 40))
    margin = 0.5
    src = [rng.uniform(margin, d - margin) for d in dims[:2]] + [rng.uniform(0.8, min(2.0, dims[2] - margin))]
    mic = [rng.uniform(margin, d - margin) for d in dims[:2]] + [rng.uniform(1.0, min(3.0, dims[2] - margin))]
    if dry:  # a close microphone: a random direction from the player, kept inside the room
        u = rng.standard_normal(3)
        u[2] = abs(u[2]) * 0.3
        mic = list(np.clip(np.add(src, u / np.linalg.norm(u) * rng.uniform(0.4, 1.5)), margin, dims - margin))
    room.add_source(src)
    room.add_microphone(np.array(mic)[:, None])
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float64)
    # Start at the direct sound. The simulated response begins with the flight time from source to microphone
    # (up to ~50 ms in these rooms) plus the fractional-delay filter's half length; real recordings' labels are
    # aligned to the sound as recorded (MusicNet by DTW, MAESTRO by the Disklavier's own audio), so keeping that
    # delay would shift every onset late and score systems against the 50 ms onset tolerance, not the music.
    h = h[int(np.argmax(np.abs(h) >= 0.5 * np.abs(h).max())):][: int(1.5 * sr)]
    h /= np.abs(h).max() + 1e-12
    return h.astype(np.float32), {"room_m": [round(float(d), 1) for d in dims], "rt60": round(rt60, 2),
                                  "distance_m": round(float(np.linalg.norm(np.subtract(src, mic))), 2)}


def realistic(x: np.ndarray, sr: int, rng: np.random.Generator, rooms: str = "wet") -> tuple[np.ndarray, dict]:
    """How a recording made with one microphone in a real room differs from a clean render: the room
    (p=0.9), the microphone's and room's colouration (+-6 dB), background noise (25-45 dB SNR) and a
    recording level anywhere from quiet to hot."""
    info: dict = {}
    if rng.random() < 0.9:
        h, info = room_rir(sr, rng, rooms)
        x = signal.fftconvolve(x, h)[: len(x)].astype(np.float32)
    if rng.random() < 0.8:
        x = random_eq(x, sr, rng, max_db=6.0)
        info["eq"] = True
    if rng.random() < 0.7:
        info["snr_db"] = round(float(rng.uniform(25, 45)), 1)
        x = add_noise(x, rng, info["snr_db"])
    info["peak_db"] = round(float(rng.uniform(-30, -1)), 1)
    return normalise_peak(x, info["peak_db"]), info


def make_eval_splits(src: str, dst: str, split: str = "test", val_fraction: float = 0.4, seed: int = 1234,
                     rooms: str = "wet") -> dict:
    """From one rendered split, the evaluation sets: ``dst/clean`` and ``dst/realistic`` (see ``realistic``),
    each with a ``val`` split (for calibrating thresholds) and a ``test`` split (for reporting), divided
    by work so that no piece is in both. Every set keeps the ``metadata.jsonl`` records (group: solo or
    ensemble, instrument, ...) with the room of each realistic recording added."""
    import hashlib
    import json
    import os
    from pathlib import Path

    import soundfile as sf
    src_p, dst_p = Path(src), Path(dst)
    meta = {}
    if (src_p / "metadata.jsonl").exists():
        for line in open(src_p / "metadata.jsonl"):
            r = json.loads(line)
            meta[r["id"]] = r
    wavs = sorted((src_p / f"{split}_data").glob("*.wav"))
    counts = {"val": 0, "test": 0}
    records = {"clean": [], "realistic": []}
    for i, f in enumerate(wavs):
        work = meta.get(f.stem, {}).get("work", f.stem)
        h = int(hashlib.sha256(f"{seed}:{work}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        part = "val" if h < val_fraction else "test"
        counts[part] += 1
        for kind in ("clean", "realistic"):
            (dst_p / kind / f"{part}_data").mkdir(parents=True, exist_ok=True)
            (dst_p / kind / f"{part}_labels").mkdir(parents=True, exist_ok=True)
            label = dst_p / kind / f"{part}_labels" / f"{f.stem}.csv"
            if not label.exists():
                os.symlink((src_p / f"{split}_labels" / f"{f.stem}.csv").resolve(), label)
        clean = dst_p / "clean" / f"{part}_data" / f.name
        if not clean.exists():
            os.symlink(f.resolve(), clean)
        rng = np.random.default_rng([seed, i])
        x, sr = sf.read(f, dtype="float32")
        y, info = realistic(x, sr, rng, rooms)
        sf.write(dst_p / "realistic" / f"{part}_data" / f.name, y, sr, subtype="PCM_16")
        base = {**meta.get(f.stem, {"id": f.stem}), "split": part}
        records["clean"].append(base)
        records["realistic"].append({**base, "realistic": info})
    for kind, recs in records.items():
        with open(dst_p / kind / "metadata.jsonl", "w") as out:
            for r in recs:
                out.write(json.dumps(r) + "\n")
    return counts


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser(description="python -m training.data.augment_audio SRC DST: a degraded copy of a "
                                             "split (--hard), or clean + realistic val/test evaluation sets (--eval-sets)")
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--snr-db", type=float, default=20.0)
    ap.add_argument("--eval-sets", action="store_true", help="write DST/clean and DST/realistic, each val + test")
    ap.add_argument("--val-fraction", type=float, default=0.4)
    ap.add_argument("--rooms", choices=["wet", "dry"], default="wet",
                    help="the realistic set's rooms: wet (RT60 0.25-1.3 s, microphone anywhere) or dry (RT60 "
                         "0.15-0.45 s, microphone 0.4-1.5 m away, as solo and chamber recordings are made)")
    a = ap.parse_args()
    if a.eval_sets:
        print(json.dumps(make_eval_splits(a.src, a.dst, a.split, a.val_fraction, a.seed, a.rooms)),
              "recordings per split in", a.dst)
    else:
        print(degrade_split(a.src, a.dst, a.split, a.seed, a.snr_db), "recordings written to", a.dst)
