"""Pooling and dropout that treat the real and imaginary part of each value together.

Average pooling is linear, so ordinary average pooling on the [real | imag] layout is already the
complex average (``ComplexAvgPool*d`` add the native complex form, which torch's pooling lacks). Max
pooling per part would combine the real part of one value with the imaginary part of another; complex
max pooling keeps, per window, the one value with the largest modulus. Every layer takes a native
complex tensor (same dtype out) or the real [real | imag] layout along dim 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import apply_real_imag, check_input, check_layout, layout_repr, map_parts


def complex_global_max_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) complex -> (N, C), or (N, 2C, *spatial) real [real | imag] -> (N, 2C): per channel, the
    complex value with the largest modulus."""
    def pick(re, im):
        idx = (re * re + im * im).flatten(2).argmax(2, keepdim=True)
        return re.flatten(2).gather(2, idx), im.flatten(2).gather(2, idx)
    return map_parts(pick, x, "complex_global_max_pool").flatten(1)


class _ComplexMaxPoolNd(nn.Module):
    _pool = None  # F.max_pool1d / 2d / 3d

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
                 layout: str = "auto") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.dilation, self.ceil_mode, self.layout = dilation, ceil_mode, check_layout(layout)

    def _max_by_modulus(self, re: torch.Tensor, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, idx = type(self)._pool(re * re + im * im, self.kernel_size, self.stride, self.padding, self.dilation,
                                  ceil_mode=self.ceil_mode, return_indices=True)
        flat = idx.flatten(2)
        return tuple(part.flatten(2).gather(2, flat).view_as(idx) for part in (re, im))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_parts(self._max_by_modulus, x, self)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}{layout_repr(self.layout)}")


_MAX_POOL_ARGS = """

    Per window, the complex value of largest modulus (real and imaginary part from the same position).
    ``kernel_size``, ``stride`` (default: kernel_size), ``padding``, ``dilation``, ``ceil_mode`` as in
    ``nn.MaxPool*d``; ``layout``: "auto" takes either form, "complex" / "real_imag" only that one.
    """


class ComplexMaxPool1d(_ComplexMaxPoolNd):
    __doc__ = "Complex max pooling over L of (N, C, L) complex or (N, 2C, L) real [real | imag]." + _MAX_POOL_ARGS
    _pool = staticmethod(F.max_pool1d)


class ComplexMaxPool2d(_ComplexMaxPoolNd):
    __doc__ = "Complex max pooling over (H, W) of (N, C, H, W) complex or (N, 2C, H, W) real." + _MAX_POOL_ARGS
    _pool = staticmethod(F.max_pool2d)


class ComplexMaxPool3d(_ComplexMaxPoolNd):
    __doc__ = "Complex max pooling over (D, H, W) of (N, C, D, H, W) complex or (N, 2C, ...) real." + _MAX_POOL_ARGS
    _pool = staticmethod(F.max_pool3d)


class _ComplexAvgPoolNd(nn.Module):
    _pool = None  # F.avg_pool1d / 2d / 3d

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 layout: str = "auto") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.ceil_mode, self.count_include_pad, self.layout = ceil_mode, count_include_pad, check_layout(layout)

    def _average(self, x: torch.Tensor) -> torch.Tensor:
        return type(self)._pool(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_real_imag(self._average, x, self)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}{layout_repr(self.layout)}")


_AVG_POOL_ARGS = """

    The complex mean of each window (on the real layout exactly ``nn.AvgPool*d``). Arguments as in
    ``nn.AvgPool*d``; ``layout``: "auto" takes either form, "complex" / "real_imag" only that one.
    """


class ComplexAvgPool1d(_ComplexAvgPoolNd):
    __doc__ = "Complex average pooling of (N, C, L) complex or (N, 2C, L) real [real | imag]." + _AVG_POOL_ARGS
    _pool = staticmethod(F.avg_pool1d)


class ComplexAvgPool2d(_ComplexAvgPoolNd):
    __doc__ = "Complex average pooling of (N, C, H, W) complex or (N, 2C, H, W) real [real | imag]." + _AVG_POOL_ARGS
    _pool = staticmethod(F.avg_pool2d)


class ComplexAvgPool3d(_ComplexAvgPoolNd):
    __doc__ = "Complex average pooling of (N, C, D, H, W) complex or (N, 2C, D, H, W) real." + _AVG_POOL_ARGS
    _pool = staticmethod(F.avg_pool3d)


class ComplexDropout(nn.Module):
    """Dropout with one mask for both parts of a complex value (a value is kept or dropped whole), scaled by
    1/(1-p) in training, the identity in eval. Input: any complex tensor, or real with the [real | imag] halves
    along ``dim``; ``layout``: "auto" | "complex" | "real_imag"."""

    def __init__(self, p: float = 0.5, dim: int = 1, layout: str = "auto") -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.dim, self.layout = p, dim, check_layout(layout)

    def _drop(self, re: torch.Tensor, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.empty_like(re).bernoulli_(1 - self.p) / (1 - self.p)
        return re * keep, im * keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            check_input(x, self, dim=self.dim)
            return x
        return map_parts(self._drop, x, self, dim=self.dim)

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}{layout_repr(self.layout)}"
