"""Evaluation metrics shared by the trainers and CLIs.

One section per task; each section's functions take tensors (or arrays) and return plain Python values.
"""
from __future__ import annotations

import numpy as np
import torch

from models.transcription import OVERTONE_INTERVALS

# ================================================================================================================
# Classification (CIFAR / SVHN / image folders) -- owner: image classification (training/cifar.py)
# ================================================================================================================


def correct_count(scores: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of rows whose arg-max of ``scores`` (logits or probabilities, (N, K)) equals ``labels`` (N,)."""
    return int((scores.argmax(1) == labels.to(scores.device)).sum())


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]; 0.0 for an empty batch."""
    return correct_count(scores, labels) / max(len(labels), 1)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    idx = labels.to(torch.int64).cpu() * num_classes + predictions.to(torch.int64).cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Recall of each class (correct / images of that class); None for a class with no images."""
    cm = confusion_matrix(predictions, labels, num_classes)
    totals = cm.sum(1)
    return [float(cm[k, k] / totals[k]) if totals[k] else None for k in range(num_classes)]


def classification_report(probabilities: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """{"accuracy", "images", "per_class": {name: accuracy}} -- the evaluate CLI's and the model card's numbers."""
    predictions = probabilities.argmax(1).cpu()
    labels = labels.cpu()
    per_class = per_class_accuracy(predictions, labels, len(class_names))
    return {
        "accuracy": float((predictions == labels).float().mean()) if len(labels) else 0.0,
        "images": len(labels),
        "per_class": {name: (round(a, 4) if a is not None else None) for name, a in zip(class_names, per_class)},
    }


# ================================================================================================================
# (Audio / transcription metrics go below this line.)
# ================================================================================================================


# ================================================================================================================
# Audio metrics (music transcription: MusicNet-style evaluation) -- owner: music transcription (training/musicnet.py)
# ================================================================================================================


def average_precision(targets, scores) -> float:
    """Micro average precision over every (frame, pitch) cell, as Thickstun et al. and Trabelsi et al. report.

    ``targets`` / ``scores``: arrays of equal shape (frames, pitches), 0/1 and probabilities.
    """
    import numpy as np
    from sklearn.metrics import average_precision_score
    t, s = np.asarray(targets).ravel(), np.asarray(scores).ravel()
    if t.sum() == 0:
        return float("nan")
    return float(average_precision_score(t, s))


def _roll_to_freqs(roll, pitches) -> list:
    import numpy as np
    hz = 440.0 * 2.0 ** ((np.asarray(pitches, dtype=np.float64) - 69) / 12)
    return [hz[np.flatnonzero(row)] for row in np.asarray(roll) > 0.5]


def frame_metrics(targets, probabilities, times, pitches, threshold: float = 0.5) -> dict:
    """Frame-level multi-pitch precision / recall / F1 / accuracy (mir_eval.multipitch) at ``threshold``."""
    import numpy as np
    from mir_eval import multipitch
    times = np.asarray(times, dtype=np.float64)
    est = (np.asarray(probabilities) >= threshold).astype(np.float32)
    scores = multipitch.metrics(times, _roll_to_freqs(targets, pitches), times, _roll_to_freqs(est, pitches))
    p, r, acc = float(scores[0]), float(scores[1]), float(scores[2])  # Precision, Recall, Accuracy, ...
    return {"frame_precision": p, "frame_recall": r, "frame_f1": 2 * p * r / (p + r) if p + r > 0 else 0.0,
            "frame_accuracy": acc}


def note_metrics(ref_intervals, ref_pitches, est_notes: list[dict], onset_tolerance: float = 0.05) -> dict:
    """Note-level P/R/F1 (mir_eval.transcription): onset only, and onset + offset (offset_ratio 0.2).

    ``ref_intervals`` (N, 2) seconds, ``ref_pitches`` (N,) MIDI; ``est_notes`` as returned by
    models.transcription.notes_from_probabilities (the service's note events).
    """
    import numpy as np
    from mir_eval import transcription
    hz = (lambda m: 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69) / 12))
    ref_i = np.asarray(ref_intervals, dtype=np.float64).reshape(-1, 2)
    ref_p = np.asarray(ref_pitches, dtype=np.float64)
    keep = ref_i[:, 1] > ref_i[:, 0]
    ref_i, ref_p = ref_i[keep], ref_p[keep]
    est_i = np.array([[n["onset"], n["offset"]] for n in est_notes], dtype=np.float64).reshape(-1, 2)
    est_p = np.array([n["pitch"] for n in est_notes], dtype=np.float64)
    out = {}
    for name, ratio in (("note", None), ("note_with_offset", 0.2)):
        if len(ref_i) == 0 or len(est_i) == 0:
            p = r = f = 0.0
        else:
            p, r, f, _ = transcription.precision_recall_f1_overlap(ref_i, hz(ref_p), est_i, hz(est_p),
                                                                   onset_tolerance=onset_tolerance, offset_ratio=ratio)
        out.update({f"{name}_precision": float(p), f"{name}_recall": float(r), f"{name}_f1": float(f)})
    return out


def velocity_metrics(ref_intervals, ref_pitches, ref_velocities, est_notes: list[dict],
                     onset_tolerance: float = 0.05) -> dict:
    """How well notes' MIDI velocities follow the reference's (notes and references that have one):
    mir_eval.transcription_velocity F1, onset only and with offsets (velocities rescaled per recording by the
    least-squares line, then within 0.1 of the reference's range, as in Onsets and Frames), the matched pair
    count and the Pearson r of onset-matched notes' velocities."""
    import numpy as np
    from mir_eval import transcription, transcription_velocity
    hz = (lambda m: 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69) / 12))
    ref_i = np.asarray(ref_intervals, dtype=np.float64).reshape(-1, 2)
    ref_p, ref_v = np.asarray(ref_pitches, dtype=np.float64), np.asarray(ref_velocities, dtype=np.float64)
    keep = (ref_i[:, 1] > ref_i[:, 0]) & (ref_v > 0)
    ref_i, ref_p, ref_v = ref_i[keep], ref_p[keep], ref_v[keep]
    est = [n for n in est_notes if "velocity" in n]
    est_i = np.array([[n["onset"], max(n["offset"], n["onset"] + 1e-3)] for n in est], dtype=np.float64).reshape(-1, 2)
    est_p = np.array([n["pitch"] for n in est], dtype=np.float64)
    est_v = np.array([n["velocity"] for n in est], dtype=np.float64)
    out: dict = {"n_ref": int(len(ref_p)), "n_est": int(len(est_p))}
    for name, ratio in (("velocity", None), ("velocity_with_offset", 0.2)):
        f = p = r = 0.0
        if len(ref_p) and len(est_p):
            p, r, f, _ = transcription_velocity.precision_recall_f1_overlap(
                ref_i, hz(ref_p), ref_v, est_i, hz(est_p), est_v, onset_tolerance=onset_tolerance, offset_ratio=ratio)
        out.update({f"note_{name}_precision": float(p), f"note_{name}_recall": float(r), f"note_{name}_f1": float(f)})
    pairs = transcription.match_notes(ref_i, hz(ref_p), est_i, hz(est_p), onset_tolerance=onset_tolerance,
                                      offset_ratio=None) if len(ref_p) and len(est_p) else []
    out["velocity_pairs"] = [(float(ref_v[i]), float(est_v[j])) for i, j in pairs]
    return out


def pearson_r(pairs: list[tuple[float, float]]) -> float:
    """Pearson r of (reference, estimate) pairs; nan with fewer than 3 or no spread."""
    import numpy as np
    if len(pairs) < 3:
        return float("nan")
    a = np.asarray(pairs, dtype=np.float64)
    if a[:, 0].std() == 0 or a[:, 1].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])


HARMONIC_INTERVALS = OVERTONE_INTERVALS[:3]  # an octave, a twelfth, two octaves above a sounding note


def note_errors(ref_i: np.ndarray, ref_p: np.ndarray, notes: list[dict], onset_tolerance: float = 0.05) -> dict:
    """Where the notes go wrong (the transcriber issue's diagnostics): onset and offset error of notes matched on
    onset and pitch (mir_eval, within ``onset_tolerance``, 50 ms as scored), and every unmatched estimate in one class, first that applies: ``harmonic`` (an octave,
    twelfth or double octave above a reference note sounding at its onset), ``fragment`` (its pitch is already
    sounding in the reference: a held note cut in two), ``short`` (under 100 ms), ``other``."""
    import mir_eval
    import numpy as np
    est_i = np.array([[n["onset"], max(n["offset"], n["onset"] + 1e-3)] for n in notes]).reshape(-1, 2)
    est_p = np.array([n["pitch"] for n in notes], dtype=np.float64)
    hz = lambda m: 440.0 * 2 ** ((np.asarray(m, dtype=np.float64) - 69) / 12)
    matched = mir_eval.transcription.match_notes(ref_i, hz(ref_p), est_i, hz(est_p), onset_tolerance=onset_tolerance,
                                                 offset_ratio=None) if len(ref_p) and len(est_p) else []
    offset_err = [float(est_i[e, 1] - ref_i[r, 1]) for r, e in matched]
    onset_err = [float(est_i[e, 0] - ref_i[r, 0]) for r, e in matched]
    unmatched = sorted(set(range(len(est_p))) - {e for _, e in matched})
    kinds = {"harmonic": 0, "fragment": 0, "short": 0, "other": 0}
    for e in unmatched:
        t, p = est_i[e, 0], est_p[e]
        sounding = ref_p[(ref_i[:, 0] <= t + 0.05) & (ref_i[:, 1] > t)] if len(ref_p) else np.zeros(0)
        if np.isin(p - sounding, HARMONIC_INTERVALS).any() and p not in sounding:
            kinds["harmonic"] += 1
        elif p in sounding:
            kinds["fragment"] += 1
        elif est_i[e, 1] - est_i[e, 0] < 0.1:
            kinds["short"] += 1
        else:
            kinds["other"] += 1
    return {"offset_errors": offset_err, "onset_errors": onset_err, "false": kinds}


def precision_recall_png(targets, scores, path, title: str = "", max_points: int = 2000) -> None:
    """Save the micro-averaged precision-recall curve (with its AP in the legend) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import precision_recall_curve
    t, s = np.asarray(targets).ravel(), np.asarray(scores).ravel()
    precision, recall, _ = precision_recall_curve(t, s)
    idx = np.unique(np.linspace(0, len(precision) - 1, min(max_points, len(precision))).astype(int))
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=110)
    ax.plot(recall[idx], precision[idx], label=f"AP = {average_precision(t, s):.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title or "precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
