"""Corpus renderer: real scores from music21's bundled corpus -> a dataset in the MusicNet layout.

    python -m training.data.render --out /work/data/musicnet-rendered --hours 10 --seed 0

writes ``train_data/*.wav`` and ``test_data/*.wav`` (mono, 44.1 kHz, 16 bit), ``train_labels/*.csv``
and ``test_labels/*.csv`` (MusicNet's columns: start_time,end_time,instrument,note,start_beat,end_beat,
note_value; times in samples at 44.1 kHz, instrument the 1-based General MIDI program as in MusicNet)
and ``metadata.jsonl`` (one line per recording: piece, ensemble, programs, soundfont, tempo, ...).

Each recording is one piece played by one of MusicNet's ensemble types with random programs per
family, soundfont, tempo, dynamics, per-part mixing levels, vibrato, detuning, FluidSynth reverb and
chorus, stereo-to-mono mix, microphone EQ, noise and level. Train/test are split by work (chorales by
melody, so two harmonisations of one tune never straddle the split); the chorales reserved for
independent evaluation (RESERVED_BWV) and every chorale sharing a melody with them are excluded.
Everything derives from ``--seed``: the same seed and corpus give the same files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

MUSICNET_RATE = 44100
MAX_SCORE_BYTES = 250_000  # opus133 (the Grosse Fuge) and similar single-file giants take minutes to parse
CSV_HEADER = "start_time,end_time,instrument,note,start_beat,end_beat,note_value,velocity"  # MusicNet's + velocity
RESERVED_BWV = ("255", "256", "273", "274", "275", "296", "297", "326", "327", "364", "385", "48.3", "62.6", "114.7")
SOUNDFONT_CANDIDATES = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/TimGM6mb.sf2",
                        "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",
                        "/usr/share/sounds/sf2/sf_GMbank.sf2")
# Composers of the music21 corpus with real multi-part art music (the folk-song collections are
# monophonic tunes, left out). Pieces per composer are capped so Palestrina does not dominate.
COMPOSERS = {"bach": 450, "beethoven": 30, "mozart": 30, "haydn": 30, "monteverdi": 100, "palestrina": 220,
             "trecento": 60, "josquin": 10, "corelli": 5, "handel": 5, "schubert": 5, "chopin": 5,
             "weber": 5, "cpebach": 5, "schumann": 5, "verdi": 5, "joplin": 5, "luca": 5, "ciconia": 5}

# General MIDI programs (0-based) per family; several per family so timbres vary like real instruments.
FAMILIES = {
    "piano": [0, 0, 0, 1, 2],
    "harpsichord": [6, 6, 7],
    "violin": [40, 40, 40, 110],
    "viola": [41, 41, 40],
    "cello": [42, 42, 43],
    "bass": [43, 42],
    "flute": [73, 73, 72, 74],
    "oboe": [68, 68, 69],
    "clarinet": [71],
    "bassoon": [70],
    "horn": [60, 60, 61],
    "organ": [19, 20, 16],
    "saxophone": [64, 65, 66, 66, 67],
    "trumpet": [56, 56, 59],
}
KEYBOARDS = ("piano", "harpsichord", "organ")
# MusicNet's ensemble types, as the families that play the parts from the highest to the lowest.
# "*" repeats the previous family for any further parts; "piano:" parts share one piano.
ENSEMBLES = {
    "solo_piano": (0.28, ["piano*"]),
    "harpsichord": (0.07, ["harpsichord*"]),
    "string_quartet": (0.17, ["violin", "violin", "viola", "cello", "cello*"]),
    "accompanied_violin": (0.08, ["violin", "piano*"]),
    "accompanied_cello": (0.04, ["cello", "piano*"]),
    "piano_trio": (0.06, ["violin", "piano", "piano", "cello", "piano*"]),
    "wind_quintet": (0.08, ["flute", "oboe", "clarinet", "horn", "bassoon", "bassoon*"]),
    "clarinet_quintet": (0.05, ["clarinet", "violin", "viola", "cello", "cello*"]),
    "horn_piano": (0.04, ["horn", "piano*"]),
    "wind_and_strings": (0.07, ["flute", "violin", "clarinet", "viola", "bassoon", "cello*"]),
    "organ": (0.03, ["organ*"]),
    "string_orchestra": (0.03, ["violin", "violin", "viola", "cello", "bass*"]),
    # Chorales as the real recordings users bring (Bach10-like): four wind/string players, one per part.
    "violin_clarinet_sax_bassoon": (0.10, ["violin", "clarinet", "saxophone", "bassoon", "bassoon*"]),
    "mixed_quartet": (0.08, ["flute|violin|oboe|trumpet", "clarinet|viola|saxophone|violin",
                             "saxophone|horn|viola|clarinet", "bassoon|cello|bass|horn", "cello*"]),
    "sax_quartet": (0.03, ["saxophone", "saxophone", "saxophone", "saxophone", "saxophone*"]),
}


@dataclass
class RenderConfig:
    out: str = "/work/data/musicnet-rendered"
    hours: float = 10.0            # training audio to render (test split comes on top)
    test_fraction: float = 0.10    # of works, by hash of (seed, work)
    variants: int = 2              # renders per training piece (different ensemble, tempo, soundfont, ...)
    solo_fraction: float = 0.5     # train renders that also write one part alone (a solo recording); test: every part
    only_split: str | None = None  # "test": render only the test works (a bigger evaluation set), stop at test_hours
    test_hours: float = 0.0        # with only_split="test": stop after this much test audio
    skip: int = 0                  # start at this piece of the shuffled list (continue an earlier render)
    first_variant: int = 0         # number variants from here: new renderings of the same works (same splits)
    seed: int = 0
    workers: int = 1
    max_seconds: float = 420.0     # longer movements are cut (keeps one huge quartet from dominating)
    soundfonts: list[str] = field(default_factory=lambda: [p for p in SOUNDFONT_CANDIDATES if os.path.exists(p)])
    pieces: list[str] = field(default_factory=list)  # explicit corpus paths (tests); default: COMPOSERS
    # Label note ends: "performed" (the note-off, pedal-extended on piano: MAESTRO's convention), "keys" (the
    # note-off, the pedal sounds but extends no label: references taken from a piano's MIDI) or "audible" (v2).
    offsets: str = "performed"
    sampled: bool = True           # some stems played by the sample player (real piano samples, more banks)
    ensembles: list[str] = field(default_factory=list)  # only these ensemble types (e.g. solo_piano); default: all
    recorded: float = 0.0          # non-piano stems played by a recorded instrument when one plays the part
    legato: bool = False           # sampled bowed / wind notes followed at once by the next stop without a tail
    slur: float = 0.0              # with legato: probability that such a following note is slurred (no attack)
    expression: bool = False       # sampled bowed / wind notes swell, fade, tremble and change bow while held
    natural_vibrato: bool = False  # recorded instruments keep their players' vibrato, none added on top
    hold_out: list[str] = field(default_factory=list)  # recorded instruments never played (kept for test splits)
    reverb: float = 0.7            # renders with the synthesiser's / sampler's artificial reverb (0: dry, the
                                   # room comes from augment_audio's realistic set alone)


# ----------------------------------------------------------------------------------------------- pieces

def corpus_pieces(seed: int) -> list[str]:
    """Corpus paths, deduplicated (the same movement as .krn and .mxl counts once), shuffled by seed."""
    from music21 import corpus
    rng = np.random.default_rng(seed)
    out = []
    for composer, cap in COMPOSERS.items():
        try:
            paths = [Path(p) for p in corpus.getComposer(composer)]
        except Exception:  # noqa: BLE001 - a composer missing from this music21 version
            continue
        by_stem: dict[str, Path] = {}
        for p in sorted(paths):
            key = str(p.with_suffix(""))
            pref = {".mxl": 0, ".xml": 1, ".musicxml": 1, ".krn": 2}.get(p.suffix, 3)
            if key not in by_stem or pref < {".mxl": 0, ".xml": 1, ".musicxml": 1, ".krn": 2}.get(by_stem[key].suffix, 3):
                by_stem[key] = p
        chosen = sorted(by_stem.values())
        if len(chosen) > cap:
            chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), cap, replace=False))]
        out += [str(p) for p in chosen]
    return [out[i] for i in rng.permutation(len(out))]


def bwv_of(path: str) -> str | None:
    name = Path(path).stem
    return name[3:] if name.startswith("bwv") else None


def melody_signature(score, n: int = 14) -> str:
    """Transposition-invariant contour of the top part's first ``n`` pitch changes (repeats merged)."""
    part = score.parts[0] if len(score.parts) else score
    midi = []
    for nt in part.flatten().notes:
        p = nt.pitches[-1].midi if nt.isChord else nt.pitch.midi
        if not midi or midi[-1] != p:
            midi.append(p)
    return ",".join(str(b - a) for a, b in zip(midi, midi[1:n + 1]))


def reserved_signatures() -> set[str]:
    from music21 import corpus
    sigs = set()
    for bwv in RESERVED_BWV:
        try:
            sigs.add(melody_signature(corpus.parse(f"bach/bwv{bwv}")))
        except Exception as e:  # noqa: BLE001
            print(f"warning: reserved chorale BWV {bwv} not in corpus ({e}); excluded by number only", file=sys.stderr)
    return sigs


def work_key(path: str) -> str:
    """Movements of one work share a split: the folder under the composer for multi-movement works."""
    p = Path(path)
    parts = p.parts
    rel = parts[parts.index("corpus") + 1:] if "corpus" in parts else parts
    return "/".join(rel[:2]) if len(rel) > 2 else "/".join(rel).rsplit(".", 1)[0]


def split_of(key: str, seed: int, test_fraction: float) -> str:
    h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_fraction else "train"


# ----------------------------------------------------------------------------------------------- scores

DEFAULT_QPM = 90.0  # scores without a metronome mark (most chorales, the Renaissance polyphony)


def score_to_midi(path: str):
    """music21 score -> (score, PrettyMIDI with one instrument per part).

    Notes are read straight off the parsed score (ties merged by hand) instead of through music21's
    MIDI writer, whose tie stripping and channel assignment take minutes on a long quartet.
    """
    import pretty_midi
    from music21 import corpus, expressions, tempo
    score = corpus.parse(path)
    marks = list(score.flatten().getElementsByClass(tempo.MetronomeMark))
    qpm = float(marks[0].getQuarterBPM() or DEFAULT_QPM) if marks else DEFAULT_QPM
    qpm = float(np.clip(qpm, 40, 200))
    spq = 60.0 / qpm
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    parts = list(score.parts) if len(score.parts) else [score]
    fermatas = set()
    for part in parts:
        inst = pretty_midi.Instrument(program=0)
        last: dict[int, pretty_midi.Note] = {}
        for el in part.flatten().notes:
            q0, dq = float(el.offset), float(el.duration.quarterLength)
            if dq <= 0:  # grace notes
                continue
            if any(isinstance(e, expressions.Fermata) for e in el.expressions):
                fermatas.add(round((q0 + dq) * spq, 6))
            for n in (el.notes if el.isChord else [el]):
                m = int(n.pitch.midi)
                tie = n.tie.type if n.tie is not None else (el.tie.type if el.tie is not None else None)
                prev = last.get(m)
                if tie in ("stop", "continue") and prev is not None and abs(prev.end - q0 * spq) < 1e-6:
                    prev.end = (q0 + dq) * spq  # tied continuation: lengthen, no new onset
                    continue
                note = pretty_midi.Note(velocity=80, pitch=m, start=q0 * spq, end=(q0 + dq) * spq)
                inst.notes.append(note)
                last[m] = note
        if inst.notes:
            pm.instruments.append(inst)
    pm.fermatas = sorted(fermatas)  # score seconds where a fermata note ends (arrange() holds them)
    return score, pm


NOTE_VALUES = {4.0: "Whole", 3.0: "Dotted Half", 2.0: "Half", 1.5: "Dotted Quarter", 1.0: "Quarter",
               0.75: "Dotted Eighth", 0.5: "Eighth", 0.375: "Dotted Sixteenth", 0.25: "Sixteenth",
               0.125: "Thirty Second", 2 / 3: "Triplet Quarter", 1 / 3: "Triplet Eighth", 1 / 6: "Triplet Sixteenth"}


def note_value(beats: float) -> str:
    for v, name in NOTE_VALUES.items():
        if abs(beats - v) < 1e-3:
            return name
    return str(Fraction(beats).limit_denominator(64))


def pick_ensemble(rng: np.random.Generator, only: list[str] | None = None) -> str:
    names = list(only or ENSEMBLES)
    w = np.array([ENSEMBLES[n][0] for n in names])
    return names[rng.choice(len(names), p=w / w.sum())]


def assign_families(ensemble: str, n_parts: int, rng: np.random.Generator | None = None) -> list[str]:
    """Families of the parts, highest first; a slot "a|b" is one of the alternatives (drawn per render)."""
    slots = ENSEMBLES[ensemble][1]
    fams = []
    for i in range(n_parts):
        options = slots[min(i, len(slots) - 1)].rstrip("*").split("|")
        fams.append(options[int(rng.integers(len(options)))] if rng is not None and len(options) > 1 else options[0])
    return fams


def performance_clock(end: float, fermatas: list[float], rng: np.random.Generator, expressive: bool):
    """Score seconds -> performance seconds: a slowly wandering tempo (+-8 %) and held fermatas, as
    players perform a chorale (real recordings are never metronomic)."""
    if not expressive:
        return lambda t: np.asarray(t, dtype=np.float64)
    grid = np.arange(0.0, end + 4.0, 2.0)
    log_tempo = np.zeros(len(grid))
    for i in range(1, len(grid)):  # mean-reverting random walk of log tempo
        log_tempo[i] = 0.8 * log_tempo[i - 1] + rng.normal(0, 0.035)
    seconds_per_score_second = np.exp(-np.clip(log_tempo, -0.08, 0.08))
    elapsed = np.concatenate([[0.0], np.cumsum(seconds_per_score_second[:-1] * 2.0)])
    holds = sorted((float(f), float(rng.uniform(0.25, 1.2))) for f in fermatas if rng.random() < 0.85)

    def clock(t):
        t = np.asarray(t, dtype=np.float64)
        out = np.interp(t, grid, elapsed)
        for f, h in holds:  # a note ending on a fermata is held; everything after it waits
            out = out + h * (t >= f - 1e-6)
        return out
    return clock


PEDAL_PROBABILITY = 0.6  # renders whose piano uses the sustain pedal


def pedal_segments(onsets: np.ndarray, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Legato pedalling: the pedal goes down just after an onset and comes up just after a later one (a change
    of harmony every 1-3 s), so the strings of the old chord are damped while the new one is held."""
    onsets = np.unique(np.asarray(onsets, dtype=np.float64))
    segments, i = [], 0
    while i < len(onsets):
        down = onsets[i] + rng.uniform(0.03, 0.12)
        j = int(np.searchsorted(onsets, onsets[i] + rng.uniform(1.0, 3.0)))
        if j >= len(onsets):
            segments.append((down, onsets[-1] + rng.uniform(0.5, 2.0)))
            break
        segments.append((down, onsets[j] + rng.uniform(0.0, 0.06)))
        i = j
    return segments


def pedal_extend(rows: list[tuple], segments: list[tuple[float, float]]) -> list[tuple]:
    """The sustain-pedal convention of MAESTRO and the systems trained on it (Onsets and Frames, Kong et al.):
    a key released while the pedal is down sounds, and is labelled, until the pedal comes up, or until the same
    key is struck again, whichever is first."""
    downs = np.array([a for a, _ in segments])
    rows = sorted(rows, key=lambda r: (r[3], r[0]))
    out = []
    for i, r in enumerate(rows):
        start, end = r[0], r[1]
        k = int(np.searchsorted(downs, end, side="right")) - 1
        if k >= 0 and segments[k][0] <= end < segments[k][1]:
            end = segments[k][1]
            if i + 1 < len(rows) and rows[i + 1][3] == r[3]:
                end = min(end, rows[i + 1][0])
            end = max(end, r[1])
        out.append((start, end) + tuple(r[2:]))
    return out


def arrange(pm, rng: np.random.Generator, ensemble: str, tempo: float, max_seconds: float, expressive: bool = True,
            pedal_labels: bool = True):
    """A new PrettyMIDI: parts -> instruments of the ensemble (by register), tempo, dynamics, mix, detune.

    Each label row ends with the index of its instrument in the result (its stem). The sustain pedal always
    lengthens the sound; ``pedal_labels`` says whether it lengthens the labels too (the draws, and so the
    audio, do not depend on it). With ``expressive``
    the tempo wanders, fermatas are held and every non-keyboard player is a little early or late
    (real ensembles never start a chord together)."""
    import pretty_midi
    parts = [inst for inst in pm.instruments if inst.notes and not inst.is_drum]
    parts.sort(key=lambda inst: -float(np.median([n.pitch for n in inst.notes])))
    fams = assign_families(ensemble, len(parts), rng)
    clock = performance_clock(pm.get_end_time(), getattr(pm, "fermatas", []), rng, expressive)
    programs = {f: int(rng.choice(FAMILIES[f])) for f in sorted(set(fams))}  # one program per family per render
    out = pretty_midi.PrettyMIDI(resolution=pm.resolution, initial_tempo=120.0)
    scale = 1.0 / tempo
    global_cents = rng.normal(0, 6)  # the whole band a little off A440, as real ensembles are
    merged: dict[str, pretty_midi.Instrument] = {}
    rows = []
    spq = 60.0 / 120.0
    try:
        tempi_t, tempi = pm.get_tempo_changes()
        spq = 60.0 / float(tempi[0])  # music21 exports one tempo unless the score changes it
    except Exception:  # noqa: BLE001
        pass
    base_vel = rng.uniform(45, 105)
    swell_period, swell_depth = rng.uniform(8, 40), rng.uniform(0, 18)
    pedal = None
    if "piano" in fams and expressive and rng.random() < PEDAL_PROBABILITY:
        onsets = clock(sorted({n.start for part, fam in zip(parts, fams) if fam == "piano" for n in part.notes})) * scale
        pedal = pedal_segments(onsets, rng)
    entries: dict[str, list[tuple]] = {}
    for rank, (part, fam) in enumerate(zip(parts, fams)):
        program = programs[fam]
        # Keyboard parts merge into one instrument (one player); others stay separate voices.
        key = fam if fam in ("piano", "harpsichord", "organ") else f"{fam}:{len(merged)}"
        if key not in merged:
            merged[key] = pretty_midi.Instrument(program=program, name=key)
            inst = merged[key]
            inst._level = rng.uniform(-8, 4)  # per-part mixing level, dB of velocity
            inst._cents = global_cents + rng.normal(0, 4)
            inst._vibrato = int(rng.uniform(0, 50)) if fam not in ("piano", "harpsichord", "organ") else 0
        inst = merged[key]
        stem = list(merged).index(key)
        timing = 0.0 if fam in KEYBOARDS or not expressive else rng.uniform(0.004, 0.02)
        # A pianist's chords are not simultaneous: the melody (the top part) leads by ~10 ms, the other notes
        # scatter by a few ms (Goebl 2001); dynamics follow phrases, and the melody is voiced louder.
        spread = rng.uniform(0.003, 0.012) if fam == "piano" and expressive else 0.0
        lead = -rng.uniform(0.0, 0.02) if spread and rank == 0 else 0.0
        accent = rng.uniform(4, 14) if spread and rank == 0 else 0.0
        starts = clock([n.start for n in part.notes]) * scale
        ends = clock([n.end for n in part.notes]) * scale
        for n, start, end in zip(part.notes, starts, ends):
            if timing:
                start = max(float(start + rng.normal(0, timing)), 0.0)
            elif spread:
                start = max(float(start + lead + rng.normal(0, spread)), 0.0)
            else:
                start = float(start)
            end = float(end)
            if start >= max_seconds:
                continue
            end = min(end, max_seconds)
            if end - start < 0.04:
                continue
            vel = base_vel + swell_depth * np.sin(2 * np.pi * start / swell_period) + inst._level * 3 + accent \
                + rng.normal(0, 9 if spread else 7)
            vel = int(np.clip(vel, 20, 127))
            entries.setdefault(key, []).append((start, end, program + 1, n.pitch, n.start / spq, n.end / spq, stem, vel))
    for key, rs in entries.items():
        sounding = pedal_extend(rs, pedal) if key == "piano" and pedal is not None else rs
        for r in sounding:
            merged[key].notes.append(pretty_midi.Note(velocity=r[7], pitch=r[3], start=r[0], end=r[1]))
        rows += sounding if pedal_labels else rs
    for inst in merged.values():
        inst.notes.sort(key=lambda n: (n.start, n.pitch))
        bend = int(np.clip(round(inst._cents / 200 * 8192), -8191, 8191))  # default bend range is +-2 semitones
        inst.pitch_bends.append(pretty_midi.PitchBend(bend, 0.0))
        inst.control_changes.append(pretty_midi.ControlChange(1, inst._vibrato, 0.0))  # mod wheel = vibrato
        inst.control_changes.append(pretty_midi.ControlChange(7, int(rng.uniform(85, 127)), 0.0))
        inst.control_changes.append(pretty_midi.ControlChange(10, int(rng.uniform(20, 108)), 0.0))  # pan
        out.instruments.append(inst)
    info = {"programs": sorted({p + 1 for p in programs.values()}), "families": sorted(set(fams)),
            "cents": round(global_cents, 2), "stems": [inst.name.split(":")[0] for inst in out.instruments],
            "pedal": pedal is not None}
    return out, rows, info


def recording_kind(record: dict) -> str:
    """A render metadata record's set, as the transcriber issue counts them: "piano" (a piano alone, in a
    solo_piano render or as the piano stem of an ensemble), "solo" (any other single line) or "ensemble"."""
    group = str(record.get("group", ""))
    return "piano" if group == "solo" and record.get("instrument") == "piano" else group


def group_value(record: dict, field: str) -> str:
    """A metadata record's value of ``field`` for grouping results; ``kind`` is recording_kind."""
    return recording_kind(record) if field == "kind" else str(record.get(field, "(none)"))


def draw_effects(rng: np.random.Generator, p_reverb: float = 0.7) -> dict:
    reverb = rng.random() < p_reverb
    room = {"synth.reverb.room-size": round(rng.uniform(0.1, 0.9), 2), "synth.reverb.damp": round(rng.uniform(0, 0.8), 2),
            "synth.reverb.width": round(rng.uniform(0.5, 1.0), 2), "synth.reverb.level": round(rng.uniform(0.2, 0.9), 2)}
    return {"reverb": room if reverb else None, "chorus": bool(rng.random() < 0.3)}


def fluidsynth_render(midi_path: str, wav_path: str, soundfont: str, fx: dict) -> None:
    cmd = ["fluidsynth", "-ni", "-q", "-r", str(MUSICNET_RATE), "-g", "0.5", "-R", "1" if fx["reverb"] else "0",
           "-C", "1" if fx["chorus"] else "0", "-o", "synth.polyphony=512", "-o", "synth.dynamic-sample-loading=1", "-F", wav_path, "-T", "wav", "-O", "float"]
    for k, v in (fx["reverb"] or {}).items():
        cmd += ["-o", f"{k}={v}"]
    cmd += [soundfont, midi_path]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


SAMPLES_DIR = os.environ.get("DCN_SAMPLES", "/work/data/samples")  # python -m training.data.sampler fetch --dest ...
SAMPLED_PIANO = 0.6   # piano stems played by the Salamander grand's recorded samples (else FluidSynth's soundfont)
SAMPLED_OTHER = 0.35  # other stems played by the sampler from any SoundFont bank found (more timbres per family)


def pick_sampled_preset(program: int, rng: np.random.Generator, samples_dir: str = SAMPLES_DIR,
                        recorded: float = 0.0, hold_out: tuple[str, ...] = ()):
    """A sampler preset for the stem of ``program`` (0-based), or None for FluidSynth: the Salamander grand for
    pianos (real recordings, four velocity layers); with probability ``recorded`` the recorded instrument that
    plays ``program`` (sampler.REAL_INSTRUMENTS, less those named in ``hold_out``); otherwise a preset of any bank
    found, GS variations included."""
    from training.data import sampler
    if not os.path.isdir(samples_dir):
        return None
    if program != 0 and recorded > 0 and rng.random() < recorded:
        real = sampler.recorded_presets(samples_dir, program, hold_out)
        if real:
            return real[int(rng.integers(len(real)))]
    if program == 0:
        if rng.random() >= SAMPLED_PIANO:
            return None
        presets = [p for p in sampler.load_presets(samples_dir, 0, variations=False) if p.bank == "Salamander"]
    else:
        if rng.random() >= SAMPLED_OTHER:
            return None
        presets = sampler.load_presets(samples_dir, program)
    return presets[int(rng.integers(len(presets)))] if presets else None


def render_stems(arranged, soundfont: str, fx: dict, tmp: str, tag: str, rng: np.random.Generator | None = None,
                 cfg: RenderConfig | None = None) -> tuple[list[np.ndarray], list[str]]:
    """One stereo (samples, 2) float32 array per instrument of ``arranged``, all the same length: the mix
    is their sum (FluidSynth is linear per voice, effects included), and each stem is a solo recording.
    With ``rng``, some stems are played by the sample player (training/data/sampler.py) instead: real piano
    samples, recorded instruments (with probability ``cfg.recorded``, less ``cfg.hold_out``) and other banks'
    presets, with a synthetic room when the render has reverb, played as ``cfg`` says (legato, slurs, expression,
    natural vibrato: sampler.render_notes). Also returns the source of each stem (soundfont file name or sampler
    preset)."""
    import copy

    import soundfile as sf

    from training.data.augment_audio import add_reverb
    from training.data.sampler import render_notes
    cfg = cfg or RenderConfig()
    stems, sources = [], []
    for k, inst in enumerate(arranged.instruments):
        preset = (pick_sampled_preset(inst.program, rng, recorded=cfg.recorded, hold_out=tuple(cfg.hold_out))
                  if rng is not None else None)
        if preset is not None:
            notes = [(n.start, n.end, n.pitch, n.velocity) for n in inst.notes]
            vibrato = False if cfg.natural_vibrato and preset.bank == "tonejs" else None
            y, _ = render_notes(notes, preset, MUSICNET_RATE, rng, legato=cfg.legato, slur=cfg.slur,
                                expression=cfg.expression, vibrato=vibrato)
            if fx["reverb"]:
                y = add_reverb(y, MUSICNET_RATE, rng)
            y = (y * 0.3).astype(np.float32)  # about FluidSynth's level at gain 0.5
            stems.append(np.stack([y, y], axis=1))
            sources.append(f"sampler:{preset.bank}:{preset.name}")
            continue
        one = copy.copy(arranged)
        one.instruments = [inst]
        mid, wav = os.path.join(tmp, f"{tag}_{k}.mid"), os.path.join(tmp, f"{tag}_{k}.wav")
        one.write(mid)
        fluidsynth_render(mid, wav, soundfont, fx)
        audio, _ = sf.read(wav, dtype="float32", always_2d=True)
        stems.append(audio)
        sources.append(Path(soundfont).name)
    n = max(len(a) for a in stems)
    return [np.pad(a, ((0, n - len(a)), (0, 0))) for a in stems], sources


def audible_ends(stem: np.ndarray, sr: int, rows: list[tuple], keyboard: bool, max_tail: float = 0.25,
                 drop_db: float = 20.0) -> list[float]:
    """Label offsets that follow the sound: a note's label ends when its instrument's level has fallen
    ``drop_db`` below the note's peak (release and room tail), at most ``max_tail`` after the score's
    note-off, and never past the next onset of the same pitch. Real strings and winds ring on after the
    note-off; labels at the note-off teach a model to end notes early. Parts are monophonic (one player
    per stem), so the stem's envelope is the note's; keyboard stems are polyphonic and get a fixed 80 ms."""
    hop = sr // 100
    frames = len(stem) // hop
    env = 10 * np.log10(np.mean(stem[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-12)
    by_pitch: dict[int, list[float]] = {}
    for r in rows:
        by_pitch.setdefault(r[3], []).append(r[0])
    ends = []
    for start, end, _, pitch, *_ in rows:
        later = [s for s in by_pitch[pitch] if s > start + 1e-6]
        limit = min([end + max_tail] + later)
        if keyboard:
            ends.append(max(end, min(end + 0.08, limit)))
            continue
        a, b, c = int(start * 100), int(end * 100), int(limit * 100)
        if b <= a or a >= frames:
            ends.append(end)
            continue
        peak = env[a: max(b, a + 1)].max()
        tail = env[b: c]
        quiet = np.flatnonzero(tail < peak - drop_db)
        ends.append(max(end, (b + (quiet[0] if len(quiet) else len(tail))) / 100))
    return ends


def write_labels(path: Path, rows: list[tuple]) -> None:
    rows = sorted(rows, key=lambda r: (r[0], r[3]))
    with open(path, "w") as f:
        f.write(CSV_HEADER + "\n")
        f.writelines(f"{int(round(start * MUSICNET_RATE))},{int(round(end * MUSICNET_RATE))},{inst},{pitch},"
                    f"{sb:.4g},{eb - sb:.4g},{note_value(eb - sb)},{vel}\n" for start, end, inst, pitch, sb, eb, _stem, vel in rows)


# ----------------------------------------------------------------------------------------------- worker

def render_piece(task: tuple) -> list[dict]:
    """Render all variants of one piece; returns metadata records (empty if excluded or unusable)."""
    import soundfile as sf

    from training.data.augment_audio import add_noise, normalise_peak, random_eq
    index, path, cfg_dict, reserved = task
    cfg = RenderConfig(**cfg_dict)
    bwv = bwv_of(path)
    if bwv is not None and bwv in RESERVED_BWV:
        return [{"excluded": path, "why": "reserved BWV"}]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        if os.path.isfile(path) and os.path.getsize(path) > MAX_SCORE_BYTES:
            return [{"skipped": path, "why": "score file too large to parse quickly"}]
        try:
            score, pm = score_to_midi(path)
        except Exception as e:  # noqa: BLE001 - a few corpus files do not convert
            return [{"skipped": path, "why": f"{type(e).__name__}: {e}"[:200]}]
        key = work_key(path)
        if bwv is not None:
            sig = melody_signature(score)
            if sig in reserved:
                return [{"excluded": path, "why": "same melody as a reserved chorale"}]
            key = "chorale-melody:" + sig
        split = split_of(key, cfg.seed, cfg.test_fraction)
        if cfg.only_split and split != cfg.only_split:
            return [{"skipped": path, "why": f"not in the {cfg.only_split} split"}]
        n_notes = sum(len(i.notes) for i in pm.instruments)
        if n_notes < 20 or pm.get_end_time() < 8:
            return [{"skipped": path, "why": "too short"}]
        for v in range(cfg.first_variant, cfg.first_variant + (cfg.variants if split == "train" else 1)):
            rng = np.random.default_rng([cfg.seed, index, v])
            ensemble = pick_ensemble(rng, cfg.ensembles)
            tempo = float(np.exp(rng.uniform(np.log(0.75), np.log(1.3))))
            arranged, rows, info = arrange(pm, rng, ensemble, tempo, cfg.max_seconds,
                                          pedal_labels=cfg.offsets != "keys")
            if not rows:
                continue
            soundfont = cfg.soundfonts[rng.integers(len(cfg.soundfonts))]
            fx = draw_effects(rng, cfg.reverb)
            stems, sources = render_stems(arranged, soundfont, fx, tmp, f"v{v}", rng if cfg.sampled else None, cfg)
            sr = MUSICNET_RATE
            # Stereo -> mono as a microphone somewhere between the two channels would hear it.
            a = rng.uniform(0.2, 0.8)
            mono = [a * st[:, 0] + (1 - a) * st[:, -1] for st in stems]
            names = info["stems"]
            labelled = []
            for k, x in enumerate(mono):
                mine = [r for r in rows if r[6] == k]
                if cfg.offsets == "audible":  # v2's labels: the release and room tail count as the note
                    ends = audible_ends(x, sr, mine, keyboard=names[k] in KEYBOARDS)
                    mine = [(r[0], e) + tuple(r[2:]) for r, e in zip(mine, ends)]
                labelled.append(mine)
            outputs = [("", np.sum(mono, axis=0), [r for rs in labelled for r in rs], "ensemble" if len(mono) > 1
                        else "solo", "+".join(sorted(set(names))))]
            solo = [k for k in range(len(mono)) if len(labelled[k]) >= 10] if len(mono) > 1 else []
            if split == "test":
                chosen = solo
            else:
                chosen = [int(rng.choice(solo))] if solo and rng.random() < cfg.solo_fraction else []
            outputs += [(f"s{k}", mono[k], labelled[k], "solo", names[k]) for k in chosen]
            # Cut after the last sound, not the last label: with --offsets keys a pedalled chord outlasts its label.
            sounding = [max((n.end for n in inst.notes), default=0.0) for inst in arranged.instruments]
            for suffix, x, out_rows, group, instrument in outputs:
                last = max(sounding[int(suffix[1:])] if suffix else max(sounding), max(r[1] for r in out_rows))
                end = int(round(last * sr)) + int(rng.uniform(0.3, 1.5) * sr)
                x = x[:end]
                eq = rng.random() < 0.6
                if eq:
                    x = random_eq(x, sr, rng, max_db=6.0)
                snr = float(rng.uniform(25, 60)) if rng.random() < 0.4 else None
                if snr is not None:
                    x = add_noise(x, rng, snr)
                peak = float(rng.uniform(-12, -1))
                x = normalise_peak(x, peak)
                rec_id = f"{index:04d}{v}{suffix}"
                root = Path(cfg.out)
                sf.write(root / f"{split}_data" / f"{rec_id}.wav", x, sr, subtype="PCM_16")
                write_labels(root / f"{split}_labels" / f"{rec_id}.csv", out_rows)
                records.append({"id": rec_id, "split": split, "piece": path.split("corpus/")[-1], "work": key,
                                "ensemble": ensemble, "group": group, "instrument": instrument,
                                "soundfont": Path(soundfont).name, "tempo": round(tempo, 3),
                                "seconds": round(len(x) / sr, 2), "notes": len(out_rows), "eq": eq, "snr_db": snr,
                                "peak_db": round(peak, 1), "sources": sources, "offsets": cfg.offsets, **info, **fx})
    return records


# ----------------------------------------------------------------------------------------------- main

def render(cfg: RenderConfig) -> dict:
    from tqdm import tqdm
    if shutil.which("fluidsynth") is None:
        raise SystemExit("fluidsynth not found: run scripts/install-system-deps.sh (Debian package fluidsynth)")
    if not cfg.soundfonts:
        raise SystemExit("no soundfont found: install fluid-soundfont-gm / timgm6mb-soundfont")
    root = Path(cfg.out)
    for d in ("train_data", "train_labels", "test_data", "test_labels"):
        (root / d).mkdir(parents=True, exist_ok=True)
    pieces = cfg.pieces or corpus_pieces(cfg.seed)
    reserved = reserved_signatures()
    tasks = [(i, p, asdict(cfg), reserved) for i, p in enumerate(pieces)][cfg.skip:]
    t0 = time.time()
    hours = {"train": 0.0, "test": 0.0}
    kept, excluded, skipped = [], [], []
    bar = tqdm(total=round(cfg.hours, 2), desc="train hours", unit="h", dynamic_ncols=True)
    pool = mp.get_context("spawn").Pool(cfg.workers) if cfg.workers > 1 else None
    results = pool.imap(render_piece, tasks) if pool else map(render_piece, tasks)
    consumed = 0
    try:
        for recs in results:
            consumed += 1
            for r in recs:
                if "excluded" in r:
                    excluded.append(r)
                elif "skipped" in r:
                    skipped.append(r)
                else:
                    kept.append(r)
                    hours[r["split"]] += r["seconds"] / 3600
                    if r["split"] == "train":
                        bar.update(round(r["seconds"] / 3600, 4))
            bar.set_postfix(pieces=consumed, test_h=round(hours["test"], 2))
            if hours["train"] >= cfg.hours if not cfg.only_split else hours["test"] >= cfg.test_hours:
                break
    finally:
        if pool:
            pool.terminate()
        bar.close()
    # Tasks in flight past the cut-off may have written files: remove them so the dataset is exactly
    # the first `consumed` pieces and the same seed reproduces the same files.
    if cfg.skip and (root / "metadata.jsonl").exists():  # a continuation keeps what the earlier run wrote
        new_ids = {r["id"] for r in kept}
        kept = [r for r in map(json.loads, open(root / "metadata.jsonl")) if r["id"] not in new_ids] + kept
    done = {r["id"] for r in kept}
    for d in ("train_data", "train_labels", "test_data", "test_labels"):
        for f in (root / d).iterdir():
            if f.stem not in done:
                f.unlink()
    with open(root / "metadata.jsonl", "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
    summary = {"config": asdict(cfg), "pieces_consumed": consumed, "recordings": len(kept),
               "train_hours": round(hours["train"], 3), "test_hours": round(hours["test"], 3),
               "excluded": excluded, "skipped": skipped, "wall_seconds": round(time.time() - t0, 1),
               "command": " ".join([Path(sys.executable).name, "-m", "training.data.render", *sys.argv[1:]])}
    (root / (f"render_summary_from{cfg.skip}.json" if cfg.skip else "render_summary.json")).write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    from training.data import sampler
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    d = RenderConfig()
    ap.add_argument("--out", default=d.out)
    ap.add_argument("--hours", type=float, default=d.hours, help="hours of training audio to render")
    ap.add_argument("--test-fraction", type=float, default=d.test_fraction)
    ap.add_argument("--variants", type=int, default=d.variants)
    ap.add_argument("--solo-fraction", type=float, default=d.solo_fraction)
    ap.add_argument("--only-split", choices=["test"], default=None, help="render only the test works")
    ap.add_argument("--test-hours", type=float, default=d.test_hours, help="with --only-split test: stop here")
    ap.add_argument("--skip", type=int, default=d.skip, help="start at this piece (continue an earlier render)")
    ap.add_argument("--first-variant", type=int, default=d.first_variant,
                    help="number the renderings of each piece from here: with a new value, fresh arrangements, "
                         "timbres and rooms of the same works (the train/test split stays the seed's)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--workers", type=int, default=d.workers)
    ap.add_argument("--max-seconds", type=float, default=d.max_seconds)
    ap.add_argument("--soundfont", action="append", dest="soundfonts", help="repeatable; default: all installed GM fonts")
    ap.add_argument("--piece", action="append", dest="pieces", help="music21 corpus path (repeatable); default: corpus")
    ap.add_argument("--offsets", choices=["performed", "keys", "audible"], default=d.offsets,
                    help="label note ends at the performed note-off (pedal-extended on piano; default), at the key "
                         "release even under the pedal (keys: a piano's MIDI, as Disklavier references are), or "
                         "where the sound has decayed 20 dB (v2's convention)")
    ap.add_argument("--no-sampled", action="store_true", help="FluidSynth only (no sample player stems)")
    ap.add_argument("--ensemble", action="append", dest="ensembles", choices=sorted(ENSEMBLES),
                    help="repeatable: only these ensemble types (e.g. solo_piano for a piano split)")
    ap.add_argument("--recorded", type=float, default=d.recorded,
                    help="probability that a non-piano stem is played by the recorded instrument of its part "
                         "(violin, cello, flute, clarinet, saxophone, bassoon, horn, ...: sampler.REAL_INSTRUMENTS)")
    ap.add_argument("--reverb", type=float, default=d.reverb,
                    help="fraction of renders with artificial reverb (0 for dry renders that a simulated room "
                         "is added to later)")
    ap.add_argument("--legato", action="store_true",
                    help="sampled bowed and wind notes that the next note follows within 50 ms stop at once "
                         "(-20 dB in 6-18 ms) instead of ringing under it, as slurred and tongued notes do")
    ap.add_argument("--hold-out", action="append", default=[], choices=sorted(sampler.REAL_INSTRUMENTS),
                    help="repeatable: a recorded instrument never played here (train without the timbres a test split "
                         "plays, so that split measures timbres the model never heard)")
    ap.add_argument("--expression", action="store_true",
                    help="sampled bowed and wind notes change level while they sound: swells and fades, tremolo, "
                         "bow changes (sampler.note_expression); one note, as real annotations mark it")
    ap.add_argument("--natural-vibrato", action="store_true",
                    help="recorded instruments keep the vibrato their players recorded (violin, flute, ...; none on "
                         "clarinet or horn) instead of a synthetic one on top of it")
    ap.add_argument("--slur", type=float, default=d.slur,
                    help="with --legato: probability that such a following note is slurred: no attack of its own, "
                         "only the change of pitch (as most of a real wind or string phrase)")
    a = ap.parse_args(argv)
    cfg = RenderConfig(legato=a.legato, slur=a.slur, expression=a.expression, natural_vibrato=a.natural_vibrato, hold_out=a.hold_out, reverb=a.reverb, recorded=a.recorded, offsets=a.offsets, sampled=not a.no_sampled, ensembles=a.ensembles or [], out=a.out, hours=a.hours, test_fraction=a.test_fraction, variants=a.variants, solo_fraction=a.solo_fraction, only_split=a.only_split,
                       test_hours=a.test_hours, skip=a.skip, seed=a.seed, first_variant=a.first_variant,
                       workers=a.workers, max_seconds=a.max_seconds, soundfonts=a.soundfonts or d.soundfonts,
                       pieces=a.pieces or [])
    s = render(cfg)
    print(json.dumps({k: v for k, v in s.items() if k not in ("excluded", "skipped", "config")}
                     | {"excluded": len(s["excluded"]), "skipped": len(s["skipped"])}, indent=1))


if __name__ == "__main__":
    main()
