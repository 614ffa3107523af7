"""Small-image classification data: CIFAR-10/100 (official python version), SVHN (.mat), image folders.

Everything ends up as one in-memory ``ImageSet``: uint8 images (N, 3, H, W) and int64 labels. A
32x32 RGB training set is 150 MB as uint8, so keeping it in memory (or on the GPU) is cheaper and
simpler than any data-loader pipeline; augmentation then runs on whole batches with tensor ops.

    ds = load_dataset("../shared/data/cifar-10-batches-py", split="train")
    train, val = train_val_split(ds, val_size=5000, seed=0)      # the fixed 45,000 / 5,000 split
    for images, labels in batches(train, 512, shuffle=True, generator=g):
        images = augment(images, generator=g)                        # crop + flip (+ cutout)
"""
from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.cifar import CIFAR10_MEAN, CIFAR10_STD  # noqa: F401 - re-exported for the trainer

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SVHN_CLASSES = [str(d) for d in range(10)]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class DatasetError(ValueError):
    """A dataset path that is missing or not in a format we read."""


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    class_names: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | slice) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.class_names, self.name)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.class_names, self.name)


# ----------------------------------------------------------------------------------------------------------------
# Readers of the official formats


def _unpickle(raw: bytes, what: str) -> dict:
    try:
        return pickle.loads(raw, encoding="bytes")
    except Exception as e:  # pickle raises many types on garbage
        raise DatasetError(f"{what}: not a CIFAR python-version pickle ({type(e).__name__}: {e})") from e


def _get(d: dict, key: str, what: str):
    for k in (key.encode(), key):  # the official files use bytes keys; tolerate str keys
        if k in d:
            return d[k]
    raise DatasetError(f"{what}: missing key {key!r} (keys: {sorted(map(str, d))[:8]})")


def _decode_cifar_batch(d: dict, label_key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(_get(d, "data", what), dtype=np.uint8)
    labels = np.asarray(_get(d, label_key, what), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DatasetError(f"{what}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_from_members(members: dict[str, bytes], split: str, where: str, fine: bool = True) -> ImageSet:
    """``members``: file name (no folder) -> bytes, from a folder or a .tar.gz."""
    if "batches.meta" in members or any(n.startswith("data_batch_") for n in members) or "test_batch" in members:
        kind, classes_key, label_key = "cifar10", "label_names", "labels"
        files = sorted(n for n in members if n.startswith("data_batch_")) if split == "train" else ["test_batch"]
        meta_name = "batches.meta"
    elif {"train", "test", "meta"} & set(members):
        kind, label_key = "cifar100", ("fine_labels" if fine else "coarse_labels")
        classes_key = "fine_label_names" if fine else "coarse_label_names"
        files, meta_name = [split], "meta"
    else:
        raise DatasetError(f"{where}: no CIFAR-10 (data_batch_*, test_batch) or CIFAR-100 (train, test) files")
    missing = [f for f in files if f not in members]
    if missing or not files:
        raise DatasetError(f"{where}: split {split!r} needs {missing or 'data_batch_1..5'}, not found "
                           f"(present: {sorted(members)})")
    parts = [_decode_cifar_batch(_unpickle(members[f], f"{where}/{f}"), label_key, f"{where}/{f}") for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if meta_name in members:
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in _get(_unpickle(members[meta_name], f"{where}/{meta_name}"), classes_key, meta_name)]
    elif kind == "cifar10":
        names = list(CIFAR10_CLASSES)  # a folder holding only test_batch (the evaluation set-up)
    else:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageSet(images, labels, names, f"{kind}-{split}")


def load_cifar(path: str | Path, split: str = "train") -> ImageSet:
    """CIFAR-10/100 python version: the unpacked folder, its parent, or the official .tar.gz unchanged."""
    path = Path(path)
    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                members = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        except tarfile.TarError as e:
            raise DatasetError(f"{path}: not a readable tar archive ({e})") from e
        return _cifar_from_members(members, split, str(path))
    if not path.is_dir():
        raise DatasetError(f"dataset path not found: {path}")
    for sub in ("cifar-10-batches-py", "cifar-100-python"):  # accept the parent folder too
        if (path / sub).is_dir():
            path = path / sub
            break
    members = {p.name: p.read_bytes() for p in path.iterdir()
               if p.is_file() and (p.name.startswith(("data_batch_", "test_batch"))
                                   or p.name in ("batches.meta", "train", "test", "meta"))}
    return _cifar_from_members(members, split, str(path))


def load_svhn(path: str | Path, split: str = "train") -> ImageSet:
    """SVHN format 2: ``train_32x32.mat`` / ``test_32x32.mat`` (X: 32x32x3xN uint8, y: Nx1 with 10 meaning 0)."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{split}_32x32.mat"
    if not path.is_file():
        raise DatasetError(f"SVHN file not found: {path}")
    try:
        from scipy.io import loadmat
        mat = loadmat(path)
        x, y = mat["X"], mat["y"]
    except (KeyError, ValueError, OSError, NotImplementedError) as e:
        raise DatasetError(f"{path}: not an SVHN .mat file with X and y ({type(e).__name__}: {e})") from e
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
        raise DatasetError(f"{path}: expected X (32, 32, 3, N) and N labels, got {x.shape} and {y.shape}")
    labels = torch.from_numpy(y.reshape(-1).astype(np.int64) % 10)  # SVHN stores digit 0 as label 10
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8))
    return ImageSet(images, labels, list(SVHN_CLASSES), f"svhn-{split}")


def load_image_folder(path: str | Path, split: str = "train") -> ImageSet:
    """``<path>/<split>/<class>/*.png`` (or ``<path>/<class>/*.png``); classes sorted by name; all one size."""
    from PIL import Image

    path = Path(path)
    root = path / split if (path / split).is_dir() else path
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DatasetError(f"{root}: expected one sub-folder per class")
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    images.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8))
                except OSError as e:
                    raise DatasetError(f"{f}: unreadable image ({e})") from e
                labels.append(label)
    if not images:
        raise DatasetError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    if len({im.shape for im in images}) > 1:
        raise DatasetError(f"{root}: images differ in size ({sorted({im.shape for im in images})[:3]}...)")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(x, torch.tensor(labels, dtype=torch.int64), classes, f"folder-{split}")


def load_dataset(path: str | Path, split: str = "train") -> ImageSet:
    """Any supported dataset, recognised by what is at ``path``. ``split``: "train" or "test"."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path not found: {path}")
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    if path.suffix == ".mat" or (path.is_dir() and (path / f"{split}_32x32.mat").is_file()):
        return load_svhn(path, split)
    if path.is_file() or any((path / n).exists() for n in (
            "cifar-10-batches-py", "cifar-100-python", "data_batch_1", "test_batch", "batches.meta", "meta")):
        return load_cifar(path, split)
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        return load_image_folder(path, split)
    raise DatasetError(f"{path}: not a CIFAR-10/100 folder or .tar.gz, SVHN .mat, or image-folder tree")


# ----------------------------------------------------------------------------------------------------------------
# Split, batches, augmentation


def train_val_split(ds: ImageSet, val_size: int = 5000, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A fixed split by a seeded permutation: the same 5,000 validation images on every machine and run."""
    if not 0 < val_size < len(ds):
        raise DatasetError(f"val_size must be in (0, {len(ds)}), got {val_size}")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return ds.subset(perm[val_size:]), ds.subset(perm[:val_size])


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.double().div_(255)
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def batches(ds: ImageSet, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
            drop_last: bool = False, rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images uint8, labels) batches; under DDP each rank takes every world_size-th batch of one shared order."""
    n = len(ds)
    order = torch.randperm(n, generator=generator, device="cpu") if shuffle else torch.arange(n)
    order = order.to(ds.images.device)
    stop = n - n % batch_size if drop_last else n
    starts = list(range(0, stop, batch_size))
    if world_size > 1:
        starts = starts[: len(starts) - len(starts) % world_size][rank::world_size]  # equal steps on every rank
    for s in starts:
        idx = order[s:s + batch_size]
        yield ds.images[idx], ds.labels[idx]


def augment(images: torch.Tensor, pad: int = 4, flip: bool = True, cutout: int = 0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation (crop of a reflect-padded image), horizontal flip and cutout on a whole batch.

    Works on any dtype/device; randomness comes from ``generator`` (CPU) so runs are reproducible.
    """
    n, c, h, w = images.shape
    dev = images.device
    if pad > 0:
        padded = torch.nn.functional.pad(images.float() if images.dtype == torch.uint8 else images,
                                         (pad, pad, pad, pad), mode="reflect").to(images.dtype)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        # Gather rows and columns with per-image offsets: one advanced-indexing op for the batch.
        rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h))  # (n, h)
        cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w))  # (n, w)
        b = torch.arange(n, device=dev).view(n, 1, 1, 1)
        ch = torch.arange(c, device=dev).view(1, c, 1, 1)
        images = padded[b, ch, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(dev).view(n, 1, 1, 1)
        images = torch.where(mask, images.flip(3), images)
    if cutout > 0:
        cy = torch.randint(0, h, (n,), generator=generator).to(dev).view(n, 1, 1)
        cx = torch.randint(0, w, (n,), generator=generator).to(dev).view(n, 1, 1)
        yy = torch.arange(h, device=dev).view(1, h, 1)
        xx = torch.arange(w, device=dev).view(1, 1, w)
        lo_y, lo_x = cy - cutout // 2, cx - cutout // 2  # a cutout x cutout square, clipped at the border
        hole = (yy >= lo_y) & (yy < lo_y + cutout) & (xx >= lo_x) & (xx < lo_x + cutout)
        images = images.masked_fill(hole.unsqueeze(1), 0)
    return images


# ----------------------------------------------------------------------------------------------------------------
# Lossless transfer packs: CIFAR-10's 150 MB of training batches cut into WebP-lossless mosaics (~55% of the raw
# size), so that they fit, a few parts per call, under a GPU machine's upload limit (scripts/gpu_check.py).
#
#     python -m training.data.cifar pack ../shared/data/cifar-10-batches-py .gpu/cifar --parts 8
#     python -m training.data.cifar unpack .gpu/cifar --cache /tmp/dcn-cifar    # on the GPU machine, once per call

PACK_MANIFEST = "manifest.json.gz"  # gzip: the 50,000 file names are most of it
_TILE = 32
_COLUMN = 16352 // _TILE  # images per mosaic column: WebP images are at most 16383 px high


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _mosaic(images: np.ndarray) -> np.ndarray:
    """(n, 3, 32, 32) -> (H, W, 3): images stacked top to bottom in columns of _COLUMN (neighbours compress best)."""
    cols = -(-len(images) // _COLUMN)
    grid = np.zeros((cols * _COLUMN, _TILE, _TILE, 3), np.uint8)
    grid[: len(images)] = images.transpose(0, 2, 3, 1)
    return grid.reshape(cols, _COLUMN * _TILE, _TILE, 3).transpose(1, 0, 2, 3).reshape(_COLUMN * _TILE, cols * _TILE, 3)


def _unmosaic(mosaic: np.ndarray, n: int) -> np.ndarray:
    h, w, _ = mosaic.shape
    cols = w // _TILE
    grid = mosaic.reshape(h, cols, _TILE, 3).transpose(1, 0, 2, 3).reshape(cols * _COLUMN, _TILE, _TILE, 3)
    return np.ascontiguousarray(grid[:n].transpose(0, 3, 1, 2))


def pack_cifar10(src: str | Path, dst: str | Path, parts: int = 8) -> dict:
    """Write ``dst``/part-K.webp (consecutive slices of the training images, batch order) and the manifest (labels,
    file names, batch labels, batches.meta, SHA-256 of every batch's pixels and every part). Lossless: checked here
    by decoding each part again."""
    from PIL import Image

    src, dst = Path(src), Path(dst)
    if (src / "cifar-10-batches-py").is_dir():
        src = src / "cifar-10-batches-py"
    names = sorted(p.name for p in src.glob("data_batch_*"))
    if not names:
        raise DatasetError(f"{src}: no data_batch_* files")
    batches_info, pixels = [], []
    for name in names:
        d = _unpickle((src / name).read_bytes(), name)
        data, labels = _decode_cifar_batch(d, "labels", name)
        pixels.append(data)
        batches_info.append({"name": name, "images": len(data), "labels": labels.tolist(),
                             "batch_label": _get(d, "batch_label", name).decode(),
                             "filenames": [f.decode() for f in _get(d, "filenames", name)],
                             "sha256": _sha256(data.reshape(len(data), -1))})
    images = np.concatenate(pixels)
    dst.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(images), parts + 1).astype(int).tolist()
    part_info = []
    for k in range(parts):
        chunk = images[bounds[k]:bounds[k + 1]]
        path = dst / f"part-{k}.webp"
        Image.fromarray(_mosaic(chunk)).save(path, format="WEBP", lossless=True, quality=100, method=4, exact=True)
        with Image.open(path) as im:
            if not np.array_equal(_unmosaic(np.asarray(im.convert("RGB")), len(chunk)), chunk):
                raise DatasetError(f"{path}: WebP round trip is not lossless")
        part_info.append({"file": path.name, "start": bounds[k], "stop": bounds[k + 1], "sha256": _sha256(chunk),
                          "bytes": path.stat().st_size})
    meta = (src / "batches.meta").read_bytes() if (src / "batches.meta").is_file() else b""
    manifest = {"format": "cifar10-webp-pack/1", "batches": batches_info, "parts": part_info,
                "batches_meta_hex": meta.hex()}
    (dst / PACK_MANIFEST).write_bytes(gzip.compress(json.dumps(manifest).encode(), mtime=0))
    return {"parts": part_info, "raw_bytes": int(images.nbytes),
            "packed_bytes": sum(p["bytes"] for p in part_info) + (dst / PACK_MANIFEST).stat().st_size}


def unpack_cifar10(packs: list[str | Path], cache: str | Path) -> dict:
    """Decode the parts found in ``packs`` into ``cache``/part-K.npy (each checked against its SHA-256); once every
    part is in the cache (they may arrive in separate calls), write ``cache``/cifar-10-batches-py in the official
    format and check every batch's pixels. Returns what is there and the folder when complete."""
    from PIL import Image

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    manifest = None
    for folder in [*map(Path, packs), cache]:  # the cache keeps the manifest of an earlier call
        if (folder / PACK_MANIFEST).is_file():
            raw = (folder / PACK_MANIFEST).read_bytes()
            manifest = json.loads(gzip.decompress(raw))
            if folder != cache:
                (cache / PACK_MANIFEST).write_bytes(raw)
            break
    if manifest is None:
        raise DatasetError(f"no {PACK_MANIFEST} in {[str(p) for p in packs]} or {cache}")
    for part in manifest["parts"]:
        npy = cache / (Path(part["file"]).stem + ".npy")
        if npy.is_file():
            continue
        for pack in map(Path, packs):
            if (pack / part["file"]).is_file():
                with Image.open(pack / part["file"]) as im:
                    chunk = _unmosaic(np.asarray(im.convert("RGB")), part["stop"] - part["start"])
                if _sha256(chunk) != part["sha256"]:
                    raise DatasetError(f"{pack / part['file']}: pixels differ from the packed ones (SHA-256)")
                np.save(npy, chunk)
                break
    have = [p["file"] for p in manifest["parts"] if (cache / (Path(p["file"]).stem + ".npy")).is_file()]
    status: dict = {"parts": len(manifest["parts"]), "present": have, "complete": len(have) == len(manifest["parts"])}
    folder = cache / "cifar-10-batches-py"
    if status["complete"]:
        if not all((folder / b["name"]).is_file() for b in manifest["batches"]):
            images = np.concatenate([np.load(cache / (Path(p["file"]).stem + ".npy")) for p in manifest["parts"]])
            folder.mkdir(exist_ok=True)
            start = 0
            for b in manifest["batches"]:
                data = images[start:start + b["images"]].reshape(b["images"], -1)
                start += b["images"]
                if _sha256(data) != b["sha256"]:
                    raise DatasetError(f"{b['name']}: unpacked pixels differ from the original batch (SHA-256)")
                blob = {b"batch_label": b["batch_label"].encode(), b"labels": b["labels"], b"data": data,
                        b"filenames": [f.encode() for f in b["filenames"]]}
                (folder / b["name"]).write_bytes(pickle.dumps(blob, protocol=2))
            if manifest["batches_meta_hex"]:
                (folder / "batches.meta").write_bytes(bytes.fromhex(manifest["batches_meta_hex"]))
        status["folder"] = str(folder)
    return status


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m training.data.cifar", description="CIFAR-10 transfer packs")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="official training batches -> WebP-lossless parts + manifest")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--parts", type=int, default=8)
    b = sub.add_parser("unpack", help="parts (from one or more calls) -> cache; the official folder once complete")
    b.add_argument("packs", nargs="+")
    b.add_argument("--cache", required=True)
    args = p.parse_args(argv)
    try:
        out = pack_cifar10(args.src, args.dst, args.parts) if args.cmd == "pack" else unpack_cifar10(args.packs,
                                                                                                      args.cache)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
