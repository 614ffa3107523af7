"""Complex convolutions and the complex linear layer.

W = A + iB applied to h = x + iy is Wh = (Ax - By) + i(Bx + Ay) (paper section 3.2). With the
[real | imag] channel layout that is one real convolution with the block weight
[[A, -B], [B, A]]: the same FLOPs as a real 2C -> 2C convolution, one cuDNN/oneDNN call, and
nothing complex in the graph, so autocast, channels_last, compile and export just work.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .init import complex_init_
from .layout import real_imag


def block_weight(weight: torch.Tensor) -> torch.Tensor:
    """(2*out, in, *k) weight [A; B] (real rows, then imaginary rows) -> (2*out, 2*in, *k) block [[A, -B], [B, A]]."""
    a, b = weight.chunk(2, dim=0)
    return torch.cat([torch.cat([a, -b], dim=1), torch.cat([b, a], dim=1)], dim=0)


class _ComplexWeightMixin:
    """Storage shared by every complex layer: weight (2*out, in, *k) = [A; B] and bias (2*out,) = [re | im].

    Real and imaginary filters are stacked along the output dim so the weight keeps the rank of a real
    conv weight: ``model.to(memory_format=torch.channels_last)`` and weight-decay/optimiser code treat it
    like any other conv weight.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_complex_parameters(self, shape: tuple[int, ...], bias: bool, criterion: str, mode: str,
                                 device=None, dtype=None) -> None:
        self.criterion, self.init_mode = criterion, mode
        self.weight = nn.Parameter(torch.empty((2 * shape[0], *shape[1:]), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(2 * shape[0], device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        out = self.weight.shape[0] // 2
        w = complex_init_(torch.empty((out, *self.weight.shape[1:]), dtype=torch.complex128),
                          self.criterion, self.init_mode)
        self.weight.copy_(torch.cat([w.real, w.imag]).to(self.weight.dtype))
        if self.bias is not None:
            self.bias.zero_()

    def complex_weight(self) -> torch.Tensor:
        """The weight as a native complex tensor (out, in, *kernel)."""
        a, b = self.weight.chunk(2, dim=0)
        return torch.complex(a, b)

    def complex_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        re, im = real_imag(self.bias, dim=0)
        return torch.complex(re, im)


class _ComplexConvNd(_ComplexWeightMixin, nn.Module):
    _conv = None  # F.conv1d / F.conv2d, set by subclasses
    _dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, criterion: str = "glorot",
                 init_mode: str = "rayleigh", device=None, dtype=None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        tup = (lambda v: (v,) * self._dims if isinstance(v, int) else tuple(v))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = tup(kernel_size), tup(stride), tup(dilation)
        self.padding = padding if isinstance(padding, str) else tup(padding)
        self.groups = groups
        self._init_complex_parameters((out_channels, in_channels // groups, *self.kernel_size), bias,
                                      criterion, init_mode, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = type(self)._conv
        if self.groups == 1:
            return conv(x, block_weight(self.weight), self.bias, self.stride, self.padding, self.dilation)
        # Grouped: a single real grouped conv would mix real and imaginary groups, so use the 4 products.
        xr, xi = real_imag(x)
        args = (None, self.stride, self.padding, self.dilation, self.groups)
        a, b = self.weight.chunk(2, dim=0)
        out = torch.cat([conv(xr, a, *args) - conv(xi, b, *args), conv(xr, b, *args) + conv(xi, a, *args)], 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, *([1] * self._dims))
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None} (complex channels)")


class ComplexConv1d(_ComplexConvNd):
    """Complex 1-D convolution; input (N, 2*in_channels, L) in [real | imag] layout."""
    _conv = staticmethod(F.conv1d)
    _dims = 1


class ComplexConv2d(_ComplexConvNd):
    """Complex 2-D convolution; input (N, 2*in_channels, H, W) in [real | imag] layout."""
    _conv = staticmethod(F.conv2d)
    _dims = 2


class ComplexLinear(_ComplexWeightMixin, nn.Module):
    """Complex dense layer on the last dimension: (..., 2*in_features) -> (..., 2*out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, criterion: str = "glorot",
                 init_mode: str = "rayleigh", device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_complex_parameters((out_features, in_features), bias, criterion, init_mode, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, block_weight(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


__all__ = ["ComplexConv1d", "ComplexConv2d", "ComplexLinear", "block_weight"]
