"""The complex representation of the paper (section 3.1).

A feature map with C complex channels is stored as a real tensor with 2C channels along one
dimension: the first C are the real parts, the last C the imaginary parts. Keeping everything
real lets every layer be an ordinary PyTorch op (cuDNN, autocast, channels_last, torch.compile,
ONNX). The native complex dtype is only used at the edges and in reference tests.
"""
from __future__ import annotations

import torch


def real_imag(x: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the real and imaginary halves of ``x`` along ``dim`` (no copy)."""
    if x.shape[dim] % 2:
        raise ValueError(f"complex layout needs an even size along dim {dim}, got {x.shape[dim]}")
    re, im = x.chunk(2, dim=dim)
    return re, im


def to_complex(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """[real | imag] real tensor -> native complex tensor with half the size along ``dim``."""
    re, im = real_imag(x, dim)
    return torch.complex(re, im)


def from_complex(z: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Native complex tensor -> [real | imag] real tensor with twice the size along ``dim``."""
    if not z.is_complex():
        raise TypeError(f"from_complex expects a complex tensor, got {z.dtype}")
    return torch.cat([z.real, z.imag], dim=dim)
