"""python scripts/finalize_v3.py [SOURCE TARGET]: runs/musicnet/v3/model.pt -> runs/musicnet/v3/model_fp.pt, before
calibration (any other trained transcriber with SOURCE and TARGET; a model without a velocity head only gets fine pitch).

The fine-pitch output is switched on (no parameters: the learned outputs do not change), and the velocity head is
kept only if it learned something: Pearson r >= 0.3 between predicted and rendered velocity of onset-matched notes
on the first 12 clean test recordings. For v3 it was 0.045, so the head was dropped
(models/checkpoints/musicnet_complex_v3.md).
"""
import glob
import json
import sys

import mir_eval
import numpy as np
import soundfile as sf

from models.checkpoint import build_model, read_checkpoint, save_checkpoint
from models.transcription import decode_notes, transcribe
from training.data.musicnet import Labels

SOURCE, TARGET = "runs/musicnet/v3/model.pt", "runs/musicnet/v3/model_fp.pt"
TEST = "/work/data/v3-eval/clean/test_data/*.wav"
DECODING = {"onset_threshold": 0.3, "frame_threshold": 0.4, "min_note_length": 0.05}  # before calibration


def hz(midi) -> np.ndarray:
    return 440 * 2 ** ((np.asarray(midi, float) - 69) / 12)


def velocity_pairs(model) -> tuple[list[int], list[int]]:
    """(predicted, rendered) velocity of every onset-matched note of the first 12 clean test recordings."""
    predicted, rendered = [], []
    for wav in sorted(glob.glob(TEST))[:12]:
        audio, sr = sf.read(wav, dtype="float32")
        notes = decode_notes(transcribe(model, audio, sr), defaults=DECODING)
        lab = Labels.from_csv(wav.replace("test_data", "test_labels").replace(".wav", ".csv"))
        known = lab.velocity > 0
        if not notes:
            continue
        ref = np.stack([lab.start, lab.end], 1)[known] / 44100.0
        est = np.array([[n["onset"], n["offset"]] for n in notes])
        for r, e in mir_eval.transcription.match_notes(ref, hz(lab.pitch[known]), est,
                                                       hz([n["pitch"] for n in notes]), offset_ratio=None):
            predicted.append(notes[e]["velocity"])
            rendered.append(int(lab.velocity[known][r]))
    return predicted, rendered


def main(source: str = SOURCE, target: str = TARGET) -> None:
    blob = read_checkpoint(source)
    cfg = dict(blob["config"], fine_pitch=True)
    model = build_model(blob["arch"], cfg)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    meta = blob["meta"]
    if "velocity" in model.heads:
        model, cfg, meta = check_velocity(model, blob, cfg)
    save_checkpoint(target, model, blob["arch"], cfg, meta)
    print("heads:", model.heads)


def check_velocity(model, blob: dict, cfg: dict) -> tuple:
    """Keep the velocity head only if it learned (Pearson r >= 0.3); returns (model, config, meta)."""
    predicted, rendered = velocity_pairs(model)
    r = float(np.corrcoef(predicted, rendered)[0, 1])
    keep = r >= 0.3
    print(json.dumps({"matched_notes": len(predicted), "velocity_pearson_r": round(r, 3), "velocity_head_kept": keep}))
    meta = dict(blob["meta"], velocity_check={"matched_notes": len(predicted), "pearson_r": round(r, 3), "kept": keep,
                                              "data": "/work/data/v3-eval/clean test, first 12 files"})
    if not keep:  # the velocity channel is the last learned output: slice it off every per-head tensor
        cfg["heads"] = ["frame", "onset"]
        state = dict(blob["state_dict"])
        for k in ("head.2.weight", "head.2.bias", "key_bias", "calibration"):
            state[k] = state[k][:2].clone()
        model = build_model(blob["arch"], cfg)
        model.load_state_dict(state)
    return model, cfg, meta


if __name__ == "__main__":
    main(*sys.argv[1:3])
