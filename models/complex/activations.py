"""Complex activations (paper section 3.3): CReLU, modReLU, zReLU, all on the [real | imag] layout."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import real_imag


class CReLU(nn.Module):
    """ReLU on the real and the imaginary part separately; layout-agnostic, so it is plain ReLU."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=self.inplace)


class ModReLU(nn.Module):
    """ReLU(|z| + b) z / |z| with a learned bias b per complex channel.

    |z| is smoothed as sqrt(|z|^2 + eps) so the output and its gradient are finite (zero) at z = 0.
    """

    def __init__(self, num_features: int, bias_init: float = 0.0, eps: float = 1e-8, dim: int = 1) -> None:
        super().__init__()
        self.num_features, self.eps, self.dim = num_features, eps, dim
        self.bias = nn.Parameter(torch.full((num_features,), float(bias_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr, xi = real_imag(x, self.dim)
        modulus = torch.sqrt(xr * xr + xi * xi + self.eps)
        shape = [1] * x.dim()
        shape[self.dim] = self.num_features
        scale = F.relu(modulus + self.bias.view(shape)) / modulus
        return torch.cat([xr * scale, xi * scale], dim=self.dim)


class ZReLU(nn.Module):
    """z where its phase lies in [0, pi/2] (both parts non-negative), else 0."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr, xi = real_imag(x, self.dim)
        keep = ((xr >= 0) & (xi >= 0)).to(x.dtype)
        return x * torch.cat([keep, keep], dim=self.dim)


ACTIVATIONS = ("crelu", "modrelu", "zrelu")


def complex_activation(name: str, num_features: int, dim: int = 1) -> nn.Module:
    """The paper's complex activations by name (section 3.3): ``crelu`` | ``modrelu`` | ``zrelu``.

    ``num_features`` (complex channels) sizes modReLU's learned bias; ``dim`` is the [real | imag] axis.
    """
    if name == "crelu":
        return CReLU()
    if name == "modrelu":
        return ModReLU(num_features, dim=dim)
    if name == "zrelu":
        return ZReLU(dim=dim)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
