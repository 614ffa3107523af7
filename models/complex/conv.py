"""Complex convolutions (1-3d, and transposed) and the complex linear layer.

W = A + iB applied to h = x + iy is Wh = (Ax - By) + i(Bx + Ay) (paper section 3.2). With the
[real | imag] channel layout that is one real convolution with the block weight
[[A, -B], [B, A]]: the same FLOPs as a real 2C -> 2C convolution, one cuDNN/oneDNN call, and
nothing complex in the graph, so autocast, channels_last, compile and export just work. A native
complex input is converted to that layout and back (models/complex/layout.py), so both forms run
the same real computation.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .init import complex_init_
from .layout import apply_real_imag, check_layout, layout_repr, real_imag


def block_weight(weight: torch.Tensor) -> torch.Tensor:
    """(2*out, in, *k) weight [A; B] (real rows, then imaginary rows) -> (2*out, 2*in, *k) block [[A, -B], [B, A]]."""
    a, b = weight.chunk(2, dim=0)
    return torch.cat([torch.cat([a, -b], dim=1), torch.cat([b, a], dim=1)], dim=0)


def transposed_block_weight(weight: torch.Tensor) -> torch.Tensor:
    """(2*in, out, *k) transposed-conv weight [A; B] -> (2*in, 2*out, *k) block [[A, B], [-B, A]].

    A transposed convolution sums input channel i times weight[i] into the outputs, so the block is indexed
    (input, output): real inputs add A to the real and B to the imaginary outputs, imaginary inputs -B and A.
    """
    a, b = weight.chunk(2, dim=0)
    return torch.cat([torch.cat([a, b], dim=1), torch.cat([-b, a], dim=1)], dim=0)


def _complex_conv(conv: Callable[..., torch.Tensor], x: torch.Tensor, weight: torch.Tensor, block: Callable,
                  bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """Complex (transposed) convolution of the [real | imag] layout x; ``conv(input, weight, bias, groups)``."""
    if groups == 1:
        return conv(x, block(weight), bias, 1)
    # Grouped: a single real grouped conv would mix real and imaginary groups, so use the 4 products.
    xr, xi = real_imag(x)
    a, b = weight.chunk(2, dim=0)
    out = torch.cat([conv(xr, a, None, groups) - conv(xi, b, None, groups),
                     conv(xr, b, None, groups) + conv(xi, a, None, groups)], 1)
    if bias is not None:
        out = out + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return out


class _ComplexWeightMixin:
    """Storage shared by every complex layer: weight (2*rows, ...) = [A; B] and bias (2*out,) = [re | im].

    Real and imaginary filters are stacked along the first dim so the weight keeps the rank of a real
    conv weight: ``model.to(memory_format=torch.channels_last)`` and weight-decay/optimiser code treat it
    like any other conv weight. ``layout`` ("auto" | "complex" | "real_imag") is the input form accepted.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_complex_parameters(self, shape: tuple[int, ...], bias_features: int | None, criterion: str,
                                 mode: str, layout: str, device=None, dtype=None) -> None:
        """``shape``: the complex weight's (rows, ...); ``bias_features``: complex outputs, None for no bias."""
        self.criterion, self.init_mode, self.layout = criterion, mode, check_layout(layout)
        self.weight = nn.Parameter(torch.empty((2 * shape[0], *shape[1:]), device=device, dtype=dtype))
        self.bias = None if bias_features is None else \
            nn.Parameter(torch.zeros(2 * bias_features, device=device, dtype=dtype))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        rows = self.weight.shape[0] // 2
        w = complex_init_(torch.empty((rows, *self.weight.shape[1:]), dtype=torch.complex128),
                          self.criterion, self.init_mode)
        self.weight.copy_(torch.cat([w.real, w.imag]).to(self.weight.dtype))
        if self.bias is not None:
            self.bias.zero_()

    def complex_weight(self) -> torch.Tensor:
        """The weight as a native complex tensor, shaped like the torch layer's: (out, in/groups, *kernel) for a
        convolution, (in, out/groups, *kernel) for a transposed one, (out, in) for the linear layer."""
        a, b = self.weight.chunk(2, dim=0)
        return torch.complex(a, b)

    def complex_bias(self) -> torch.Tensor | None:
        """The bias as a native complex tensor (out,), or None."""
        if self.bias is None:
            return None
        re, im = real_imag(self.bias, dim=0)
        return torch.complex(re, im)

def _tuple(value, dims: int) -> tuple[int, ...]:
    return (value,) * dims if isinstance(value, int) else tuple(value)


class _ComplexConvNd(_ComplexWeightMixin, nn.Module):
    """Complex convolution: input (N, in_channels, *spatial) complex or (N, 2*in_channels, *spatial) real
    [real | imag]; output in the same form. Arguments as in ``nn.Conv*d`` (channels count complex channels);
    ``criterion`` / ``init_mode``: ``complex_init_``'s Glorot/He and Rayleigh/independent initialisation."""

    _conv = None  # F.conv1d / F.conv2d / F.conv3d, set by subclasses
    _dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, criterion: str = "glorot",
                 init_mode: str = "rayleigh", layout: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _tuple(kernel_size, self._dims), _tuple(stride, self._dims)
        self.dilation = _tuple(dilation, self._dims)
        self.padding = padding if isinstance(padding, str) else _tuple(padding, self._dims)
        self.groups = groups
        self._init_complex_parameters((out_channels, in_channels // groups, *self.kernel_size),
                                      out_channels if bias else None, criterion, init_mode, layout, device, dtype)

    def _real_conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   groups: int) -> torch.Tensor:
        return type(self)._conv(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _complex_conv(self._real_conv, x, self.weight, block_weight, self.bias, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_real_imag(self._forward, x, self, self.in_channels)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}{layout_repr(self.layout)} (complex channels)")


class ComplexConv1d(_ComplexConvNd):
    """Complex 1-D convolution: (N, in_channels, L) complex or (N, 2*in_channels, L) [real | imag] real."""
    _conv = staticmethod(F.conv1d)
    _dims = 1


class ComplexConv2d(_ComplexConvNd):
    """Complex 2-D convolution: (N, in_channels, H, W) complex or (N, 2*in_channels, H, W) [real | imag] real."""
    _conv = staticmethod(F.conv2d)
    _dims = 2


class ComplexConv3d(_ComplexConvNd):
    """Complex 3-D convolution: (N, in_channels, D, H, W) complex or (N, 2*in_channels, D, H, W) real."""
    _conv = staticmethod(F.conv3d)
    _dims = 3


class _ComplexConvTransposeNd(_ComplexWeightMixin, nn.Module):
    """Complex transposed convolution (the adjoint of the complex convolution with the conjugate filters, as
    ``nn.ConvTranspose*d`` is of ``nn.Conv*d``): the upsampling layer of complex U-Nets. Arguments and their order
    as in ``nn.ConvTranspose*d`` (channels count complex channels; zero padding only); ``forward(x, output_size)``
    picks the output size among the ambiguous ones of a strided layer. The weight is (2*in, out/groups, *kernel)
    = [A; B]; the initialisation uses the fans of that shape, as torch does for its transposed convolutions."""

    _conv = None  # F.conv_transpose1d / 2d / 3d
    _dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, criterion: str = "glorot",
                 init_mode: str = "rayleigh", layout: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if isinstance(padding, str):
            raise TypeError(f"{type(self).__name__} takes integer padding (as nn.ConvTranspose*d), got {padding!r}")
        d = self._dims
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _tuple(kernel_size, d), _tuple(stride, d)
        self.padding, self.output_padding = _tuple(padding, d), _tuple(output_padding, d)
        self.dilation = _tuple(dilation, d)
        if any(p >= max(s, dl) for p, s, dl in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"output_padding {self.output_padding} must be smaller than stride {self.stride} "
                             f"or dilation {self.dilation}")
        self._init_complex_parameters((in_channels, out_channels // groups, *self.kernel_size),
                                      out_channels if bias else None, criterion, init_mode, layout, device, dtype)

    def _output_padding(self, x: torch.Tensor, output_size) -> tuple[int, ...]:
        if output_size is None:
            return self.output_padding
        size = tuple(output_size)[-self._dims:]
        smallest = [(n - 1) * s - 2 * p + dl * (k - 1) + 1 for n, s, p, dl, k in
                    zip(x.shape[-self._dims:], self.stride, self.padding, self.dilation, self.kernel_size)]
        extra = tuple(want - got for want, got in zip(size, smallest))
        if len(size) != self._dims or any(not 0 <= e < max(s, dl) for e, s, dl in
                                          zip(extra, self.stride, self.dilation)):
            raise ValueError(f"output_size {tuple(output_size)} is not reachable from input {tuple(x.shape)}: "
                             f"each spatial size must be in [{smallest}, + max(stride, dilation))")
        return extra

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size)

        def conv(h, weight, bias, groups):
            return type(self)._conv(h, weight, bias, self.stride, self.padding, output_padding, groups,
                                    self.dilation)

        return apply_real_imag(
            lambda h: _complex_conv(conv, h, self.weight, transposed_block_weight, self.bias, self.groups),
            x, self, self.in_channels)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, output_padding={self.output_padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}{layout_repr(self.layout)} (complex channels)")


class ComplexConvTranspose1d(_ComplexConvTransposeNd):
    """Complex 1-D transposed convolution: (N, in_channels, L) complex or (N, 2*in_channels, L) real."""
    _conv = staticmethod(F.conv_transpose1d)
    _dims = 1


class ComplexConvTranspose2d(_ComplexConvTransposeNd):
    """Complex 2-D transposed convolution: (N, in_channels, H, W) complex or (N, 2*in_channels, H, W) real."""
    _conv = staticmethod(F.conv_transpose2d)
    _dims = 2


class ComplexConvTranspose3d(_ComplexConvTransposeNd):
    """Complex 3-D transposed convolution: (N, in_channels, D, H, W) complex or (N, 2*in_channels, D, H, W) real."""
    _conv = staticmethod(F.conv_transpose3d)
    _dims = 3


class ComplexLinear(_ComplexWeightMixin, nn.Module):
    """Complex dense layer on the last dimension: (..., in_features) complex -> (..., out_features) complex, or
    (..., 2*in_features) real [real | imag] -> (..., 2*out_features). Weight (2*out, in) = [A; B]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, criterion: str = "glorot",
                 init_mode: str = "rayleigh", layout: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_complex_parameters((out_features, in_features), out_features if bias else None, criterion,
                                      init_mode, layout, device, dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, block_weight(self.weight), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_real_imag(self._forward, x, self, self.in_features, dim=-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{layout_repr(self.layout)} (complex features)")


__all__ = ["ComplexConv1d", "ComplexConv2d", "ComplexConv3d", "ComplexConvTranspose1d", "ComplexConvTranspose2d",
           "ComplexConvTranspose3d", "ComplexLinear", "block_weight", "transposed_block_weight"]
