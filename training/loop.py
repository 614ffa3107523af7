"""What every trainer shares: device and DDP set-up, autocast, progress bars, JSON-lines logs,
resumable training state, seeds and provenance. The trainers themselves (training/cifar.py,
training/musicnet.py) stay plain loops that call these.

Multi-GPU / multi-node: launch the same command under ``torchrun``; ``setup_runtime`` reads the
RANK / WORLD_SIZE / LOCAL_RANK variables torchrun sets and initialises the process group.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from models.checkpoint import resolve_device


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str = "auto") -> Runtime:
    """Single process, or one process per GPU/CPU under torchrun (DDP)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Runtime(resolve_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, local)


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    if not rt.distributed:
        return model
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(values: list[float], rt: Runtime) -> list[float]:
    """Sum counters across ranks (for exact global accuracy / loss averages)."""
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


def teardown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); full fp32 on CPU, where bf16 is rarely faster."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator:
    """A tqdm bar (stderr) on the main process; plain iteration elsewhere. Set postfix via .set_postfix."""
    if not enabled:
        return iter(iterable)
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)


class JsonlLogger:
    """Append one JSON object per line; only the main process writes."""

    def __init__(self, path: str | os.PathLike | None, enabled: bool = True) -> None:
        self.path = Path(path) if path and enabled else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def save_training_state(path: str | os.PathLike, **state: Any) -> None:
    """Resumable state (model, optimiser, scheduler, epoch, ...); atomic, loadable with weights_only=True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def hardware_string(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def git_commit() -> str:
    """Short hash (+"-dirty"); where git cannot tell (a copied tree without history), the GIT_COMMIT variable."""
    commit = _git_commit()
    return os.environ.get("GIT_COMMIT", commit) if commit == "unknown" else commit


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
