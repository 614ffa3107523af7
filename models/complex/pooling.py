"""Pooling and dropout that treat the real and imaginary part of each value together.

Average pooling is linear, so ordinary average pooling on the [real | imag] layout is already the
complex average. Max pooling per part would combine the real part of one value with the imaginary
part of another; complex max pooling keeps, per window, the one value with the largest modulus.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import real_imag


def _max_by_modulus(x: torch.Tensor, pool, kernel_size, stride, padding) -> torch.Tensor:
    xr, xi = real_imag(x)
    _, idx = pool(xr * xr + xi * xi, kernel_size, stride, padding, return_indices=True)
    flat = idx.flatten(2)
    pick = (lambda part: part.flatten(2).gather(2, flat).view_as(idx))
    return torch.cat([pick(xr), pick(xi)], dim=1)


def complex_global_max_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, 2C, *spatial) -> (N, 2C): per channel, the complex value with the largest modulus."""
    xr, xi = real_imag(x)
    idx = (xr * xr + xi * xi).flatten(2).argmax(2, keepdim=True)
    return torch.cat([xr.flatten(2).gather(2, idx), xi.flatten(2).gather(2, idx)], dim=1).flatten(1)


class ComplexMaxPool1d(nn.Module):
    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _max_by_modulus(x, F.max_pool1d, self.kernel_size, self.stride, self.padding)


class ComplexMaxPool2d(ComplexMaxPool1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _max_by_modulus(x, F.max_pool2d, self.kernel_size, self.stride, self.padding)


class ComplexDropout(nn.Module):
    """Dropout with one mask for both parts of a complex value (a value is kept or dropped whole)."""

    def __init__(self, p: float = 0.5, dim: int = 1) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.dim = p, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        xr, _ = real_imag(x, self.dim)
        keep = torch.empty_like(xr).bernoulli_(1 - self.p) / (1 - self.p)
        return x * torch.cat([keep, keep], dim=self.dim)
