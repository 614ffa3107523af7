"""Loaders of the official small-image formats (files generated here), the fixed split, batches, augmentation."""
from __future__ import annotations

import gzip
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.cifar import (
    CIFAR10_CLASSES,
    DatasetError,
    ImageSet,
    augment,
    batches,
    load_cifar,
    load_dataset,
    load_svhn,
    train_val_split,
)

SHARED_CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar-10-batches-py"


# ---------------------------------------------------------------------------------------------------------------
# Fixture writers: the official formats, byte for byte in structure


def fake_images(n: int, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 3072) uint8, learnable: the class sets the mean colour, plus noise."""
    rng = np.random.default_rng(seed)
    base = (labels[:, None] * 23 % 256).astype(np.float64)
    img = base + rng.normal(0, 20, (n, 3072))
    img[:, :1024] += 60 * (labels[:, None] % 2)  # red channel carries one more bit
    return np.clip(img, 0, 255).astype(np.uint8)


def cifar10_batch(n: int, seed: int, num_classes: int = 10) -> dict:
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    return {b"batch_label": b"training batch", b"labels": labels.tolist(), b"data": fake_images(n, labels, seed),
            b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}


def write_cifar10_folder(root: Path, per_batch: int = 40, with_test: bool = True) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(cifar10_batch(per_batch, i)))
    if with_test:
        (d / "test_batch").write_bytes(pickle.dumps(cifar10_batch(per_batch, 99)))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                                   b"num_cases_per_batch": per_batch, b"num_vis": 3072}))
    return d


def write_tar_gz(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


# ---------------------------------------------------------------------------------------------------------------


def test_cifar10_folder_train_and_test(tmp_path):
    d = write_cifar10_folder(tmp_path, per_batch=30)
    train = load_cifar(d, "train")
    assert train.images.shape == (150, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.class_names == CIFAR10_CLASSES
    # channel-planar layout: the first 1024 values of a row are the red plane
    raw = pickle.loads((d / "data_batch_1").read_bytes())[b"data"][0]
    assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(raw[:1024]))
    assert torch.equal(train.images[0, 2].flatten(), torch.from_numpy(raw[2048:]))
    assert len(load_cifar(d, "test")) == 30
    assert len(load_dataset(tmp_path, "train")) == 150  # the parent folder is accepted too


def test_cifar10_tar_gz_unchanged(tmp_path):
    archive = write_tar_gz(write_cifar10_folder(tmp_path / "src", per_batch=20), tmp_path / "cifar-10-python.tar.gz")
    from_tar = load_dataset(archive, "train")
    from_dir = load_dataset(tmp_path / "src" / "cifar-10-batches-py", "train")
    assert torch.equal(from_tar.images, from_dir.images) and torch.equal(from_tar.labels, from_dir.labels)
    assert len(load_dataset(archive, "test")) == 20


def test_folder_with_only_test_batch(tmp_path):
    d = tmp_path / "eval"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps(cifar10_batch(25, 7)))
    ds = load_dataset(d, "test")
    assert len(ds) == 25 and ds.class_names == CIFAR10_CLASSES
    with pytest.raises(DatasetError, match="data_batch"):
        load_dataset(d, "train")


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for split, n in (("train", 50), ("test", 10)):
        fine = np.arange(n) % 100
        (d / split).write_bytes(pickle.dumps({b"data": fake_images(n, fine), b"fine_labels": fine.tolist(),
                                              b"coarse_labels": (fine // 5).tolist(), b"filenames": [b"x"] * n}))
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                           b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}))
    ds = load_dataset(tmp_path, "train")
    assert len(ds) == 50 and len(ds.class_names) == 100 and int(ds.labels.max()) == 49
    assert len(load_dataset(write_tar_gz(d, tmp_path / "cifar-100-python.tar.gz"), "test")) == 10


def test_svhn_mat(tmp_path):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 12), dtype=np.uint8)
    y = np.array([[10], [1], [2], [3], [4], [5], [6], [7], [8], [9], [10], [1]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    ds = load_dataset(tmp_path, "train")
    assert ds.images.shape == (12, 3, 32, 32)
    assert ds.labels[:3].tolist() == [0, 1, 2]  # SVHN's label 10 is the digit 0
    assert torch.equal(ds.images[4].permute(1, 2, 0), torch.from_numpy(x[..., 4]))
    assert len(load_svhn(tmp_path / "train_32x32.mat")) == 12
    savemat(tmp_path / "bad.mat", {"Z": x})
    with pytest.raises(DatasetError, match="SVHN"):
        load_svhn(tmp_path / "bad.mat")


def test_image_folder(tmp_path):
    from PIL import Image
    for c, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "train" / c / f"{i}.png")
    ds = load_dataset(tmp_path, "train")
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images[0, :, 0, 0].tolist() == [200, 10, 10]


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "nope", "not found"),
    (lambda p: (p / "cifar-10-batches-py").mkdir() or p / "cifar-10-batches-py", "not a CIFAR-10/100 folder"),
    (lambda p: (p / "data_batch_1").write_bytes(b"garbage") and p, "not a CIFAR python-version pickle"),
    (lambda p: (p / "x.tar.gz").write_bytes(b"garbage") and p / "x.tar.gz", "tar"),
])
def test_clear_errors(tmp_path, make, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset(make(tmp_path), "train")


def test_malformed_batch_shape(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DatasetError, match="3072"):
        load_dataset(tmp_path, "train")


def test_split_is_fixed_and_disjoint():
    ds = ImageSet(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), torch.arange(100), ["a"])
    tr1, va1 = train_val_split(ds, 10, seed=0)
    _tr2, va2 = train_val_split(ds, 10, seed=0)
    assert torch.equal(va1.labels, va2.labels) and len(tr1) == 90
    assert set(tr1.labels.tolist()).isdisjoint(va1.labels.tolist())


def test_batches_shard_across_ranks():
    ds = ImageSet(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), torch.arange(100), ["a"])
    g = lambda: torch.Generator().manual_seed(1)
    seen = [torch.cat([y for _, y in batches(ds, 10, True, g(), True, r, 3)]) for r in range(3)]
    assert all(len(s) == 30 for s in seen)  # equal step count per rank (9 of 10 batches used)
    assert len(set(torch.cat(seen).tolist())) == 90


def test_augment_translate_flip_cutout():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = augment(x, pad=4, flip=True, cutout=8, generator=g)
    assert y.shape == x.shape and y.dtype == torch.uint8
    same = augment(x, pad=0, flip=False, cutout=0)
    assert torch.equal(same, x)
    flipped = augment(x, pad=0, flip=True, cutout=0, generator=torch.Generator().manual_seed(0))
    is_flip = [(torch.equal(a, b.flip(2)) or torch.equal(a, b)) for a, b in zip(flipped, x)]
    assert all(is_flip)
    # a pure translation: every output row is a window of a reflect-padded input row
    shifted = augment(x[:1], pad=4, flip=False, cutout=0, generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x[:1].float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)
    assert any(torch.equal(shifted[0], padded[0, :, dy:dy + 32, dx:dx + 32]) for dy in range(9) for dx in range(9))
    holes = augment(torch.full((32, 3, 32, 32), 255, dtype=torch.uint8), pad=0, flip=False, cutout=8,
                    generator=torch.Generator().manual_seed(0))
    zeros = (holes[:, 0] == 0).flatten(1).sum(1)
    assert int(zeros.max()) == 64 and int(zeros.min()) > 0  # an 8x8 square, clipped at the border


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 data not present")
def test_real_cifar10_training_batches():
    ds = load_dataset(SHARED_CIFAR, "train")
    assert ds.images.shape == (50000, 3, 32, 32) and ds.class_names == CIFAR10_CLASSES
    train, val = train_val_split(ds, 5000, seed=0)
    assert len(train) == 45000 and len(val) == 5000
    assert torch.bincount(val.labels, minlength=10).min() > 400  # roughly balanced


# ---------------------------------------------------------------------------------------------------------------
# Transfer packs (WebP lossless parts for the GPU machine's upload limit)


def test_pack_round_trip_is_lossless_across_separate_unpacks(tmp_path):
    from training.data.cifar import main as cifar_data_main
    from training.data.cifar import pack_cifar10, unpack_cifar10

    src = write_cifar10_folder(tmp_path / "src", per_batch=700)  # 3,500 images: a mosaic of several columns
    info = pack_cifar10(src, tmp_path / "pack", parts=3)
    assert [p["stop"] - p["start"] for p in info["parts"]] == [1166, 1167, 1167]
    # the parts arrive in two calls: the first unpack is incomplete, the second completes the folder
    first, second = tmp_path / "call1", tmp_path / "call2"
    for d, files in ((first, ["part-0.webp"]), (second, ["part-1.webp", "part-2.webp"])):
        d.mkdir()
        for f in files + ["manifest.json.gz"]:
            (d / f).write_bytes((tmp_path / "pack" / f).read_bytes())
    cache = tmp_path / "cache"
    status = unpack_cifar10([first], cache)
    assert status["present"] == ["part-0.webp"] and not status["complete"] and "folder" not in status
    assert cifar_data_main(["unpack", str(second), "--cache", str(cache)]) == 0
    status = unpack_cifar10([second], cache)
    assert status["complete"]
    a, b = load_cifar(src, "train"), load_cifar(status["folder"], "train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.class_names == b.class_names
    for i in range(1, 6):
        orig = pickle.loads((src / f"data_batch_{i}").read_bytes())
        back = pickle.loads((Path(status["folder"]) / f"data_batch_{i}").read_bytes(), encoding="bytes")
        assert back[b"filenames"] == orig[b"filenames"] and back[b"batch_label"] == orig[b"batch_label"]


def test_unpack_refuses_a_corrupt_part(tmp_path):
    from training.data.cifar import pack_cifar10, unpack_cifar10

    src = write_cifar10_folder(tmp_path / "src", per_batch=20)
    pack_cifar10(src, tmp_path / "pack", parts=2)
    manifest = tmp_path / "pack" / "manifest.json.gz"
    m = json.loads(gzip.decompress(manifest.read_bytes()))
    m["parts"][1]["sha256"] = "0" * 64
    manifest.write_bytes(gzip.compress(json.dumps(m).encode()))
    with pytest.raises(DatasetError, match="SHA-256"):
        unpack_cifar10([tmp_path / "pack"], tmp_path / "cache")
