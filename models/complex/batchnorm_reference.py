"""The straightforward complex BN, kept as the oracle for tests and benchmarks/complex_speed.py.

This is the implementation ``ComplexBatchNorm*d`` had before it got a hand-written backward: every step is a
separate PyTorch op (two means, centring, three products and means, a 2x2 map written as four multiplies and
adds per half, a concatenation) and autograd differentiates all of it. It is slow (about ten passes over the
activation forward and more backward) but obviously right, so the fast path is tested against it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .batchnorm import inverse_sqrt_2x2
from .layout import real_imag


def complex_batch_norm_reference(x: torch.Tensor, running_mean: torch.Tensor | None, running_covar: torch.Tensor | None,
                                 gamma: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
                                 beta: torch.Tensor | None, training: bool, momentum: float, eps: float
                                 ) -> torch.Tensor:
    """Complex BN of ``x`` (N, 2C, ...) with the old op-by-op formulation.

    ``gamma`` = (gamma_rr, gamma_ri, gamma_ii) or None (no affine); ``training`` uses batch statistics and,
    when running buffers are given, updates them in place (running_covar rows Vrr, Vri, Vii, unbiased) with
    ``momentum``; otherwise the running statistics are used.
    """
    c = x.shape[1] // 2
    xr, xi = real_imag(x)
    dims = [0, *range(2, x.dim())]
    shape = (1, c) + (1,) * (x.dim() - 2)
    if training or running_mean is None:
        mr, mi = xr.mean(dims), xi.mean(dims)
        cr, ci = xr - mr.view(shape), xi - mi.view(shape)
        vrr, vri, vii = (cr * cr).mean(dims), (cr * ci).mean(dims), (ci * ci).mean(dims)
        if training and running_mean is not None:
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                running_mean.lerp_(torch.cat([mr, mi]), momentum)
                running_covar.lerp_(torch.stack([vrr, vri, vii]) * (n / max(n - 1, 1)), momentum)
    else:
        mr, mi = real_imag(running_mean, 0)
        vrr, vri, vii = running_covar
        cr, ci = xr - mr.view(shape), xi - mi.view(shape)
    a, b, d = inverse_sqrt_2x2(vrr + eps, vri, vii + eps)
    if gamma is None:
        m00, m01, m10, m11 = a, b, b, d
        br = bi = torch.zeros_like(a)
    else:
        grr, gri, gii = gamma
        m00, m01, m10, m11 = grr * a + gri * b, grr * b + gri * d, gri * a + gii * b, gri * b + gii * d
        br, bi = real_imag(beta, 0)
    yr = m00.view(shape) * cr + m01.view(shape) * ci + br.view(shape)
    yi = m10.view(shape) * cr + m11.view(shape) * ci + bi.view(shape)
    return torch.cat([yr, yi], dim=1)


def _reference_forward(bn: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """bn's forward computed by the op-by-op reference, with bn's parameters and running buffers."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        training = bn.training or not bn.track_running_stats
        momentum = bn.momentum
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked += 1
            if momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        gamma = (bn.gamma_rr, bn.gamma_ri, bn.gamma_ii) if bn.affine else None
        running = (bn.running_mean, bn.running_covar) if bn.track_running_stats else (None, None)
        dtype = x.dtype
        y = complex_batch_norm_reference(x.float() if dtype in (torch.float16, torch.bfloat16) else x, *running, gamma,
                                         bn.beta if bn.affine else None, training, momentum or 0.0, bn.eps)
        return y.to(dtype)
    return forward


def use_reference_bn(model: nn.Module) -> nn.Module:
    """Swap every complex BN in ``model`` (itself included) to the reference implementation, same parameters and
    buffers (momentum, running statistics, fp32 statistics under autocast as the module): the old module."""
    from .batchnorm import _ComplexBatchNorm
    for m in model.modules():
        if isinstance(m, _ComplexBatchNorm):
            m.forward = _reference_forward(m)
    return model
