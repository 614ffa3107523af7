"""Complex batch normalisation (paper section 3.4).

Real BN on the real and imaginary parts separately would leave them correlated and with unequal
variances. Complex BN centres each channel and whitens it with the inverse square root of its
2x2 covariance V = [[Vrr, Vri], [Vri, Vii]], then applies a learned symmetric 2x2 scale gamma and
a complex shift beta:  BN(x) = gamma V^{-1/2} (x - E[x]) + beta.

For a 2x2 SPD matrix the inverse square root has a closed form: with s = sqrt(det V) and
t = sqrt(Vrr + Vii + 2s),  V^{-1/2} = [[Vii + s, -Vri], [-Vri, Vrr + s]] / (s t).
gamma and V^{-1/2} are multiplied per channel first (C-sized work), so the full-size tensor is
touched by a single 2x2 affine map; autograd differentiates through the whitening.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .conv import block_weight
from .layout import real_imag


def inverse_sqrt_2x2(vrr: torch.Tensor, vri: torch.Tensor, vii: torch.Tensor):
    """Entries (a, b, d) of the symmetric inverse square root [[a, b], [b, d]] of [[vrr, vri], [vri, vii]]."""
    s = torch.sqrt(vrr * vii - vri * vri)
    t = torch.sqrt(vrr + vii + 2 * s)
    inv = 1.0 / (s * t)
    return (vii + s) * inv, -vri * inv, (vrr + s) * inv


class _ComplexBatchNorm(nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        f = dict(device=device, dtype=dtype)
        if affine:
            self.gamma_rr = nn.Parameter(torch.full((num_features,), 1 / math.sqrt(2), **f))
            self.gamma_ri = nn.Parameter(torch.zeros(num_features, **f))
            self.gamma_ii = nn.Parameter(torch.full((num_features,), 1 / math.sqrt(2), **f))
            self.beta = nn.Parameter(torch.zeros(2 * num_features, **f))  # [re | im]
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(2 * num_features, **f))
            # Rows: Vrr, Vri, Vii. Identity at start, like torch's running_var = 1.
            self.register_buffer("running_covar", torch.stack([torch.ones(num_features, **f),
                                                               torch.zeros(num_features, **f),
                                                               torch.ones(num_features, **f)]))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_covar.copy_(torch.tensor([1.0, 0.0, 1.0]).view(3, 1).to(self.running_covar))
            self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != 2 * self.num_features:
            raise ValueError(f"expected (N, {2 * self.num_features}, ...) input, got {tuple(x.shape)}")
        out_dtype = x.dtype
        if out_dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics in half precision are too coarse, as in torch's own BN under autocast
        xr, xi = real_imag(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            mr, mi = xr.mean(dims), xi.mean(dims)
            cr, ci = xr - mr.view(shape), xi - mi.view(shape)
            vrr, vri, vii = (cr * cr).mean(dims), (cr * ci).mean(dims), (ci * ci).mean(dims)
            if self.training and self.track_running_stats:
                self._update_running(mr, mi, vrr, vri, vii, x.numel() // x.shape[1])
        else:
            mr, mi = real_imag(self.running_mean, 0)
            vrr, vri, vii = self.running_covar
            cr, ci = xr - mr.view(shape), xi - mi.view(shape)
        (m00, m01, m10, m11), (br, bi) = self._affine(vrr, vri, vii)
        yr = m00.view(shape) * cr + m01.view(shape) * ci + br.view(shape)
        yi = m10.view(shape) * cr + m11.view(shape) * ci + bi.view(shape)
        return torch.cat([yr, yi], dim=1).to(out_dtype)

    def _affine(self, vrr, vri, vii):
        """Per-channel M = gamma V^{-1/2} (entries m00, m01, m10, m11) and the shift beta = (br, bi)."""
        a, b, d = inverse_sqrt_2x2(vrr + self.eps, vri, vii + self.eps)
        if not self.affine:
            return (a, b, b, d), (torch.zeros_like(a), torch.zeros_like(a))
        grr, gri, gii = self.gamma_rr, self.gamma_ri, self.gamma_ii
        # Both factors are symmetric 2x2; their product is not.
        m = (grr * a + gri * b, grr * b + gri * d, gri * a + gii * b, gri * b + gii * d)
        return m, real_imag(self.beta, 0)

    @torch.no_grad()
    def _update_running(self, mr, mi, vrr, vri, vii, n: int) -> None:
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbias = n / max(n - 1, 1)
        self.running_mean.lerp_(torch.cat([mr, mi]).to(self.running_mean.dtype), m)
        self.running_covar.lerp_(torch.stack([vrr, vri, vii]).to(self.running_covar.dtype) * unbias, m)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats} (complex channels)")


def fold_complex_bn(conv: nn.Module, bn: _ComplexBatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Real (weight, bias) of one convolution equal to ``conv`` followed by ``bn`` in eval mode.

    Eval-mode complex BN is a fixed 2x2 real-linear map per channel plus a shift, so it folds exactly
    into the preceding complex convolution's block weight: one conv at inference instead of conv + BN.
    ``conv`` is a ComplexConv1d/2d with groups=1; use the result with F.conv1d/F.conv2d and conv's
    stride, padding and dilation.
    """
    if not bn.track_running_stats:
        raise ValueError("only BN with running statistics folds into a convolution")
    if getattr(conv, "groups", 1) != 1:
        raise ValueError("fold_complex_bn supports groups=1 only")
    w = block_weight(conv.weight)
    c = conv.out_channels
    b = conv.bias if conv.bias is not None else torch.zeros(2 * c, dtype=w.dtype, device=w.device)
    (m00, m01, m10, m11), (beta_r, beta_i) = bn._affine(*bn.running_covar)
    shape = (c,) + (1,) * (w.dim() - 1)
    wr, wi = w[:c], w[c:]
    br, bi = b[:c] - bn.running_mean[:c], b[c:] - bn.running_mean[c:]
    weight = torch.cat([m00.view(shape) * wr + m01.view(shape) * wi, m10.view(shape) * wr + m11.view(shape) * wi])
    bias = torch.cat([m00 * br + m01 * bi + beta_r, m10 * br + m11 * bi + beta_i])
    return weight, bias


class ComplexBatchNorm1d(_ComplexBatchNorm):
    """Complex BN for (N, 2C) or (N, 2C, L) inputs."""


class ComplexBatchNorm2d(_ComplexBatchNorm):
    """Complex BN for (N, 2C, H, W) inputs."""
