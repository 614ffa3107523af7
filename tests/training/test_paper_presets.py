"""`--preset paper` for CIFAR and MusicNet: the authors' weight decay, schedule, sampling, ids and eval grid."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from models.checkpoint import build_model
from models.cifar import AUTHORS_OPTIONS
from tests.training.musicnet_fixture import write_fixture
from training import cifar as cifar_cli
from training import musicnet as mn

# ---------------------------------------------------------------------------------------------------------------
# CIFAR

def _cifar_args(**kw) -> argparse.Namespace:
    base = {"preset": "paper", "arch": None, "variant": None, "arch_config": None, "activation": None,
            "authors_layout": None}
    base.update({f: None for f in cifar_cli.TrainConfig.__dataclass_fields__ if f not in ("arch", "arch_config")})
    base.update(kw)
    return argparse.Namespace(**base)


def test_cifar_paper_preset_is_the_authors_recipe():
    cfg = cifar_cli._config_from_args(_cifar_args())
    assert cfg.arch == "complex_resnet" and cfg.l2 == 1e-4 and cfg.weight_decay == 0.0 and cfg.clip_norm == 1.0
    assert {k: cfg.arch_config[k] for k in AUTHORS_OPTIONS} == AUTHORS_OPTIONS
    real = cifar_cli._config_from_args(_cifar_args(arch="real_resnet", variant="DN"))
    assert real.arch_config["learned_input"] and real.arch_config["projection"] == "first"
    mod = cifar_cli._config_from_args(_cifar_args(activation="modrelu", authors_layout=False))
    assert mod.arch_config["activation"] == "modrelu" and "projection" not in mod.arch_config
    fast = cifar_cli._config_from_args(_cifar_args(preset="fast"))
    assert fast.arch == "complex_resnet9" and fast.l2 == 0.0


def test_l2_is_inside_the_clipped_gradient():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad = torch.tensor([0.0, 0.0])
    cifar_cli.add_l2_gradient_([w], 1e-1)  # Keras l2(0.1): gradient 2 * 0.1 * w
    assert torch.allclose(w.grad, torch.tensor([0.6, 0.8]))
    torch.nn.utils.clip_grad_norm_([w], 0.5)  # the decay term is clipped with the rest, as in Keras
    assert torch.allclose(w.grad, torch.tensor([0.3, 0.4]), atol=1e-6)


def test_cifar_paper_preset_trains(tmp_path):
    from tests.training.test_cifar_data import write_cifar10_folder
    data = write_cifar10_folder(tmp_path, per_batch=16, with_test=False)
    preset = cifar_cli.PRESETS["paper"]
    cfg = cifar_cli.TrainConfig(**{**preset, "arch_config": {**preset["arch_config"], "width": 2, "blocks_per_stage": 1},
                                   "data": str(data), "out": str(tmp_path / "run"), "epochs": 1, "batch_size": 16,
                                   "val_size": 16, "device": "cpu", "threads": 1, "progress": False})
    result = cifar_cli.train(cfg, command="pytest")
    assert result["params"] > 0 and 0.0 <= result["val_accuracy"] <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# MusicNet

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("mn_paper"))


def _train_args(*argv: str) -> mn.TrainConfig:
    captured = {}
    original = mn.train
    mn.train = lambda cfg: captured.setdefault("cfg", cfg)
    try:
        mn.main(["train", *argv])
    finally:
        mn.train = original
    return captured["cfg"]


def test_musicnet_paper_preset_and_overrides():
    cfg = _train_args("--preset", "paper")
    assert (cfg.optimizer, cfg.schedule, cfg.sampling, cfg.steps, cfg.lr, cfg.clip_norm, cfg.augment) == \
        ("adam", "paper", "authors", 200_000, 1e-3, 0.0, False)
    assert cfg.arch == "musicnet_deep_complex"
    cfg = _train_args("--preset", "paper", "--arch", "musicnet_deep_real", "--steps", "10", "--test-ids", "1,2")
    assert cfg.arch == "musicnet_deep_real" and cfg.steps == 10 and cfg.test_ids == ["1", "2"]
    plain = _train_args()
    assert plain.optimizer == "adamw" and plain.sampling == "duration" and plain.clip_norm == 5.0


def test_paper_step_schedule():
    cfg = mn.TrainConfig(**{k: v for k, v in mn.PRESETS["paper"].items()})
    epochs = [0, 9, 10, 99, 100, 119, 120, 149, 150, 199]
    lrs = [mn.lr_at(cfg, e * 1000 + 999, 0.0) for e in epochs]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 5e-5, 5e-5, 1e-5, 1e-5, 1e-6, 1e-6])


def test_ids_defaults_and_explicit(root):
    assert mn.resolve_ids(root, "test", None, mn.PAPER_TEST_IDS) is None  # none of 2303/2382/1819: whole split
    assert mn.resolve_ids(root, "test", ["1002"], mn.PAPER_TEST_IDS) == ["1002"]
    assert mn.resolve_ids(root, "test", None, ("9999", "1001")) == ["1001"]  # the defaults that are present
    with pytest.raises(FileNotFoundError):
        mn.resolve_ids(root, "test", ["4242"], mn.PAPER_TEST_IDS)
    ds = mn.eval_dataset(str(root), "val", 11000, ids=["1002"], progress=False)  # no val_data/: from train_data/
    assert [r.id for r in ds.recordings] == ["1002"] and ds.split == "train"


def test_authors_sampling_windows_stay_inside(root):
    from training.data.musicnet import MusicNet
    model = build_model("musicnet_deep_real", {"dense": 8})
    cfg = mn.TrainConfig(**mn.PRESETS["paper"])
    ds = MusicNet(root, "train", model.sample_rate)
    sampler = mn.CropSampler(ds, model, cfg)
    x, y = sampler.batch(8)
    assert x.shape == (len(ds), 4096) and y.shape == (len(ds), 1, 84)  # every recording once, batch_size ignored
    for _ in range(50):
        xs, _ = sampler.authors_window(0)
        assert (xs != 0).mean() > 0.5  # a crop past the end would be zero-padded
    # the label is read at the window centre: pin the crop start and compare with the labels there
    sampler.rng = np.random.default_rng(0)
    start = int(np.random.default_rng(0).integers(0, len(ds.recordings[0]) - 4096 + 1))
    _, y0 = sampler.authors_window(0)
    assert np.array_equal(y0, ds.labels_at(0, np.array([start + 2048]), model.pitches))


def test_musicnet_paper_preset_trains_and_evaluates_on_the_authors_grid(root, tmp_path):
    cfg = mn.TrainConfig(**{**mn.PRESETS["paper"], "steps": 2, "arch": "musicnet_deep_complex"}, data=str(root),
                         out=str(tmp_path / "run"), model={"dense": 8}, eval_every=0, resume=False)
    ckpt = mn.train(cfg)
    mn.main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--grid", "authors", "--ids", "1001",
             "--out", str(tmp_path / "ev"), "--threads", "1"])
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    # 2.1 s at 11 kHz = 23,100 samples: windows from 1 s in, every 128 samples, 4096 long -> 63 windows
    assert m["grid"] == "authors" and m["ids"] == ["1001"] and m["windows"] == (23100 - 11000 - 4096) // 128 + 1
    assert 0.0 <= m["ap"] <= 1.0 and m["loss"] > 0


def test_authors_grid_by_hand(root):
    from training.data.musicnet import MusicNet
    model = build_model("musicnet_shallow_real", {"dense": 8})
    ds = MusicNet(root, "test", model.sample_rate, ids=["1002"])
    preds = mn.predict_authors_grid(model, ds, windows_per_file=5, stride=1000)
    probs, targets = preds[0]
    assert probs.shape == targets.shape == (5, 84)
    centres = 11000 + np.arange(5) * 1000 + 2048
    assert np.array_equal(targets, ds.labels_at(0, centres, model.pitches))
    with pytest.raises(ValueError):
        mn.predict_authors_grid(build_model("complex_frame_transcriber", {"frames_per_window": 4, "channels": 2,
                                                                           "hidden": 4}), ds)
