"""One-file checkpoints: architecture name + config + weights + metadata, loadable with weights_only=True.

Format (a plain dict, so ``torch.load(path, weights_only=True)`` reads it without executing code):

    {"format": "dcn-checkpoint", "version": 1,
     "arch": str,            # key in ARCHITECTURES
     "config": dict,         # constructor kwargs of that architecture (plain Python values)
     "state_dict": dict,     # tensors
     "meta": dict}           # task info (class names, sample rate, ...) and provenance/metrics

Training code saves with ``save_checkpoint``; the service and the CLIs rebuild with ``load_checkpoint``.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

FORMAT, VERSION = "dcn-checkpoint", 1
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt or does not match its architecture."""


def register_architecture(name: str) -> Callable:
    """Class/function decorator: make ``name`` loadable from checkpoints."""
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ARCHITECTURES and ARCHITECTURES[name] is not builder:
            raise ValueError(f"architecture {name!r} registered twice")
        ARCHITECTURES[name] = builder
        return builder
    return wrap


def _import_architectures() -> None:
    # Architectures register themselves on import; import the model zoo lazily so this module stays light.
    import importlib
    for mod in ("models.cifar", "models.transcriber", "models.note_transcriber"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; a CUDA request without CUDA is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} requested but no CUDA device is available (use auto or cpu)")
    return device


def count_parameters(model: nn.Module) -> int:
    """Real parameters (a complex weight counts twice, as in the paper's budgets)."""
    return sum(p.numel() for p in model.parameters())


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    _import_architectures()
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, arch: str, config: dict[str, Any],
                    meta: dict[str, Any] | None = None) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint."""
    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "version": VERSION, "arch": arch, "config": dict(config),
            "state_dict": state, "meta": dict(meta or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """Load and validate the checkpoint dict (no model built)."""
    if isinstance(source, (bytes, bytearray)):
        fh: Any = io.BytesIO(source)
        name = "<bytes>"
    else:
        name = str(source)
        if Path(source).is_dir():
            raise CheckpointError(f"{name} is a directory; give the checkpoint file (.pt) inside it")
        if not Path(source).is_file():
            raise CheckpointError(f"checkpoint not found: {name}")
        fh = name
    try:
        blob = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {name}: {type(e).__name__}: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{name} is not a {FORMAT} file")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{name}: unsupported checkpoint version {blob.get('version')!r}")
    for key in ("arch", "config", "state_dict", "meta"):
        if key not in blob:
            raise CheckpointError(f"{name}: missing key {key!r}")
    return blob


def load_checkpoint(source: str | os.PathLike | bytes, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model (eval mode, on ``device``, 'auto' allowed) and return it with the checkpoint's ``meta``."""
    blob = read_checkpoint(source)
    model = build_model(blob["arch"], blob["config"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"weights do not match architecture {blob['arch']!r}: {e}") from e
    meta = dict(blob["meta"], arch=blob["arch"], config=blob["config"])
    return model.to(resolve_device(device)).eval(), meta


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
