"""Training data for the onset-aware transcriber: onset labels, pitch-shift augmentation, release-tail labels,
realistic evaluation sets, a short training run and calibration."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.checkpoint import build_model, load_checkpoint
from tests.training.musicnet_fixture import NOTES, write_fixture
from training import musicnet as cli
from training.data.musicnet import Labels, MusicNet
from training.data.render import audible_ends

TINY = {"frames_per_window": 16, "channels": 4, "hidden": 8}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("mn"), splits=("train", "test", "val"))


def test_onset_labels_mark_the_nearest_frame_only():
    labels = Labels(np.array([1000, 1000, 5000]), np.array([4000, 9000, 9000]), np.array([60, 64, 60]),
                    np.array([1, 1, 1]), 8000)
    positions = np.arange(0, 10000, 882)  # 20 ms frames at 44.1 kHz
    roll = labels.onsets(positions, [60, 64], half_width=441)
    assert roll.sum() == 3
    assert roll[1, 0] == roll[1, 1] == 1  # 1000 is nearest to frame 1 (882)
    assert roll[6, 0] == 1                # 5000 is nearest to frame 6 (5292)
    assert labels.onsets(positions + 441 + 1, [60], half_width=100).sum() == 0  # no frame within 100 samples


def test_pitch_shift_moves_labels_with_the_sound(root):
    model = build_model("complex_note_transcriber", TINY)
    ds = MusicNet(root, "train", model.sample_rate)
    sampler = cli.CropSampler(ds, model, cli.TrainConfig(data=str(root), pitch_shift=12))
    sampler.cfg.augment = True
    seen = set()
    for _ in range(60):
        _, y = sampler.window(0)
        active = {int(p) for p in np.flatnonzero(y[..., 0].sum(0)) + 21}
        seen |= active
        # recording 1001 holds MIDI 60, 64, 67: whatever the shift k, the labels are those three moved by k
        assert any(active <= {60 + k, 64 + k, 67 + k} for k in range(-12, 13)), active
    assert min(seen) < 55 and max(seen) > 72  # shifts both ways happened


def test_release_tail_labels_follow_the_sound():
    sr = 44100
    t = np.arange(int(2.0 * sr)) / sr
    env = np.where(t < 0.5, 1.0, np.exp(-(t - 0.5) / 0.04))  # note-off at 0.5 s, ~40 ms decay
    stem = (np.sin(2 * np.pi * 440 * t) * env).astype(np.float32)
    rows = [(0.0, 0.5, 41, 69, 0, 1, 0)]
    end = audible_ends(stem, sr, rows, keyboard=False)[0]
    assert 0.55 < end < 0.75          # -20 dB after about 2.3 time constants
    assert audible_ends(stem, sr, rows, keyboard=True)[0] == pytest.approx(0.58)
    capped = audible_ends(np.ones_like(stem), sr, rows, keyboard=False, max_tail=0.25)[0]
    assert capped == pytest.approx(0.75)


def test_realistic_eval_sets_split_by_work(root, tmp_path):
    from training.data.augment_audio import make_eval_splits
    counts = make_eval_splits(str(root), str(tmp_path / "ev"), "test", val_fraction=0.5, seed=3)
    assert sum(counts.values()) == len(NOTES)
    for kind in ("clean", "realistic"):
        meta = [json.loads(line) for line in (tmp_path / "ev" / kind / "metadata.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in meta) == sorted(NOTES)
    import soundfile as sf
    for part in ("val", "test"):
        for wav in (tmp_path / "ev" / "realistic" / f"{part}_data").glob("*.wav"):
            clean, _ = sf.read(tmp_path / "ev" / "clean" / f"{part}_data" / wav.name)
            real, _ = sf.read(wav)
            assert len(real) == len(clean) and not np.allclose(real, clean, atol=1e-3)


def test_dry_rooms_ring_shorter_than_wet_ones():
    """--rooms dry (close microphone, damped room) decays 20 dB far sooner than the default wet rooms."""
    from training.data.augment_audio import room_rir
    sr = 16000

    def ring_ms(h: np.ndarray) -> float:  # time for the energy envelope (10 ms) to fall 20 dB below its peak
        hop = sr // 100
        e = np.square(h[: len(h) // hop * hop]).reshape(-1, hop).mean(axis=1)
        return 10.0 * float(np.flatnonzero(e >= e.max() * 0.01)[-1])

    dry, wet = [], []
    for seed in range(6):
        h, info = room_rir(sr, np.random.default_rng(seed), "dry")
        assert info["rt60"] <= 0.45 and info["distance_m"] <= 1.6
        dry.append(ring_ms(h))
        wet.append(ring_ms(room_rir(sr, np.random.default_rng(seed))[0]))
    assert np.median(dry) < 0.5 * np.median(wet)


def test_note_transcriber_trains_and_calibrates(root, tmp_path):
    cfg = cli.TrainConfig(data=str(root), out=str(tmp_path / "run"), arch="complex_note_transcriber", model=TINY,
                          steps=40, batch_size=4, lr=3e-3, warmup=1, augment=False, eval_every=0, log_every=1,
                          resume=False)
    path = cli.train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:4])
    out = tmp_path / "calibrated.pt"
    cli.main(["calibrate", "--checkpoint", str(path), "--data", str(root), "--split", "val", "--out", str(out),
              "--threads", "1"])
    model, meta = load_checkpoint(out)
    assert {"onset_threshold", "frame_threshold", "min_note_length"} <= set(meta["decoding"]) <= {
        "onset_threshold", "frame_threshold", "min_note_length", "reonset_threshold"}
    assert model.decoding == meta["decoding"]
    assert not torch.equal(model.calibration, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert meta["calibration"]["split"] == "val" and meta["calibration"]["recordings"] == len(NOTES)


def test_velocity_targets_mark_onsets_of_known_velocity_only():
    from training.data.musicnet import Labels
    lab = Labels(np.array([100, 1000]), np.array([900, 2000]), np.array([60, 62]), np.array([0, 0]), 1000,
                 np.array([64, -1]))
    positions = np.arange(0, 2200, 100)
    v = lab.onsets(positions, [60, 62], 50, spread=1, values="velocity")
    on = lab.onsets(positions, [60, 62], 50, spread=1)
    assert np.allclose(v[on[:, 0] > 0, 0], 64 / 127) and (v[on[:, 0] == 0, 0] == -1).all()
    assert (v[:, 1] == -1).all()  # unknown velocity: masked out, not "silent"


def test_velocity_loss_is_masked_and_probability_heads_use_bce():
    import torch.nn.functional as F

    from training.musicnet import transcription_loss
    logits = torch.zeros(1, 4, 2, 3)
    y = torch.zeros(1, 4, 2, 3)
    y[..., 2] = -1.0
    base = transcription_loss(logits, y, ("frame", "onset", "velocity"))
    assert torch.isclose(base, F.binary_cross_entropy_with_logits(logits[..., :2], y[..., :2]))
    y[0, 1, 0, 2] = 1.0  # one onset of velocity 127: sigmoid(0) = 0.5 is off by 0.5
    assert torch.isclose(transcription_loss(logits, y, ("frame", "onset", "velocity")), base + 0.5 * 0.25)


def test_harmonic_weight_costs_a_false_overtone_more_and_a_played_octave_the_same():
    import torch.nn.functional as F

    from training.musicnet import harmonic_negatives, transcription_loss
    y = torch.zeros(1, 3, 88, 2)
    y[0, :, 30, 0] = 1.0                   # a held low note (frame head only)
    y[0, :, 54, 0] = 1.0                   # its second octave is really played (key 30 + 24)
    mask = harmonic_negatives(y)
    assert mask[0, :, 42, 0].all() and mask[0, :, 49, 0].all()      # octave and twelfth above: silent overtones
    assert not mask[0, :, 54, 0].any() and not mask[..., 1].any()    # a played note, and the silent onset head
    assert mask.sum() == 3 * 2 + 3 * 3     # key 30: +12, +19 (+24 is played); key 54: +12, +19, +24
    logits = torch.zeros(1, 3, 88, 2)
    logits[0, :, 42, 0] = 3.0              # a confident false octave
    logits[0, :, 60, 0] = 3.0              # an equally confident false note that is no overtone
    plain = transcription_loss(logits, y, ("frame", "onset"))
    assert torch.isclose(plain, F.binary_cross_entropy_with_logits(logits, y))
    weighted = transcription_loss(logits, y, ("frame", "onset"), harmonic_weight=2.0)
    cell = F.binary_cross_entropy_with_logits(torch.tensor(3.0), torch.tensor(0.0))
    silent = F.binary_cross_entropy_with_logits(torch.tensor(0.0), torch.tensor(0.0))
    extra = 2.0 * (3 * cell + (15 - 3) * silent) / y.numel()   # 15 silent overtone cells, 3 of them the false octave
    assert torch.isclose(weighted, plain + extra)


def test_warm_start_adds_a_velocity_head_and_keeps_the_calibrated_outputs(tmp_path):
    from models.checkpoint import build_model, save_checkpoint
    from models.transcription import window_samples
    from training.musicnet import init_from_checkpoint
    torch.manual_seed(0)
    cfg = {"frames_per_window": 20, "channels": 4, "hidden": 8}
    old = build_model("complex_note_transcriber", cfg).eval()
    with torch.no_grad():
        old.calibration.copy_(torch.tensor([[0.8, -0.5], [0.6, -0.9]]))
    save_checkpoint(tmp_path / "old.pt", old, "complex_note_transcriber", cfg, {})
    new = build_model("complex_note_transcriber", {**cfg, "heads": ("frame", "onset", "velocity")})
    init_from_checkpoint(new, str(tmp_path / "old.pt"))
    new.eval()
    x = torch.randn(2, window_samples(new)) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(new(x)[..., :2], old(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(new.calibration, torch.tensor([[1.0, 0.0]] * 3))


def test_checkpoint_average_folds_each_calibration_and_interpolates(tmp_path):
    from models.checkpoint import build_model, load_checkpoint, save_checkpoint
    from models.transcription import window_samples
    from scripts.average_checkpoints import main as average
    torch.manual_seed(0)
    cfg = {"frames_per_window": 20, "channels": 4, "hidden": 8}
    a, b = build_model("complex_note_transcriber", cfg).eval(), build_model("complex_note_transcriber", cfg).eval()
    with torch.no_grad():
        a.calibration.copy_(torch.tensor([[0.8, -0.5], [0.6, -0.9]]))  # A calibrated, B raw (as after training)
    save_checkpoint(tmp_path / "a.pt", a, "complex_note_transcriber", cfg, {})
    save_checkpoint(tmp_path / "b.pt", b, "complex_note_transcriber", cfg, {})
    x = torch.randn(2, window_samples(a)) * 0.1
    for w, expect in ((0.0, a), (1.0, b)):  # the ends are the two models' calibrated outputs
        average([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--weight", str(w), "--out", str(tmp_path / "m.pt")])
        m, meta = load_checkpoint(tmp_path / "m.pt")
        with torch.no_grad():
            torch.testing.assert_close(m(x), expect(x), atol=1e-5, rtol=1e-5)
        assert meta["averaged"]["weight_of_b"] == w and torch.equal(m.calibration, torch.tensor([[1.0, 0.0]] * 2))
    average([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--weight", "0.5", "--out", str(tmp_path / "m.pt")])
    m, _ = load_checkpoint(tmp_path / "m.pt")
    assert torch.allclose(m.head[2].bias, 0.5 * (a.head[2].bias * a.calibration[:, 0] + a.calibration[:, 1])
                          + 0.5 * b.head[2].bias)


def test_calibration_pools_folders_and_weighs_each_kind_of_recording_the_same(root, tmp_path):
    import shutil

    from training.data.render import recording_kind
    cfg = cli.TrainConfig(data=str(root), out=str(tmp_path / "run"), arch="complex_note_transcriber", model=TINY,
                          steps=2, batch_size=2, warmup=1, augment=False, eval_every=0, resume=False)
    path = cli.train(cfg)
    other = tmp_path / "other"
    shutil.copytree(root, other)
    records = [{"id": "1001", "group": "solo", "instrument": "piano"}, {"id": "1002", "group": "ensemble"}]
    (other / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [recording_kind(r) for r in records] == ["piano", "ensemble"]
    cal = cli.calibrate(str(path), [str(root), str(other)], "val", str(tmp_path / "c.pt"), threads=1,
                        onset_grid=(0.3,), frame_grid=(0.3,), length_grid=(0.04,), reonset_grid=(None,))
    assert cal["recordings"] == 2 * len(NOTES) and cal["data"] == [str(root), str(other)]
    # Without metadata the first folder's recordings form their own bucket ("").
    buckets = cal["best"]["buckets"]
    assert set(buckets) == {"", "piano", "ensemble"}
    assert cal["best"]["note_f1"] == pytest.approx(np.mean([b[0] for b in buckets.values()]), abs=1e-3)
