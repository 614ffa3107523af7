"""Complex layer normalisation: the paper's BN whitening (section 3.4), per example instead of per batch.

For each example, the complex values over the normalised dims are centred and whitened with the inverse
square root of their 2x2 covariance V = [[Vrr, Vri], [Vri, Vii]] (the closed form of batchnorm.py), then
scaled by a learned symmetric 2x2 matrix and shifted by a learned complex value, one of each per element of
``normalized_shape`` as in ``nn.LayerNorm``. Real layer norm on the [real | imag] layout would instead
normalise real and imaginary parts as if they were independent features and leave them correlated.

No batch statistics, so training and evaluation compute the same thing (the reason to prefer it over BN for
small or variable batches and for sequence models).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .batchnorm import whitening_matrix
from .layout import apply_real_imag, check_layout, layout_repr, real_imag


class ComplexLayerNorm(nn.Module):
    """Per-example complex whitening over the last ``len(normalized_shape)`` dims.

    Input: complex (..., *normalized_shape), or real with the [real | imag] halves along the first normalised
    dim: (..., 2 * normalized_shape[0], *normalized_shape[1:]) (so (N, 2C, H, W) with normalized_shape (C, H, W),
    or (N, T, 2C) with (C,), as ComplexLinear). Output: same form and dtype.

    y = gamma V^{-1/2} (z - E[z]) + beta with E and V over the normalised dims of each example, eps added to
    the diagonal of V. ``elementwise_affine``: learn gamma (gamma_rr, gamma_ri, gamma_ii; 1/sqrt(2), 0, 1/sqrt(2)
    at init, as the paper's BN, so E|y|^2 = 1) and, with ``bias``, beta (zero at init), each of
    ``normalized_shape``. ``layout``: "auto" takes either form, "complex" / "real_imag" only that one.
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, layout: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape:
            raise ValueError("normalized_shape needs at least one dim")
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.layout = check_layout(layout)
        f = {"device": device, "dtype": dtype}
        self.gamma_rr = self.gamma_ri = self.gamma_ii = self.beta = None
        if elementwise_affine:
            self.gamma_rr = nn.Parameter(torch.full(shape, 1 / math.sqrt(2), **f))
            self.gamma_ri = nn.Parameter(torch.zeros(shape, **f))
            self.gamma_ii = nn.Parameter(torch.full(shape, 1 / math.sqrt(2), **f))
            if bias:
                self.beta = nn.Parameter(torch.zeros(2 * shape[0], *shape[1:], **f))  # [re | im]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = -len(self.normalized_shape)
        if tuple(x.shape[dim + 1:] if dim < -1 else ()) != self.normalized_shape[1:]:
            raise ValueError(f"ComplexLayerNorm: expected trailing dims {self.normalized_shape} (complex) or "
                             f"({2 * self.normalized_shape[0]}, *{self.normalized_shape[1:]}) (real [real | imag]), "
                             f"got {tuple(x.shape)}")
        return apply_real_imag(self._forward, x, self, self.normalized_shape[0], dim=dim)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = -len(self.normalized_shape)
        dims = tuple(range(dim, 0))
        out_dtype = x.dtype
        if out_dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics in fp32, as complex BN under autocast
        xr, xi = real_imag(x, dim)
        cr, ci = xr - xr.mean(dims, keepdim=True), xi - xi.mean(dims, keepdim=True)
        vrr, vri, vii = (cr * cr).mean(dims, True), (cr * ci).mean(dims, True), (ci * ci).mean(dims, True)
        w00, w01, _, w11 = whitening_matrix(vrr, vri, vii, self.eps)  # symmetric: w10 = w01
        yr, yi = w00 * cr + w01 * ci, w01 * cr + w11 * ci
        if self.elementwise_affine:
            yr, yi = self.gamma_rr * yr + self.gamma_ri * yi, self.gamma_ri * yr + self.gamma_ii * yi
        if self.beta is not None:
            br, bi = real_imag(self.beta, 0)
            yr, yi = yr + br, yi + bi
        return torch.cat([yr, yi], dim).to(out_dtype)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.beta is not None}{layout_repr(self.layout)}"
                " (complex)")


__all__ = ["ComplexLayerNorm"]
