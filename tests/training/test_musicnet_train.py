"""Trainer, evaluation metrics (against hand-computed values) and the evaluate / transcribe CLIs."""
from __future__ import annotations

import json

import mido
import numpy as np
import pytest
import torch

from tests.training.musicnet_fixture import write_fixture
from training import musicnet as cli
from training.metrics import average_precision, frame_metrics, note_metrics

TINY = {"frames_per_window": 16, "channels": 4, "hidden": 16}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("mn"))


def test_average_precision_by_hand():
    # Ranking: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg) -> AP = (1/1 + 2/3) / 2
    t = np.array([[1, 0], [1, 0]])
    s = np.array([[0.9, 0.8], [0.7, 0.1]])
    assert average_precision(t, s) == pytest.approx((1 + 2 / 3) / 2)


def test_frame_metrics_by_hand():
    pitches = np.array([60, 64])
    times = np.array([0.0, 0.02, 0.04])
    targets = np.array([[1, 0], [1, 1], [0, 0]])
    probs = np.array([[0.9, 0.6], [0.2, 0.7], [0.1, 0.1]])  # TP: (0,60), (1,64); FP: (0,64); FN: (1,60)
    m = frame_metrics(targets, probs, times, pitches, threshold=0.5)
    assert m["frame_precision"] == pytest.approx(2 / 3)
    assert m["frame_recall"] == pytest.approx(2 / 3)
    assert m["frame_f1"] == pytest.approx(2 / 3)


def test_note_metrics_by_hand():
    ref_i, ref_p = np.array([[0.0, 1.0], [1.0, 2.0]]), np.array([60, 62])
    est = [{"onset": 0.02, "offset": 0.5, "pitch": 60, "confidence": 1.0},   # onset ok, offset too early
           {"onset": 1.3, "offset": 2.0, "pitch": 62, "confidence": 1.0},    # onset 300 ms late
           {"onset": 1.0, "offset": 1.9, "pitch": 70, "confidence": 1.0}]    # wrong pitch
    m = note_metrics(ref_i, ref_p, est)
    assert m["note_precision"] == pytest.approx(1 / 3) and m["note_recall"] == pytest.approx(1 / 2)
    assert m["note_f1"] == pytest.approx(0.4)
    assert m["note_with_offset_f1"] == 0.0


def test_training_lowers_the_loss(root, tmp_path):
    cfg = cli.TrainConfig(data=str(root), out=str(tmp_path / "run"), model=TINY, steps=40, batch_size=4, lr=3e-3,
                          warmup=1, augment=False, eval_every=0, log_every=1, resume=False)
    path = cli.train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:4])
    blob = torch.load(path, weights_only=True)
    meta = blob["meta"]
    assert meta["task"] == "transcription" and meta["sample_rate"] == 16000 and meta["hop_length"] == 320
    assert meta["pitches"] == list(range(21, 109)) and meta["frame_rate"] == 50.0
    # Resumable: a second call continues from state.pt instead of starting over.
    cfg.steps, cfg.resume = 45, True
    cli.train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps[-1] == 44 and 40 in steps and steps.count(0) == 1


def test_paper_model_trains_with_paper_recipe(root, tmp_path):
    cfg = cli.TrainConfig(data=str(root), out=str(tmp_path / "paper"), arch="musicnet_paper_complex",
                          model={"filters": [4, 4, 8, 8, 8, 8], "dense": 32}, steps=3, batch_size=2, lr=1e-3,
                          sampling="per_recording", eval_every=0, resume=False)
    assert cli.train(cfg).exists()


def test_evaluate_and_transcribe_clis(root, tmp_path, capsys):
    cfg = cli.TrainConfig(data=str(root), out=str(tmp_path / "run"), model=TINY, steps=3, batch_size=2,
                          augment=False, eval_every=0, resume=False)
    ckpt = cli.train(cfg)
    cli.main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(tmp_path / "ev"),
              "--write-meta", "--threads", "1"])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for k in ("ap", "frame_precision", "frame_recall", "frame_f1", "note_f1", "note_with_offset_f1"):
        assert 0.0 <= metrics[k] <= 1.0
    assert (tmp_path / "ev" / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert torch.load(ckpt, weights_only=True)["meta"]["metrics"]["ap"] == metrics["ap"]
    wav = root / "test_data" / "1001.wav"
    outs = [str(tmp_path / f"o.{ext}") for ext in ("mid", "npz", "csv")]
    cli.main(["transcribe", str(wav), "--checkpoint", str(ckpt), "--threads", "1"] + sum([["--out", o] for o in outs], []))
    z = np.load(outs[1])
    assert z["probabilities"].shape == (len(z["times"]), len(z["pitches"])) and z["pitches"][0] == 21
    assert open(outs[2]).readline().strip() == "onset,offset,pitch,confidence"
    mido.MidiFile(outs[0])
