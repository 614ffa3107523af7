"""Trainer and evaluator: a short CPU run that must reduce the loss, resume, the evaluate CLI, the paper preset,
and the shipped checkpoint against its model card."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from training.cifar import PRESETS, TrainConfig, evaluate, learning_rate, main, train

from .test_cifar_data import SHARED_CIFAR, write_cifar10_folder

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "checkpoints" / "cifar10_complex.pt"
CARD = REPO / "models" / "checkpoints" / "cifar10_complex.md"
TINY = {"widths": [4, 8, 8, 16]}
REQUIRED_META = ("task", "class_names", "input_size", "normalization", "metrics", "dataset", "split", "command",
                 "git_commit", "hardware", "training_time_s", "parameters", "epochs")


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = {
        "data": str(data), "out": str(out), "arch": "complex_resnet9", "arch_config": dict(TINY), "epochs": 4,
        "batch_size": 32, "lr": 0.05, "warmup_epochs": 1, "label_smoothing": 0.0, "cutout": 0, "val_size": 64,
        "device": "cpu", "threads": 1, "progress": False,
    }
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    data = write_cifar10_folder(root, per_batch=64)  # 320 images: 256 train, 64 val
    out = root / "run"
    result = train(tiny_config(data, out), command="pytest")
    return data, out, result


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_short_training_reduces_the_loss(trained):
    _, out, result = trained
    epochs = [r for r in read_log(out) if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] - 0.1
    assert all("val_accuracy" in r and "images_per_s" in r for r in epochs)
    assert result["val_images"] == 64 and result["train_images"] == 256


def test_checkpoint_has_the_contract_meta(trained):
    _, out, result = trained
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["arch"] == "complex_resnet9" and blob["config"]["widths"] == TINY["widths"]
    meta = blob["meta"]
    assert all(k in meta for k in REQUIRED_META)
    assert meta["task"] == "image-classification" and meta["input_size"] == [32, 32]
    assert meta["metrics"]["val_accuracy"] == result["val_accuracy"] and meta["metrics"]["val_images"] == 64
    model, meta2 = load_checkpoint(out / "model.pt")
    assert not model.training and meta2["class_names"][0] == "airplane"


def test_validation_is_deterministic(trained):
    data, out, result = trained
    a = evaluate(str(out / "model.pt"), str(data), "val", device="cpu")
    b = evaluate(str(out / "model.pt"), str(data), "val", device="cpu")
    assert a["accuracy"] == b["accuracy"] == pytest.approx(result["val_accuracy"], abs=1e-4)


def test_resume_continues_where_it_stopped(trained, tmp_path):
    data, out, _ = trained
    cfg = tiny_config(data, tmp_path, epochs=5, resume=str(out / "state.pt"))
    train(cfg)
    assert [r["epoch"] for r in read_log(tmp_path) if "epoch" in r] == [5]


def test_evaluate_cli_prints_one_json_line(trained, capsys):
    data, out, _ = trained
    for split, n in (("val", 64), ("test", 64), ("train", 256)):
        assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(data), "--split", split,
                     "--device", "cpu"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1
        report = json.loads(lines[0])
        assert report["split"] == split and report["images"] == n
        assert 0.0 <= report["accuracy"] <= 1.0 and len(report["per_class"]) == 10


def test_torchrun_ddp_on_cpu(trained, tmp_path):
    """The same command under torchrun (2 processes, gloo): DistributedDataParallel without code changes."""
    import subprocess
    import sys
    data, _, _ = trained
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "training.cifar", "train",
           "--data", str(data), "--out", str(tmp_path), "--epochs", "1", "--batch-size", "64", "--val-size", "64",
           "--arch-config", json.dumps(TINY), "--device", "cpu", "--threads", "1", "--no-progress", "--cutout", "0"]
    r = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    start = json.loads(next(line for line in r.stdout.splitlines() if '"event": "start"' in line))
    assert start["world_size"] == 2
    assert (tmp_path / "model.pt").is_file() and len(read_log(tmp_path)) == 2  # one epoch + final, rank 0 only


def test_weight_ema_averages_floats_and_copies_counters():
    from torch import nn

    from training.cifar import WeightEMA
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.5)
    start = ema.model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(4.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)  # ramped decay min(0.5, 2 / 11): the average moves 9/11 of the way
    assert torch.allclose(ema.model[0].weight, start + 9 / 11)
    assert torch.allclose(ema.model[1].running_mean, torch.full((2,), 4 * 9 / 11))
    assert int(ema.model[1].num_batches_tracked) == 7 and not ema.model[0].weight.requires_grad
    for _ in range(30):
        ema.update(model)
    assert torch.allclose(ema.model[0].weight, model[0].weight, atol=1e-6)


def test_ema_run_saves_the_average_and_resumes_it(trained, tmp_path):
    data, _, _ = trained
    result = train(tiny_config(data, tmp_path, epochs=2, ema=0.9), command="pytest")
    assert "val_accuracy_final_weights" in result
    assert all("val_accuracy_ema" in r for r in read_log(tmp_path) if "epoch" in r)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    saved, _ = load_checkpoint(tmp_path / "model.pt")
    for k, v in saved.state_dict().items():  # the checkpoint is the average, not the last weights
        assert torch.equal(v, state["ema"]["model"][k])
    assert any(not torch.equal(state["model"][k], state["ema"]["model"][k]) for k in state["model"])
    meta = torch.load(tmp_path / "model.pt", weights_only=True)["meta"]
    assert meta["train_config"]["ema"] == 0.9 and "val_accuracy_final_weights" in meta["metrics"]
    train(tiny_config(data, tmp_path / "resumed", epochs=3, ema=0.9, resume=str(tmp_path / "state.pt")))
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["ema"]["updates"] == \
        state["ema"]["updates"] + 8  # 256 images / batch 32 = 8 more steps


def test_cli_reports_a_bad_path_in_one_line(trained, tmp_path, capsys):
    _, out, _ = trained
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(tmp_path / "missing")]) == 2
    assert "dataset path not found" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_paper_preset_and_schedule():
    import argparse

    from training.cifar import _config_from_args  # the CLI's own parsing
    p = PRESETS["paper"]
    # weight decay as the authors' Keras l2(1e-4): inside the clipped gradient, nothing decoupled
    assert (p["batch_size"], p["epochs"], p["clip_norm"], p["l2"], p["weight_decay"], p["momentum"]) == \
        (64, 200, 1.0, 1e-4, 0.0, 0.9)
    cfg = TrainConfig(**p)
    assert [learning_rate(cfg, e) for e in (0, 9.9, 10, 99, 100, 120, 150, 199)] == pytest.approx(
        [0.01, 0.01, 0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4])
    ns = argparse.Namespace(preset="paper", arch="real_resnet", variant="WS", arch_config=None,
                            **{f: None for f in TrainConfig.__dataclass_fields__ if f not in ("arch", "arch_config")})
    cfg = _config_from_args(ns)
    assert cfg.arch == "real_resnet" and cfg.arch_config["width"] == 25 and cfg.batch_size == 64
    fast = TrainConfig(**{**PRESETS["fast"], "epochs": 10, "warmup_epochs": 2})
    assert learning_rate(fast, 0) == 0 and learning_rate(fast, 2) == pytest.approx(0.4)
    assert learning_rate(fast, 10) == 0


# ---------------------------------------------------------------------------------------------------------------
# The shipped checkpoint against its card

# The first 1,000 images of the fixed val split, evaluated on CPU in fp32 (as here). The meta holds that number
# (val_accuracy_first_1000_cpu_fp32, measured by the evaluate CLI) and the bf16 number from the training GPU.
# fp32 on another CPU may round a borderline image differently: 0.5 pp (5 images) against the fp32 number;
# bf16 vs fp32 changed the number of correct images by 3 of these 1,000 and 5 of 5,000, so 1 pp against the GPU number.
TOLERANCE_1000_FP32 = 0.005
TOLERANCE_1000_BF16 = 0.01


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped checkpoint")
def test_shipped_checkpoint_file_and_meta():
    assert SHIPPED.stat().st_size < 25e6
    blob = torch.load(SHIPPED, weights_only=True)
    meta = blob["meta"]
    assert all(k in meta for k in REQUIRED_META)
    assert meta["metrics"]["val_images"] == 5000 and meta["split"]["split_seed"] == 0
    card = CARD.read_text()
    assert f"{100 * meta['metrics']['val_accuracy']:.2f}%" in card  # the card states the measured number
    assert re.search(r"python -m training\.cifar evaluate", card)


@pytest.mark.skipif(not (SHIPPED.is_file() and SHARED_CIFAR.is_dir()), reason="needs shipped checkpoint + shared data")
def test_shipped_checkpoint_matches_its_card_on_1000_val_images():
    _, meta = load_checkpoint(SHIPPED, "cpu")
    report = evaluate(str(SHIPPED), str(SHARED_CIFAR), "val", limit=1000, device="cpu")
    assert report["images"] == 1000
    metrics = meta["metrics"]
    assert report["accuracy"] == pytest.approx(metrics["val_accuracy_first_1000_cpu_fp32"], abs=TOLERANCE_1000_FP32)
    assert report["accuracy"] == pytest.approx(metrics["val_accuracy_first_1000"], abs=TOLERANCE_1000_BF16)
    assert report["accuracy"] > 0.90
