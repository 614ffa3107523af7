"""Complex weight initialisation (paper section 3.5).

Both modes give Var(W) = E|W|^2 = 2 sigma^2 with sigma = 1/sqrt(fan_in + fan_out) (Glorot) or
1/sqrt(fan_in) (He). The original Keras code passed the variance where the Rayleigh scale sigma
was meant, which made the weights too small; here sigma is the Rayleigh scale, as in the paper.
"""
from __future__ import annotations

import math

import torch


def complex_fans(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel), counted in complex units."""
    if len(shape) < 2:
        raise ValueError(f"a weight needs at least 2 dims (out, in, *kernel), got {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def complex_sigma(shape: torch.Size | tuple[int, ...], criterion: str) -> float:
    fan_in, fan_out = complex_fans(shape)
    if criterion == "glorot":
        return 1.0 / math.sqrt(fan_in + fan_out)
    if criterion == "he":
        return 1.0 / math.sqrt(fan_in)
    raise ValueError(f"criterion must be 'glorot' or 'he', got {criterion!r}")


def semi_unitary(rows: int, cols: int, *, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """A random (rows, cols) complex matrix with orthonormal rows (rows <= cols) or columns."""
    a = torch.randn(rows, cols, dtype=dtype, generator=generator)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


@torch.no_grad()
def complex_init_(weight: torch.Tensor, criterion: str = "glorot", mode: str = "rayleigh",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill a native complex tensor (out, in, *kernel) in place and return it."""
    if not weight.is_complex():
        raise TypeError(f"complex_init_ expects a complex tensor, got {weight.dtype}")
    sigma = complex_sigma(weight.shape, criterion)
    if mode == "rayleigh":
        u = torch.rand(weight.shape, generator=generator, dtype=torch.float64)
        modulus = sigma * torch.sqrt(-2.0 * torch.log1p(-u))  # inverse CDF of Rayleigh(sigma)
        phase = (torch.rand(weight.shape, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
        value = torch.polar(modulus, phase)
    elif mode == "independent":
        rows, cols = weight.shape[0], math.prod(weight.shape[1:])
        w = semi_unitary(rows, cols, generator=generator)
        # A semi-unitary (rows, cols) matrix has sum |w|^2 = min(rows, cols); rescale to 2 sigma^2 per entry.
        w = w * math.sqrt(2 * sigma**2 * rows * cols / min(rows, cols))
        value = w.reshape(weight.shape)
    else:
        raise ValueError(f"mode must be 'rayleigh' or 'independent', got {mode!r}")
    weight.copy_(value.to(weight.dtype))
    return weight
