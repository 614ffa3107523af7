"""Music transcription on MusicNet-layout data: train, evaluate, transcribe.

    python -m training.musicnet train --data /work/data/musicnet-rendered --arch complex_frame_transcriber \\
        --minutes 45 --out runs/musicnet/frame
    python -m training.musicnet evaluate --checkpoint models/checkpoints/musicnet_complex.pt \\
        --data /work/data/musicnet-rendered [--write-meta]
    python -m training.musicnet transcribe piece.wav --out piece.mid --out piece.npz --out piece.csv
    python -m training.musicnet train --preset paper --data /work/data/musicnet --arch musicnet_deep_complex
    python -m training.musicnet evaluate --checkpoint runs/musicnet/model.pt --data /work/data/musicnet --grid authors

``--preset paper`` and ``--grid authors`` follow the authors' code (docs/paper_fidelity.md).

Multi-GPU: ``torchrun --nproc_per_node=N -m training.musicnet train ...`` (DDP; every rank samples
its own random crops). Training stops at ``--steps`` or ``--minutes``, whichever comes first; the
learning-rate schedule follows whichever is further along, so a time-boxed run still anneals.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import build_model, count_parameters, load_checkpoint, read_checkpoint, save_checkpoint
from models.cli import add_arguments as add_transcribe_arguments
from models.cli import run as run_transcribe
from models.inference import DEFAULT_CHECKPOINT, load_audio, transcribe_file  # noqa: F401 - moved there, importable here
from models.transcription import (
    REONSET_KEY,
    decode_notes,
    decoding_defaults,
    heads,
    transcribe,
    window_samples,
)
from training.loop import (
    JsonlLogger,
    all_reduce_sum,
    autocast,
    git_commit,
    hardware_string,
    load_training_state,
    progress,
    save_training_state,
    seed_everything,
    setup_runtime,
    teardown,
    unwrap,
    wrap_ddp,
)
from training.metrics import HARMONIC_INTERVALS

DEFAULT_DATA = "/work/data/musicnet-rendered"

# The authors' split (musicnet/musicnet/dataset.py, MusicNet.splits): three test recordings from test_data/ and
# six validation recordings taken out of train_data/.
PAPER_TEST_IDS = ("2303", "2382", "1819")
PAPER_VAL_IDS = ("2131", "2384", "1792", "2514", "2567", "1876")
# The authors' learning-rate steps (musicnet/scripts/train.py, schedule): (first epoch, lr), 1000 steps an epoch.
PAPER_LR_STEPS = ((0, 1e-3), (10, 1e-4), (100, 5e-5), (120, 1e-5), (150, 1e-6))
# `train --preset paper`: Adam, the step schedule, 200 x 1000 steps, one window from every training recording per
# batch (never past a recording's end), no augmentation, no clipping, no weight decay, deep complex model.
PRESETS = {
    "paper": {"arch": "musicnet_deep_complex", "optimizer": "adam", "schedule": "paper", "lr": 1e-3,
              "weight_decay": 0.0, "steps": 200 * 1000, "steps_per_epoch": 1000, "sampling": "authors",
              "augment": False, "pitch_shift": 0, "clip_norm": 0.0, "warmup": 0},
}


def recording_ids(root, split: str) -> list[str]:
    """Stems of the labelled recordings in ROOT/<split>_data (empty if the split is missing)."""
    from training.data.musicnet import AUDIO_EXTENSIONS
    data, labels = Path(root) / f"{split}_data", Path(root) / f"{split}_labels"
    if not data.is_dir():
        return []
    return sorted(p.stem for p in data.iterdir()
                  if p.suffix.lower() in AUDIO_EXTENSIONS and (labels / f"{p.stem}.csv").exists())


def resolve_ids(root, split: str, wanted, default) -> list[str] | None:
    """Explicit ``wanted`` ids (must all exist), else the ``default`` ids present in the split (None = the
    whole split when none of them is there)."""
    present = recording_ids(root, split)
    if wanted:
        missing = sorted(set(map(str, wanted)) - set(present))
        if missing:
            raise FileNotFoundError(f"{root}/{split}_data has no recording(s) {', '.join(missing)}")
        return [str(i) for i in wanted]
    found = [i for i in default if i in present]
    return found or None


@dataclass
class TrainConfig:
    data: str = DEFAULT_DATA
    out: str = "runs/musicnet"
    arch: str = "complex_frame_transcriber"
    model: dict = field(default_factory=dict)   # constructor kwargs for the architecture
    steps: int = 20000
    minutes: float = 0.0                         # wall-clock budget (0 = none)
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    augment: bool = True
    pitch_shift: int = 12                        # max semitones of pitch-shift augmentation (0 = off)
    onset_spread: int = 1                        # onset targets: the nearest frame and this many either side
    sampling: str = "duration"                   # or "per_recording": the paper's one window per recording per batch
    #                                              or "authors": every training recording once per batch, in order,
    #                                              windows wholly inside the recording, label at the window centre
    optimizer: str = "adamw"                     # adamw (decoupled weight_decay) | adam (the authors')
    schedule: str = "cosine"                     # cosine (warm-up + cosine) | paper (the authors' steps, below)
    steps_per_epoch: int = 1000                  # the authors' Keras epoch (the paper schedule steps by epochs)
    clip_norm: float = 5.0                       # 0 = no gradient clipping (the authors' MusicNet runs clip nothing)
    test_ids: list | None = None                 # test recordings (default: PAPER_TEST_IDS found in test_data/, else all)
    val_ids: list | None = None                  # validation recordings held out of train_data/ (default: PAPER_VAL_IDS found)
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    log_every: int = 20
    eval_every: int = 500
    eval_files: int = 6                          # test recordings (first 60 s each) for the in-training AP
    resume: bool = True
    cache_dir: str | None = None
    workers: int = 0                             # DataLoader processes making crops (GPU runs); 0 = in-process
    rescan_every: int = 0                        # re-list the train split every N steps (data still being rendered)
    init_from: str | None = None                 # warm start from this checkpoint (init_from_checkpoint)
    harmonic_weight: float = 0.0                 # extra loss weight on silent overtone cells (transcription_loss)


# ------------------------------------------------------------------------------------------------ batches

class CropSampler:
    """Random training windows + their frame labels from a MusicNet split, augmented on the fly."""

    def __init__(self, dataset, model, cfg: TrainConfig, rank: int = 0) -> None:
        self.ds, self.cfg = dataset, cfg
        self.hop, self.fpw, self.context = model.hop_length, model.frames_per_window, model.context
        self.win, self.pitches, self.sr = window_samples(model), list(model.pitches), model.sample_rate
        self.heads = heads(model)
        self.rng = np.random.default_rng([cfg.seed, rank])
        self.set_dataset(dataset)

    def set_dataset(self, dataset) -> None:
        self.ds = dataset
        lengths = np.array([len(r) for r in dataset.recordings], dtype=np.float64)
        self.p = lengths / lengths.sum()

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One training crop and its targets. With ``pitch_shift`` a crop is resampled so that it sounds
        k semitones (+- a fraction) higher or lower and its labels move by k: every one of the 88 keys
        then gets positives, not only the range the scores happen to use."""
        from training.data.augment_audio import degrade
        n = len(self.ds.recordings[index])
        span = self.fpw * self.hop
        start = int(self.rng.integers(-span // 4, max(n - span * 3 // 4, 1)))  # frame 0 at sample `start`
        k, rate = 0, 1.0
        if self.cfg.augment and self.cfg.pitch_shift and self.rng.random() < 0.5:
            k = int(self.rng.integers(-self.cfg.pitch_shift, self.cfg.pitch_shift + 1))
            from scipy.fft import next_fast_len
            length = next_fast_len(int(round(self.win * 2 ** ((k + self.rng.uniform(-0.2, 0.2)) / 12))))
            rate = length / self.win  # source samples per output sample: > 1 raises the pitch
        if rate == 1.0:
            x = self.ds.crop(index, start - self.context, self.win)
        else:
            from scipy.signal import resample
            x = resample(self.ds.crop(index, start - int(round(self.context * rate)), length), self.win).astype(np.float32)
        positions = start + np.round(np.arange(self.fpw) * self.hop * rate).astype(np.int64)
        source_pitches = [p - k for p in self.pitches]
        y = self.ds.labels_at(index, positions, source_pitches)
        if "onset" in self.heads:  # targets (frames, pitches, heads) in the model's head order
            half = self.hop * rate / 2
            y = np.stack([y if h == "frame" else
                          self.ds.onsets_at(index, positions, source_pitches, half, self.cfg.onset_spread,
                                            values="velocity" if h == "velocity" else None)
                          for h in self.heads], axis=-1)
        if self.cfg.augment:
            x = degrade(x, self.sr, self.rng)
        return x, y

    def authors_window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The authors' training window: uniform over the recording, never past either end. A one-frame model
        is labelled at the centre of its window, as in musicnet/dataset.py (train_iterator); a multi-frame
        model at its frame positions, as everywhere else here."""
        n = len(self.ds.recordings[index])
        start = int(self.rng.integers(0, max(n - self.win, 0) + 1))  # the crop [start, start + win) lies inside
        x = self.ds.crop(index, start, self.win)
        positions = start + self.context + np.arange(self.fpw) * self.hop + (self.hop // 2 if self.fpw == 1 else 0)
        return x, self.ds.labels_at(index, positions, self.pitches)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.sampling == "authors":  # every training recording, once, per batch (batch_size is ignored)
            xs, ys = zip(*(self.authors_window(i) for i in range(len(self.ds))))
            return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        if self.cfg.sampling == "per_recording":  # paper: one random window per recording per batch
            idx = self.rng.choice(len(self.ds), size=batch_size, replace=batch_size > len(self.ds))
        else:
            idx = self.rng.choice(len(self.ds), size=batch_size, p=self.p)
        xs, ys = zip(*(self.window(int(i)) for i in idx))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


class CropStream(torch.utils.data.IterableDataset):
    """Endless batches from a CropSampler; each DataLoader worker draws from its own seed."""

    def __init__(self, sampler: CropSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            self.sampler.rng = np.random.default_rng([self.sampler.cfg.seed, 7919, info.id, int(time.time())])
        while True:
            yield self.sampler.batch(self.batch_size)


# ------------------------------------------------------------------------------------------------ evaluation

@torch.inference_mode()
def predict_split(model, dataset, max_seconds: float | None = None, max_files: int | None = None,
                  batch_size: int = 16, show: bool = True):
    """Per recording: (transcription, frame targets, ref note intervals, ref note pitches)."""
    out = []
    n = len(dataset) if max_files is None else min(max_files, len(dataset))
    for i in progress(range(n), total=n, desc="evaluate", enabled=show):
        audio = dataset.audio(i)
        if max_seconds:
            audio = audio[: int(max_seconds * dataset.sample_rate)]
        tr = transcribe(model, audio, dataset.sample_rate, batch_size=batch_size)
        positions = np.round(tr.times * dataset.sample_rate).astype(np.int64)
        targets = dataset.labels_at(i, positions, model.pitches)
        intervals, pitches = dataset.recordings[i].labels.notes(dataset.label_rate)
        keep = (pitches >= min(model.pitches)) & (pitches <= max(model.pitches))
        if max_seconds:
            keep &= intervals[:, 0] < max_seconds
            intervals = np.minimum(intervals, max_seconds)
        out.append((tr, targets, intervals[keep], pitches[keep]))
    return out


def score(predictions, threshold: float = 0.5, notes: bool = True, decoding: dict | None = None) -> dict:
    from training.metrics import average_precision, frame_metrics, note_metrics
    probs = np.concatenate([tr.probabilities for tr, *_ in predictions])
    targets = np.concatenate([t for _, t, *_ in predictions])
    # One contiguous time line (each recording after the previous one) for mir_eval, which caps times at 30000 s.
    starts = np.cumsum([0.0] + [tr.times[-1] + 1.0 for tr, *_ in predictions[:-1]])
    times = np.concatenate([tr.times + t0 for t0, (tr, *_) in zip(starts, predictions)])
    pitches = predictions[0][0].pitches
    m = {"ap": average_precision(targets, probs), **frame_metrics(targets, probs, times, pitches, threshold),
         "frames": len(probs), "recordings": len(predictions),
         "audio_hours": round(float(sum(len(tr.times) for tr, *_ in predictions) / predictions[0][0].frame_rate / 3600), 3)}
    if notes:
        per = [note_metrics(iv, p, decode_notes(tr, defaults=decoding))
               for tr, _, iv, p in predictions]
        # Pool note counts over recordings: mir_eval scores one recording at a time, so weight by reference notes.
        w = np.array([max(len(iv), 1) for _, _, iv, _ in predictions], dtype=np.float64)
        for k in per[0]:
            m[k] = float(np.average([d[k] for d in per], weights=w))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}


# ------------------------------------------------------------------------------------------------ train

def lr_at(cfg: TrainConfig, step: int, elapsed: float) -> float:
    if cfg.schedule == "paper":  # the authors' steps by 1000-step epoch, scaled so --lr moves the whole ladder
        epoch, lr = step // max(cfg.steps_per_epoch, 1), PAPER_LR_STEPS[0][1]
        for first, value in PAPER_LR_STEPS:
            if epoch >= first:
                lr = value
        return lr * cfg.lr / PAPER_LR_STEPS[0][1]
    frac = step / max(cfg.steps, 1)
    if cfg.minutes > 0:
        frac = max(frac, elapsed / (cfg.minutes * 60))
    warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
    return cfg.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def harmonic_negatives(targets: torch.Tensor, intervals: tuple[int, ...] = HARMONIC_INTERVALS) -> torch.Tensor:
    """Cells of (B, frames, 88, heads) targets that are off while the key an octave, a twelfth or two octaves
    below is on in the same frame and head: where a low reed's overtones fool a transcriber into false notes."""
    on = targets > 0.5
    below_on = torch.zeros_like(on)
    for i in intervals:
        below_on[:, :, i:] |= on[:, :, :-i]
    return below_on & ~on


def transcription_loss(logits: torch.Tensor, targets: torch.Tensor, model_heads: tuple[str, ...],
                       harmonic_weight: float = 0.0) -> torch.Tensor:
    """BCE on the probability heads (frame, onset); for a ``velocity`` head, the squared error of sigmoid(logit)
    against velocity / 127 only where a note of known velocity starts (targets -1 elsewhere), as in Onsets
    and Frames: how hard a note was played is defined at its onset only. ``harmonic_weight`` > 0 weighs the
    silent overtone positions of sounding notes (``harmonic_negatives``) 1 + harmonic_weight times: a false
    octave costs more than a false note anywhere else, while a played octave (target on) costs as before."""
    v = model_heads.index("velocity") if "velocity" in model_heads else None
    probs = [i for i in range(len(model_heads)) if i != v]
    p_logits, p_targets = logits[..., probs], targets[..., probs]
    weight = None
    if harmonic_weight > 0:
        weight = 1.0 + harmonic_weight * harmonic_negatives(p_targets).to(p_logits.dtype)
    loss = F.binary_cross_entropy_with_logits(p_logits, p_targets, weight=weight)
    if v is None:
        return loss
    mask = targets[..., v] >= 0
    if mask.any():
        loss = loss + VELOCITY_WEIGHT * F.mse_loss(torch.sigmoid(logits[..., v][mask]), targets[..., v][mask])
    return loss


VELOCITY_WEIGHT = 0.5  # the velocity error (about 0.01-0.05 once learned) against BCE summed over 88 keys


def fold_calibration(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A note transcriber's state with its logit calibration (scale, shift per head) folded into the output
    layer and the key biases, and the calibration reset to identity: the same outputs, as trainable weights."""
    cal = state.get("calibration")
    if cal is None or "head.2.weight" not in state:
        return state
    n = cal.shape[0]
    scale, shift = cal[:, 0].float(), cal[:, 1].float()
    state = dict(state)
    state["head.2.weight"] = state["head.2.weight"] * scale.view(n, 1, 1, 1)
    state["head.2.bias"] = state["head.2.bias"] * scale + shift
    state["key_bias"] = state["key_bias"] * scale.view(n, 1, 1)
    state["calibration"] = torch.tensor([[1.0, 0.0]] * n)
    return state


def init_from_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Warm start from a trained checkpoint of the same architecture: every tensor of matching shape is copied;
    output heads the checkpoint lacks (a new velocity head) keep their fresh initialisation; the checkpoint's
    logit calibration is folded into the head's weights, so training goes on from its calibrated outputs."""
    src = fold_calibration(read_checkpoint(path)["state_dict"])
    own = model.state_dict()
    copied = []
    with torch.no_grad():
        for k, t in src.items():
            if k not in own:
                continue
            if own[k].shape == t.shape:
                own[k].copy_(t)
                copied.append(k)
            elif own[k].dim() == t.dim() and own[k].shape[1:] == t.shape[1:] and t.shape[0] < own[k].shape[0]:
                own[k][: t.shape[0]].copy_(t)  # more output heads: the first ones come from the checkpoint
                copied.append(k)
    print(f"initialised {len(copied)}/{len(own)} tensors from {path}", file=sys.stderr)


def checkpoint_meta(model, cfg: TrainConfig, metrics: dict, extra: dict) -> dict:
    m = unwrap(model)
    return {"task": "transcription", "sample_rate": m.sample_rate, "hop_length": m.hop_length,
            "pitches": list(m.pitches), "frame_rate": m.sample_rate / m.hop_length,
            "frames_per_window": m.frames_per_window, "context": m.context, "metrics": metrics,
            "params": count_parameters(m), "train_config": asdict(cfg),
            "git_commit": git_commit(), **extra}


def train(cfg: TrainConfig) -> Path:
    from training.data.musicnet import MusicNet
    torch.set_num_threads(cfg.threads)
    rt = setup_runtime(cfg.device)
    seed_everything(cfg.seed + rt.rank)
    out = Path(cfg.out)
    model = build_model(cfg.arch, cfg.model)
    if cfg.init_from:
        init_from_checkpoint(model, cfg.init_from)
    model = model.to(rt.device)
    arch_config = dict(cfg.model)
    val_ids = resolve_ids(cfg.data, "train", cfg.val_ids, PAPER_VAL_IDS) or []
    train_ids = [i for i in recording_ids(cfg.data, "train") if i not in set(val_ids)] if val_ids else None
    train_ds = MusicNet(cfg.data, "train", model.sample_rate, cfg.cache_dir, ids=train_ids, progress=rt.is_main)
    test_ds = MusicNet(cfg.data, "test", model.sample_rate, cfg.cache_dir,
                       ids=resolve_ids(cfg.data, "test", cfg.test_ids, PAPER_TEST_IDS), progress=rt.is_main)
    sampler = CropSampler(train_ds, model, cfg, rt.rank)
    if cfg.optimizer == "adam":  # the authors': Keras Adam (betas 0.9/0.999, eps 1e-8), no weight decay
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-8, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {cfg.optimizer!r}")
    step, spent = 0, 0.0
    state_path = out / "state.pt"
    if cfg.resume and state_path.exists():
        st = load_training_state(state_path)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, spent = int(st["step"]), float(st["elapsed"])
        sampler.rng = np.random.default_rng([cfg.seed, rt.rank, step])
        print(f"resumed from {state_path} at step {step}", file=sys.stderr)
    ddp = wrap_ddp(model, rt)
    log = JsonlLogger(out / "log.jsonl", rt.is_main)
    params = count_parameters(model)
    if rt.is_main:
        print(f"{cfg.arch}: {params:,} parameters; train {train_ds.hours:.2f} h / {len(train_ds)} recordings, "
              f"test {test_ds.hours:.2f} h; {hardware_string(rt.device)}", file=sys.stderr)
        log.log(event="start", arch=cfg.arch, params=params, train_hours=train_ds.hours, config=asdict(cfg))
    audio_per_step = cfg.batch_size * unwrap(model).frames_per_window * model.hop_length / model.sample_rate
    t0 = time.time() - spent
    last_metrics: dict = {}
    bar = progress(range(step, cfg.steps), total=cfg.steps - step, desc="train", enabled=rt.is_main)
    running = 0.0
    stream = None
    if cfg.workers > 0:  # crops and augmentation in worker processes, so the GPU is not kept waiting
        stream = iter(torch.utils.data.DataLoader(CropStream(sampler, cfg.batch_size), batch_size=None,
                                                  num_workers=cfg.workers, prefetch_factor=4,
                                                  pin_memory=rt.device.type == "cuda"))

    def save(final: bool = False) -> None:
        if not rt.is_main:
            return
        extra = {"dataset": str(cfg.data), "train_hours": round(train_ds.hours, 3), "steps": step,
                 "training_seconds": round(time.time() - t0, 1), "hardware": hardware_string(rt.device),
                 "command": " ".join(["python -m training.musicnet", *sys.argv[1:]])}
        save_checkpoint(out / ("model.pt" if final else "last.pt"), model, cfg.arch, arch_config,
                        checkpoint_meta(model, cfg, last_metrics, extra))
        save_training_state(state_path, model=unwrap(model).state_dict(), optimizer=opt.state_dict(), step=step,
                            elapsed=time.time() - t0)

    for step in bar:
        elapsed = time.time() - t0
        if cfg.minutes > 0 and elapsed > cfg.minutes * 60:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, elapsed)
        if cfg.rescan_every and stream is None and step and step % cfg.rescan_every == 0:
            fresh = MusicNet(cfg.data, "train", model.sample_rate, cfg.cache_dir,
                             ids=[i for i in recording_ids(cfg.data, "train") if i not in set(val_ids)] if val_ids else None)
            if len(fresh) != len(train_ds):
                train_ds = fresh
                sampler.set_dataset(fresh)
                log.log(step=step, event="rescan", recordings=len(fresh), train_hours=round(fresh.hours, 3))
        x, y = next(stream) if stream is not None else sampler.batch(cfg.batch_size)
        ddp.train()
        with autocast(rt.device):
            logits = ddp(x.to(rt.device, non_blocking=True))
        loss = transcription_loss(logits.float(), y.to(rt.device).view_as(logits), heads(unwrap(model)),
                                  cfg.harmonic_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % cfg.log_every == 0:
            loss_sum, n = all_reduce_sum([loss.item(), 1.0], rt)
            rate = audio_per_step * rt.world_size * (step + 1) / max(time.time() - t0, 1e-9)
            log.log(step=step, loss=loss_sum / n, loss_avg=running, lr=opt.param_groups[0]["lr"],
                    audio_seconds_per_second=round(rate, 1), elapsed=round(time.time() - t0, 1))
            if rt.is_main and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{running:.4f}", audio_x=f"{rate:.0f}")
        if rt.is_main and cfg.eval_every and step and step % cfg.eval_every == 0:
            m = unwrap(model).eval()
            last_metrics = score(predict_split(m, test_ds, 60.0, cfg.eval_files, show=False), notes=False)
            m.train()
            last_metrics["note"] = f"in-training check: first 60 s of {cfg.eval_files} test recordings"
            log.log(step=step, event="eval", **last_metrics)
            print(f"step {step}: loss {running:.4f} AP {last_metrics['ap']:.4f} F1 {last_metrics['frame_f1']:.4f}",
                  file=sys.stderr)
            save()
    step += 1
    save()
    save(final=True)
    if rt.is_main:
        log.log(event="done", step=step, elapsed=round(time.time() - t0, 1))
    teardown(rt)
    return out / "model.pt"


# ------------------------------------------------------------------------------------------------ authors' grid

AUTHORS_GRID = {"windows_per_file": 7500, "stride": 128}  # musicnet/dataset.py, construct_eval_set


@torch.inference_mode()
def predict_authors_grid(model, dataset, windows_per_file: int = 7500, stride: int = 128, offset: int | None = None,
                         max_files: int | None = None, batch_size: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
    """The authors' evaluation windows: per recording ``windows_per_file`` windows of the model's input length,
    the first starting one second in (``offset`` samples, default the sample rate), every ``stride`` samples,
    each labelled with the notes sounding at its centre. Returns per recording (probabilities, targets), both
    (windows, pitches). Windows that would run past the recording's end are left out (the authors' files are
    long enough for all 7,500). Needs a model with one frame per window (the paper's MusicNet models)."""
    if model.frames_per_window != 1:
        raise ValueError("--grid authors needs a one-frame-per-window model (musicnet_deep_*, musicnet_shallow_*, "
                         f"musicnet_paper_*); {type(model).__name__} yields {model.frames_per_window} frames")
    win = window_samples(model)
    off = dataset.sample_rate if offset is None else offset
    model.eval()
    device = next(model.parameters()).device
    out = []
    n_files = len(dataset) if max_files is None else min(max_files, len(dataset))
    for i in range(n_files):
        count = int(min(windows_per_file, max(0, (len(dataset.recordings[i]) - off - win) // stride + 1)))
        starts = off + np.arange(count, dtype=np.int64) * stride
        probs = []
        for chunk in np.array_split(starts, max(1, int(np.ceil(count / batch_size)))) if count else []:
            x = torch.from_numpy(np.stack([dataset.crop(i, int(a), win) for a in chunk])).to(device)
            probs.append(torch.sigmoid(model(x).float()).reshape(len(chunk), -1).cpu().numpy())
        p = np.concatenate(probs) if probs else np.zeros((0, len(model.pitches)), np.float32)
        out.append((p, dataset.labels_at(i, starts + win // 2, model.pitches)))
    return out


def score_authors_grid(predictions) -> dict:
    """Micro average precision over every (window, pitch) cell of all files together and the mean binary
    cross-entropy, as the authors' Validation callback computes them (average_precision_score and log_loss
    on the flattened arrays)."""
    from training.metrics import average_precision
    probs = np.concatenate([p for p, _ in predictions])
    targets = np.concatenate([t for _, t in predictions])
    q = np.clip(probs.astype(np.float64), 1e-15, 1 - 1e-15)
    loss = float(-np.mean(targets * np.log(q) + (1 - targets) * np.log1p(-q))) if probs.size else float("nan")
    return {"ap": round(average_precision(targets, probs), 4), "loss": round(loss, 4), "windows": len(probs),
            "recordings": len(predictions), "grid": "authors", **AUTHORS_GRID}


def eval_dataset(data: str, split: str, sample_rate: int, ids=None, cache_dir: str | None = None, progress: bool = True):
    """The evaluation recordings: explicit ``ids`` of ``split``; else for "test" the paper's test ids when present
    (else the whole split); for "val" the val_data/ folder if there is one, else the paper's validation ids
    from train_data/."""
    from training.data.musicnet import MusicNet
    if split == "val" and not (Path(data) / "val_data").is_dir():
        val = resolve_ids(data, "train", ids, PAPER_VAL_IDS)
        if not val:
            raise FileNotFoundError(f"{data} has no val_data/ and none of the validation ids in train_data/")
        return MusicNet(data, "train", sample_rate, cache_dir, ids=val, progress=progress)
    default = PAPER_TEST_IDS if split == "test" else ()
    return MusicNet(data, split, sample_rate, cache_dir, ids=resolve_ids(data, split, ids, default), progress=progress)


# ------------------------------------------------------------------------------------------------ CLIs

def evaluate(checkpoint: str, data: str, split: str = "test", out: str | None = None, threshold: float = 0.5,
             write_meta: bool = False, max_files: int | None = None, threads: int = 2, cache_dir: str | None = None,
             ids: list[str] | None = None, grid: str = "frames") -> dict:
    from training.metrics import precision_recall_png
    torch.set_num_threads(threads)
    model, meta = load_checkpoint(checkpoint)
    ds = eval_dataset(data, split, model.sample_rate, ids, cache_dir)
    t0 = time.time()
    if grid == "authors":
        metrics = score_authors_grid(predict_authors_grid(model, ds, max_files=max_files))
        metrics.update({"split": split, "data": str(data), "ids": [r.id for r in ds.recordings],
                        "command": " ".join(["python -m training.musicnet", *sys.argv[1:]]),
                        "eval_seconds": round(time.time() - t0, 1)})
        out_dir = Path(out) if out else Path("runs/musicnet/eval") / (Path(checkpoint).stem + "_authors_grid")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        print(json.dumps(metrics, indent=1))
        return metrics
    if grid != "frames":
        raise ValueError(f"grid must be 'frames' or 'authors', got {grid!r}")
    preds = predict_split(model, ds, max_files=max_files)
    metrics = score(preds, threshold, decoding=decoding_defaults(model))
    metrics.update({"split": split, "data": str(data), "threshold": threshold,
                    "command": " ".join(["python -m training.musicnet", *sys.argv[1:]]),
                    "eval_seconds": round(time.time() - t0, 1)})
    out_dir = Path(out) if out else Path("runs/musicnet/eval") / Path(checkpoint).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = np.concatenate([tr.probabilities for tr, *_ in preds])
    targets = np.concatenate([t for _, t, *_ in preds])
    precision_recall_png(targets, probs, out_dir / "pr_curve.png",
                         title=f"{meta.get('arch')} on {Path(data).name}/{split}")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'pr_curve.png'}", file=sys.stderr)
    if write_meta:
        blob = read_checkpoint(checkpoint)
        new_meta = dict(blob["meta"], metrics=metrics)
        save_checkpoint(checkpoint, model, blob["arch"], blob["config"], new_meta)
        print(f"metrics written into {checkpoint}", file=sys.stderr)
    return metrics


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def fit_platt(probabilities: np.ndarray, targets: np.ndarray, max_cells: int = 8_000_000, seed: int = 0) -> tuple[float, float]:
    """(scale, shift) minimising BCE of sigmoid(scale * logit(p) + shift) against 0/1 targets (Platt scaling)."""
    logits, t = _logit(probabilities).ravel(), np.asarray(targets, dtype=np.float64).ravel()
    if len(logits) > max_cells:
        keep = np.random.default_rng(seed).choice(len(logits), max_cells, replace=False)
        logits, t = logits[keep], t[keep]
    x, y = torch.from_numpy(logits), torch.from_numpy(t)
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * x + ab[1], y)
        loss.backward()
        return loss
    opt.step(closure)
    return float(ab[0].detach()), float(ab[1].detach())


def _group_of(root: str, group_by: str | None) -> dict[str, str]:
    """Recording id -> its ``group_by`` value in ``root/metadata.jsonl`` ("kind": recording_kind; empty
    without a metadata file)."""
    path = Path(root) / "metadata.jsonl"
    if not group_by or not path.exists():
        return {}
    from training.data.render import group_value
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {str(r["id"]): group_value(r, group_by) for r in rows if "id" in r}


def calibrate(checkpoint: str, data: str | list[str], split: str = "val", out: str | None = None, threads: int = 2,
              onset_grid: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
              frame_grid: tuple[float, ...] = (0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6),
              length_grid: tuple[float, ...] = (0.04, 0.08),
              reonset_grid: tuple[float | None, ...] = (None, 0.5, 0.7), group_by: str | None = "kind") -> dict:
    """Fit each head's logit calibration on (realistic) validation splits, then choose the note-decoding
    thresholds with the best note F1 (mean of onset-only and with-offset F1) there, ties (within 0.01) going to
    the notes that end nearest the reference note-offs; both go into the checkpoint (``out``, default: in
    place), so the service's default thresholds are the calibrated ones.

    ``data`` may name several folders (e.g. a mixed split and a piano split), pooled. F1 is pooled over the
    notes of each *bucket* of recordings with one ``group_by`` value (default: recording_kind, the issue's sets
    piano, solo line, ensemble) and the buckets are averaged, so every kind of recording counts the same:
    pooled over all notes, a few dense quartets would choose the thresholds for everyone."""
    from training.data.musicnet import MusicNet
    from training.metrics import note_errors, note_metrics
    torch.set_num_threads(threads)
    folders = [data] if isinstance(data, (str, Path)) else list(data)
    model, meta = load_checkpoint(checkpoint)
    preds, buckets, n_rec, hours = [], [], 0, 0.0
    for root in folders:
        ds = MusicNet(root, split, model.sample_rate, progress=True)
        groups = _group_of(root, group_by)
        ps = predict_split(model, ds)
        for i, (rec, p) in enumerate(zip(ds.recordings, ps)):
            preds.append(p + ((ds.onsets_at, i),))  # how to read its onset targets
            buckets.append(groups.get(rec.id, ""))
        n_rec, hours = n_rec + len(ds), hours + ds.hours
    model_heads = heads(model)
    fits = []
    spread = int(meta.get("train_config", {}).get("onset_spread", 0))  # the onset targets it was trained on
    for h in model_heads:
        if h in ("velocity", "bend"):  # a regression and a measurement, not probabilities to calibrate
            fits.append((1.0, 0.0))
            continue
        if h == "frame":
            probs = np.concatenate([tr.probabilities for tr, *_ in preds])
            targets = np.concatenate([t for _, t, *_ in preds])
        else:
            probs = np.concatenate([getattr(tr, h + "s") for tr, *_ in preds])
            targets = np.concatenate([onsets_at(i, np.round(tr.times * model.sample_rate).astype(np.int64),
                                                model.pitches, model.hop_length / 2, spread)
                                      for tr, _, _, _, (onsets_at, i) in preds])
        fits.append(fit_platt(probs, targets))
    old = model.calibration.detach().double().numpy()
    new = np.array([[a * o[0], a * o[1] + b] for (a, b), o in zip(fits, old)])
    with torch.no_grad():
        model.calibration.copy_(torch.from_numpy(new))
    for tr, *_ in preds:  # apply the fitted maps to the stored probabilities instead of predicting again
        for h, (a, b) in zip(model_heads, fits):
            if h in ("velocity", "bend"):
                continue
            attr = "probabilities" if h == "frame" else h + "s"
            setattr(tr, attr, (1 / (1 + np.exp(-(a * _logit(getattr(tr, attr)) + b)))).astype(np.float32))
    names = sorted(set(buckets))
    members = {b: [k for k, x in enumerate(buckets) if x == b] for b in names}

    def evaluate_setting(dec: dict) -> dict:
        per = [(note_metrics(iv, p, notes), note_errors(iv, p, notes), len(notes), len(iv))
               for tr, _, iv, p, _ in preds for notes in [decode_notes(tr, defaults=dec)]]
        f_on, f_off, err = [], [], []
        for b in names:  # micro F1 within a bucket: true positives and note counts summed over its recordings
            n = sum(per[k][2] + per[k][3] for k in members[b])
            tp_on = sum(per[k][0]["note_recall"] * per[k][3] for k in members[b])
            tp_off = sum(per[k][0]["note_with_offset_recall"] * per[k][3] for k in members[b])
            f_on.append(2 * tp_on / n if n else 0.0)
            f_off.append(2 * tp_off / n if n else 0.0)
            errors = [x for k in members[b] for x in per[k][1]["offset_errors"]]
            err.append(float(np.median(errors)) if errors else 0.0)
        return {**dec, "note_f1": round(float(np.mean(f_on)), 4), "note_with_offset_f1": round(float(np.mean(f_off)), 4),
                "offset_error_ms": round(1000 * float(np.mean(err)), 1),
                "buckets": {b: [round(x, 4) for x in (fo, ff)] for b, fo, ff in zip(names, f_on, f_off)}}

    grid = []
    for on in onset_grid:
        for fr in frame_grid:
            for ml in length_grid:
                for reon in reonset_grid if "onset" in model_heads else (None,):
                    if reon is not None and reon <= on:
                        continue
                    grid.append(evaluate_setting({"onset_threshold": on, "frame_threshold": fr, "min_note_length": ml,
                                                  **({REONSET_KEY: reon} if reon is not None else {})}))
    # Of the settings within 0.01 of the best summed F1, the one whose notes end closest to the reference
    # note-offs (median offset error of onset-matched notes, averaged over buckets): offset F1 forgives up to
    # 50 ms or 20 % of a note's length, so F1 alone is indifferent between notes that end on time and a little early.
    top = max(g["note_f1"] + g["note_with_offset_f1"] for g in grid)
    best = min((g for g in grid if g["note_f1"] + g["note_with_offset_f1"] >= top - 0.01),
               key=lambda g: abs(g["offset_error_ms"]))
    decoding = {k: best[k] for k in ("onset_threshold", "frame_threshold", "min_note_length", REONSET_KEY) if k in best}
    blob = read_checkpoint(checkpoint)
    config = dict(blob["config"], decoding=decoding)
    model.decoding = decoding
    new_meta = dict(blob["meta"], decoding=decoding, calibration={
        "data": [str(f) for f in folders] if len(folders) > 1 else str(folders[0]), "split": split,
        "group_by": group_by, "recordings": n_rec, "hours": round(hours, 3),
        "logit_scale_shift": {h: [round(a, 4), round(b, 4)] for h, (a, b) in zip(model_heads, fits)},
        "best": best, "command": " ".join(["python -m training.musicnet", *sys.argv[1:]])})
    target = out or checkpoint
    save_checkpoint(target, model, blob["arch"], config, new_meta)
    print(json.dumps({"fits": new_meta["calibration"]["logit_scale_shift"], "best": best}, indent=1))
    print(f"calibrated checkpoint written to {target}", file=sys.stderr)
    return new_meta["calibration"]


def _id_list(text: str | None) -> list[str] | None:
    return [i.strip() for i in text.split(",") if i.strip()] if text else None


def train_config_from_args(a: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults, then the preset's values, then every flag given on the command line."""
    values = dict(PRESETS[a.preset]) if getattr(a, "preset", None) else {}
    for name in ("arch", "steps", "batch_size", "warmup", "seed", "threads", "log_every", "eval_every", "eval_files",
                 "rescan_every", "workers", "pitch_shift", "onset_spread", "steps_per_epoch", "minutes", "lr", "weight_decay",
                 "clip_norm", "harmonic_weight", "sampling", "optimizer", "schedule"):
        if getattr(a, name, None) is not None:
            values[name] = getattr(a, name)
    if a.no_augment:
        values["augment"] = False
    return TrainConfig(data=a.data, out=a.out, model=json.loads(a.model_config), device=a.device,
                       resume=not a.no_resume, cache_dir=a.cache_dir, test_ids=_id_list(a.test_ids),
                       val_ids=_id_list(a.val_ids), init_from=a.init_from, **values)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.musicnet", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = TrainConfig()
    t = sub.add_parser("train", help="train a transcriber on a MusicNet-layout folder")
    t.add_argument("--data", default=d.data)
    t.add_argument("--out", default=d.out)
    t.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper: the authors' MusicNet recipe (Adam, 1e-3 stepped down to 1e-6, 200 x 1000 steps, "
                        "one window from every training recording per batch); explicit flags override it")
    t.add_argument("--arch", default=None,
                   choices=["complex_note_transcriber", "complex_frame_transcriber", "musicnet_paper_complex",
                            "musicnet_paper_real", "musicnet_deep_complex", "musicnet_deep_real",
                            "musicnet_shallow_complex", "musicnet_shallow_real"])
    t.add_argument("--model-config", default="{}", help="JSON constructor kwargs, e.g. '{\"channels\": 16}'")
    for name in ("steps", "batch_size", "warmup", "seed", "threads", "log_every", "eval_every", "eval_files",
                 "rescan_every", "workers", "pitch_shift", "onset_spread", "steps_per_epoch"):
        t.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"default {getattr(d, name)}")
    for name in ("minutes", "lr", "weight_decay", "clip_norm", "harmonic_weight"):
        t.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=f"default {getattr(d, name)}")
    t.add_argument("--sampling", default=None, choices=["duration", "per_recording", "authors"])
    t.add_argument("--optimizer", default=None, choices=["adamw", "adam"])
    t.add_argument("--schedule", default=None, choices=["cosine", "paper"])
    t.add_argument("--test-ids", default=None, help="comma-separated test recordings (default: 2303,2382,1819 "
                                                     "when present in test_data/, else all of test_data/)")
    t.add_argument("--val-ids", default=None, help="comma-separated recordings held out of train_data/ for "
                                                    "validation (default: the paper's six when present)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--init-from", default=None, help="warm start from this checkpoint (same architecture; new output "
                                                     "heads start fresh, its calibration is folded in)")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--device", default=d.device)
    t.add_argument("--cache-dir", default=None)
    c = sub.add_parser("calibrate", help="fit logit calibration + best-F1 note thresholds on a validation split")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--data", required=True, action="append",
                   help="repeatable: several validation folders, pooled (each --group-by value weighs the same)")
    c.add_argument("--split", default="val")
    c.add_argument("--group-by", default="kind",
                   help="metadata.jsonl field whose values weigh the same (kind: piano, solo line, ensemble)")
    c.add_argument("--out", default=None, help="write the calibrated checkpoint here (default: in place)")
    c.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("evaluate", help="AP, frame and note metrics + PR curve on a MusicNet-layout split")
    e.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    e.add_argument("--data", default=DEFAULT_DATA)
    e.add_argument("--split", default="test")
    e.add_argument("--out", default=None, help="folder for metrics.json and pr_curve.png")
    e.add_argument("--threshold", type=float, default=0.5)
    e.add_argument("--max-files", type=int, default=None)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--cache-dir", default=None)
    e.add_argument("--write-meta", action="store_true", help="store the metrics in the checkpoint's meta")
    e.add_argument("--ids", "--test-ids", dest="ids", default=None,
                   help="comma-separated recordings of the split (default for test: 2303,2382,1819 when present)")
    e.add_argument("--grid", choices=["frames", "authors"], default="frames",
                   help="frames: every hop_length samples over whole recordings (AP, frame and note metrics); "
                        "authors: 7,500 windows per file at stride 128 from 1 s in, micro-AP as the authors compute it")
    r = sub.add_parser("transcribe", help="audio files and folders -> .mid / .csv / .npz / .json / .wav: "
                                                  "the dcn-transcribe command (models/cli.py)")
    add_transcribe_arguments(r)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        print(train(train_config_from_args(a)))
    elif a.cmd == "calibrate":
        calibrate(a.checkpoint, a.data, a.split, a.out, a.threads, group_by=a.group_by or None)
    elif a.cmd == "evaluate":
        evaluate(a.checkpoint, a.data, a.split, a.out, a.threshold, a.write_meta, a.max_files, a.threads, a.cache_dir,
                 ids=_id_list(a.ids), grid=a.grid)
    else:
        code = run_transcribe(a, r)
        if code:
            raise SystemExit(code)


if __name__ == "__main__":
    main()
