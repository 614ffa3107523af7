"""Complex batch normalisation (paper section 3.4).

Real BN on the real and imaginary parts separately would leave them correlated and with unequal
variances. Complex BN centres each channel and whitens it with the inverse square root of its
2x2 covariance V = [[Vrr, Vri], [Vri, Vii]], then applies a learned symmetric 2x2 scale gamma and
a complex shift beta:  BN(x) = gamma V^{-1/2} (x - E[x]) + beta.

For a 2x2 SPD matrix the inverse square root has a closed form: with s = sqrt(det V) and
t = sqrt(Vrr + Vii + 2s),  V^{-1/2} = [[Vii + s, -Vri], [-Vri, Vrr + s]] / (s t).
gamma and V^{-1/2} are multiplied per channel first (C-sized work), so the full-size tensor is
touched by a single 2x2 affine map W = gamma V^{-1/2}.

Speed (issue 12; benchmarks/complex_speed.py). Written op by op (models/complex/batchnorm_reference.py, kept
as the test oracle) complex BN took about ten passes over the activation forward and twenty backward, most
into freshly allocated tensors (on CPU a fresh tensor's page faults cost more than the arithmetic), with
autograd bookkeeping for ~50 small ops. Here:

- training, eager: ``_ComplexBatchNormFn``, a custom autograd function. Forward: the mean, the centred data
  written into the output buffer as scratch, the three centred second moments (centred: E[x^2] - E[x]^2 loses
  the variance to cancellation when |mean| >> std), then the output W x + (beta - W E[x]) in place: one
  full-size allocation. Backward, one allocation: reductions sum g and sum g (x - E[x])^T, then the closed
  form dx = W^T (g - mean g) + K (x - E[x]) with K = dL/dV dV/dx a per-channel 2x2 matrix. The C-sized chain
  rule through the closed-form V^{-1/2} and gamma is written out too (``_whitening_matrix_backward``, checked
  against autograd in the tests). Sums of products go through the batch-norm backward kernel
  (``_centred_dot``), which reduces without writing a product tensor.
- evaluation (running statistics): one 2x2 affine map W x + (beta - W E[x]), one pass.
- under ``torch.compile`` / ``torch.export``: the plain formulation (``_plain_complex_batch_norm``), which
  the compiler fuses and differentiates itself; ``set_compiled_batch_norm(True)`` (or DCN_COMPILED_BN=1)
  compiles just that function for otherwise eager models. Off by default: it compiles for seconds per input
  shape and, on CPU, did not make the training step faster (README, "Speed of the complex network").

Same math in every path: tests/models/test_complex_batchnorm.py checks outputs, gradients and
running statistics against the reference to fp32 tolerance.
"""
from __future__ import annotations

import math
import os

import torch
from torch import nn

from .conv import block_weight
from .layout import apply_real_imag, check_layout, layout_repr, real_imag


def inverse_sqrt_2x2(vrr: torch.Tensor, vri: torch.Tensor, vii: torch.Tensor):
    """Entries (a, b, d) of the symmetric inverse square root [[a, b], [b, d]] of [[vrr, vri], [vri, vii]]."""
    return _inverse_sqrt_2x2(vrr, vri, vii)[:3]


def _inverse_sqrt_2x2(u, r, w):
    """(a, b, d) and the intermediates (s, t, inv) the backward needs: s = sqrt(det), t = sqrt(u + w + 2s)."""
    s = torch.sqrt(u * w - r * r)
    t = torch.sqrt(u + w + 2 * s)
    inv = 1.0 / (s * t)
    return (w + s) * inv, -r * inv, (u + s) * inv, s, t, inv


def whitening_matrix(vrr, vri, vii, eps: float, gamma=None):
    """Per-channel W = gamma (V + eps I)^{-1/2} as entries (w00, w01, w10, w11); ``gamma``: (grr, gri, gii) or None."""
    a, b, d = inverse_sqrt_2x2(vrr + eps, vri, vii + eps)
    return _times_gamma(a, b, d, gamma)


def _times_gamma(a, b, d, gamma):
    if gamma is None:
        return a, b, b, d
    grr, gri, gii = gamma
    # Both factors are symmetric 2x2; their product is not.
    return grr * a + gri * b, grr * b + gri * d, gri * a + gii * b, gri * b + gii * d


def _whitening_matrix_backward(vrr, vri, vii, eps: float, sqrt_terms, gamma, dw):
    """Gradients (d_vrr, d_vri, d_vii), (d_grr, d_gri, d_gii) or None of whitening_matrix, given dL/dW = dw.

    The chain rule through the closed form, by hand: C-sized work, but ~40 small ops, whose autograd bookkeeping
    (a graph rebuilt in every backward) would cost more than the big tensors at small batches. ``sqrt_terms`` are
    the (a, b, d, s, t, inv) of _inverse_sqrt_2x2 from the forward. Checked against autograd in the tests.
    """
    u, r, w = vrr + eps, vri, vii + eps
    a, b, d, s, t, inv = sqrt_terms
    dw00, dw01, dw10, dw11 = dw
    if gamma is None:  # W = S = [[a, b], [b, d]]
        da, db, dd, d_gamma = dw00, dw01 + dw10, dw11, None
    else:  # W = G S with G, S symmetric: dL/dG = dW S, dL/dS = G dW, each folded onto its three free entries
        grr, gri, gii = gamma
        d_gamma = (dw00 * a + dw01 * b, dw00 * b + dw01 * d + dw10 * a + dw11 * b, dw10 * b + dw11 * d)
        da = grr * dw00 + gri * dw10
        db = grr * dw01 + gri * dw11 + gri * dw00 + gii * dw10
        dd = gri * dw01 + gii * dw11
    # a = (w + s) inv, b = -r inv, d = (u + s) inv, inv = 1 / (s t), t = sqrt(u + w + 2 s), s = sqrt(u w - r^2)
    d_inv = da * (w + s) - db * r + dd * (u + s)
    d_p = -d_inv * inv * inv                         # p = s t
    d_z = d_p * s / (2 * t)                          # z = u + w + 2 s = t^2
    d_s = (da + dd) * inv + d_p * t + 2 * d_z
    d_q = d_s / (2 * s)                              # q = u w - r^2 = s^2
    d_u = dd * inv + d_z + d_q * w
    d_w = da * inv + d_z + d_q * u
    d_r = -db * inv - 2 * r * d_q
    return (d_u, d_r, d_w), d_gamma


def whitening_matrix_backward(vrr, vri, vii, eps: float, gamma, dw):
    """Public form of the hand-written backward of whitening_matrix (recomputes the square roots)."""
    sqrt_terms = _inverse_sqrt_2x2(vrr + eps, vri, vii + eps)
    return _whitening_matrix_backward(vrr, vri, vii, eps, sqrt_terms, gamma, dw)


def _channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but 1 (batch and spatial), as t.sum([0, 2, ...]).

    On CPU, when the spatial dims can be flattened without a copy (also for a real/imag half), sum them first and
    then the batch: TensorIterator reduces the mixed dims up to 5x slower for small spatial sizes or a sliced view.
    """
    dims = [0, *range(2, t.dim())]
    if t.device.type == "cpu" and t.dim() > 2:
        spatial = t.shape[2:]
        packed = t.stride(-1) == 1 and all(t.stride(i) == t.stride(i + 1) * t.shape[i + 1]
                                           for i in range(2, t.dim() - 1))
        if packed and math.prod(spatial) > 1:
            return t.view(t.shape[0], t.shape[1], -1).sum(-1).sum(0)
    return t.sum(dims)


def _affine_2x2_into(out: torch.Tensor, xr, xi, w, shift_r, shift_i, shape) -> torch.Tensor:
    """out = [w00 xr + w01 xi + shift_r | w10 xr + w11 xi + shift_i], written in place into ``out`` (no other
    full-size memory); ``out`` must not alias xr or xi. Three in-place passes per half: on CPU
    torch.addcmul(shift, x, w, out=...) with two broadcast operands is slower than mul, addcmul_, add_."""
    w00, w01, w10, w11 = (t.view(shape) for t in w)
    out_r, out_i = real_imag(out)
    torch.mul(xr, w00, out=out_r).addcmul_(xi, w01).add_(shift_r.view(shape))
    torch.mul(xr, w10, out=out_i).addcmul_(xi, w11).add_(shift_i.view(shape))
    return out


def _centred_dot(a: torch.Tensor, b: torch.Tensor, mean_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (dim 1): (sum a * (b - mean_b), sum a) over all other dims.

    torch has no fused "sum of products" reduction; the batch-norm backward kernel is one: asked for the weight and
    bias gradients only, with invstd = 1, it returns exactly these two sums, reading a and b once and writing no
    product tensor (the same reduction SyncBatchNorm uses). Other backends: the products, explicitly.
    """
    if a.device.type in ("cpu", "cuda"):
        ones = torch.ones_like(mean_b)
        _, dot, total = torch.ops.aten.native_batch_norm_backward(
            a, b, ones, None, None, mean_b, ones, True, 0.0, [False, True, True])
        return dot, total
    return _channel_sum(a * (b - mean_b.view(1, -1, *([1] * (b.dim() - 2))))), _channel_sum(a)


class _ComplexBatchNormFn(torch.autograd.Function):
    """Training-mode complex BN with batch statistics and a closed-form backward (eager mode).

    Returns (y, mean, vrr, vri, vii); the statistics are non-differentiable and feed the running buffers.
    Full-size memory: the output forward and the input gradient backward, nothing else (x is saved, as by real
    BN). The cross-moment products are written into those buffers before their final contents, because on CPU a
    freshly allocated tensor costs more (page faults) than the arithmetic.
    """

    @staticmethod
    def forward(ctx, x, gamma_rr, gamma_ri, gamma_ii, beta, eps: float):
        c, n = x.shape[1] // 2, x.numel() // x.shape[1]
        shape = (1, c) + (1,) * (x.dim() - 2)
        xr, xi = real_imag(x)
        mean = _channel_sum(x) / n                                # [mr | mi]
        mr, mi = real_imag(mean, 0)
        # Second moments of the centred data (E[x^2] - E[x]^2 would cancel catastrophically for |mean| >> std).
        # y holds x - mean as scratch until the final write.
        y = torch.empty_like(x)
        yr, yi = real_imag(y)
        torch.sub(x, mean.view(1, 2 * c, *shape[2:]), out=y)
        vrr, vii = real_imag(_centred_dot(y, y, torch.zeros_like(mean))[0] / n, 0)
        vri = _channel_sum(yr.mul_(yi)) / n
        gamma = None if gamma_rr is None else (gamma_rr, gamma_ri, gamma_ii)
        sqrt_terms = _inverse_sqrt_2x2(vrr + eps, vri, vii + eps)
        w = w00, w01, w10, w11 = _times_gamma(*sqrt_terms[:3], gamma)
        br, bi = real_imag(beta, 0) if beta is not None else (torch.zeros_like(vrr),) * 2
        # W (x - mean) + beta = W x + (beta - W mean): the centring folds into the shift.
        _affine_2x2_into(y, xr, xi, w, br - (w00 * mr + w01 * mi), bi - (w10 * mr + w11 * mi), shape)
        ctx.save_for_backward(x, mean, vrr, vri, vii, *w, *sqrt_terms, *(gamma or ()))
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, vrr, vri, vii)
        return y, mean, vrr, vri, vii

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, *_stats_grads):
        x, mean, vrr, vri, vii, w00, w01, w10, w11, *sqrt_terms = ctx.saved_tensors
        sqrt_terms, gamma = sqrt_terms[:6], (tuple(sqrt_terms[6:]) or None)
        c, n = x.shape[1] // 2, x.numel() // x.shape[1]
        shape = (1, c) + (1,) * (x.dim() - 2)
        xr, xi = real_imag(x)
        mr, mi = real_imag(mean, 0)
        gr, gi = real_imag(g)
        dx = torch.empty_like(x)
        dxr, dxi = real_imag(dx)

        # Pass 1, reductions. y = W xc + beta (xc = x - mean): dL/dbeta = sum g, dL/dW = sum g xc^T (2x2 per channel).
        g_xc, g_sum = _centred_dot(g, x, mean)                    # [sum gr xcr | sum gi xci], [sum gr | sum gi]
        torch.sub(xi, mi.view(shape), out=dxr).mul_(gr)           # dx is scratch until pass 2
        torch.sub(xr, mr.view(shape), out=dxi).mul_(gi)
        g_xc_swapped = _channel_sum(dx)                           # [sum gr xci | sum gi xcr]
        dw = (g_xc[:c], g_xc_swapped[:c], g_xc_swapped[c:], g_xc[c:])

        # C-sized: dL/dV and dL/dgamma through the closed-form whitening.
        (d_vrr, d_vri, d_vii), d_gamma = _whitening_matrix_backward(vrr, vri, vii, ctx.eps, sqrt_terms, gamma, dw)

        # Pass 2: dx = W^T (g - mean g) + K (x - mean). W^T g is the direct path, mean g comes from the centring,
        # K = dL/dV dV/dxc with V = mean(xc xc^T): [[2 dVrr, dVri], [dVri, 2 dVii]] / n. Means fold into the shift.
        g_mean_r, g_mean_i = real_imag(g_sum / n, 0)
        k00, k01, k11 = 2 * d_vrr / n, d_vri / n, 2 * d_vii / n
        shift_r = -(w00 * g_mean_r + w10 * g_mean_i) - (k00 * mr + k01 * mi)
        shift_i = -(w01 * g_mean_r + w11 * g_mean_i) - (k01 * mr + k11 * mi)
        _affine_2x2_into(dx, gr, gi, (w00, w10, w01, w11), shift_r, shift_i, shape)  # W^T g + shift
        dxr.addcmul_(xr, k00.view(shape)).addcmul_(xi, k01.view(shape))
        dxi.addcmul_(xr, k01.view(shape)).addcmul_(xi, k11.view(shape))

        d_gamma = d_gamma or (None, None, None)
        return dx, *d_gamma, (g_sum if gamma is not None else None), None


def _plain_complex_batch_norm(x, dims, shape, eps, gamma, beta):
    """Training-mode complex BN as plain differentiable ops: for torch.compile / torch.export, which fuse and
    differentiate it themselves. Same formulas as _ComplexBatchNormFn; returns (y, mean, vrr, vri, vii)."""
    mean = x.mean(dims)
    xc = x - mean.view(1, 2 * shape[1], *shape[2:])
    cr, ci = real_imag(xc)
    vrr, vii = real_imag((xc * xc).mean(dims), 0)
    vri = (cr * ci).mean(dims)
    w00, w01, w10, w11 = (t.view(shape) for t in whitening_matrix(vrr, vri, vii, eps, gamma))
    br, bi = (t.view(shape) for t in real_imag(beta, 0)) if beta is not None else (0.0, 0.0)
    return torch.cat([w00 * cr + w01 * ci + br, w10 * cr + w11 * ci + bi], dim=1), mean, vrr, vri, vii


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


# Opt-in: training-mode BN through torch.compile (inductor fuses the plain formulation into a few reduction and
# elementwise kernels) while the rest of the model stays eager. Off by default: the first call per input shape
# compiles for seconds (C++ / Triton toolchain needed); on CPU BN alone got ~2x faster but the training step did
# not; compiling the whole model gets the same fusion. benchmarks/complex_speed.py --compiled-bn measures it.
_COMPILED_BN = os.environ.get("DCN_COMPILED_BN", "0") not in ("", "0")
_compiled_fn = None


def set_compiled_batch_norm(enabled: bool) -> None:
    """Route training-mode complex BN through torch.compile (True) or the eager custom autograd function (False)."""
    global _COMPILED_BN
    _COMPILED_BN = bool(enabled)


def _compiled_batch_norm(*args):
    global _compiled_fn
    if _compiled_fn is None:
        _compiled_fn = torch.compile(_plain_complex_batch_norm)
    return _compiled_fn(*args)


class _ComplexBatchNorm(nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, layout: str = "auto", device=None,
                 dtype=None) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.layout = check_layout(layout)
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

    def _gamma(self):
        return (self.gamma_rr, self.gamma_ri, self.gamma_ii) if self.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_real_imag(self._forward, x, self, self.num_features)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype
        if out_dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics in half precision are too coarse, as in torch's own BN under autocast
        dims = [0, *range(2, x.dim())]
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        beta = self.beta if self.affine else None
        use_batch = self.training or not self.track_running_stats
        if use_batch and _tracing():  # inside torch.compile / export: plain ops, fused by the compiler
            y, mean, vrr, vri, vii = _plain_complex_batch_norm(x, dims, shape, self.eps, self._gamma(), beta)
        elif use_batch and _COMPILED_BN:
            y, mean, vrr, vri, vii = _compiled_batch_norm(x, dims, shape, self.eps, self._gamma(), beta)
        elif use_batch:
            gamma = self._gamma() or (None, None, None)
            y, mean, vrr, vri, vii = _ComplexBatchNormFn.apply(x, *gamma, beta, self.eps)
        else:
            y = self._eval_forward(x, shape)
        if use_batch and self.training and self.track_running_stats:
            self._update_running(mean, vrr, vri, vii, x.numel() // x.shape[1])
        return y.to(out_dtype)

    def _eval_forward(self, x: torch.Tensor, shape) -> torch.Tensor:
        """y = W x + (beta - W E[x]) with the running statistics: one pass over x."""
        w = self._affine(*self.running_covar)[0]
        mr, mi = real_imag(self.running_mean, 0)
        br, bi = real_imag(self.beta, 0) if self.affine else (0.0, 0.0)
        w00, w01, w10, w11 = w
        shift_r, shift_i = br - (w00 * mr + w01 * mi), bi - (w10 * mr + w11 * mi)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        xr, xi = real_imag(x)
        if needs_grad or _tracing():  # out= is not differentiable; plain ops also keep export graphs functional
            w00, w01, w10, w11 = (t.view(shape) for t in w)
            return torch.cat([w00 * xr + w01 * xi + shift_r.view(shape), w10 * xr + w11 * xi + shift_i.view(shape)], 1)
        return _affine_2x2_into(torch.empty_like(x), xr, xi, w, shift_r, shift_i, shape)

    def _affine(self, vrr, vri, vii):
        """Per-channel M = gamma V^{-1/2} (entries m00, m01, m10, m11) and the shift beta = (br, bi)."""
        m = whitening_matrix(vrr, vri, vii, self.eps, self._gamma())
        if not self.affine:
            return m, (torch.zeros_like(m[0]), torch.zeros_like(m[0]))
        return m, real_imag(self.beta, 0)

    @torch.no_grad()
    def _update_running(self, mean, vrr, vri, vii, n: int) -> None:
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbias = n / max(n - 1, 1)
        self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
        self.running_covar.lerp_(torch.stack([vrr, vri, vii]).detach().to(self.running_covar.dtype) * unbias, m)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}"
                f"{layout_repr(self.layout)} (complex channels)")


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


_BN_ARGS = """

    ``num_features`` counts complex channels; ``eps``, ``momentum`` (None: cumulative average),
    ``track_running_stats`` as in ``nn.BatchNorm*d``; ``affine`` learns the symmetric 2x2 scale
    (gamma_rr, gamma_ri, gamma_ii; 1/sqrt(2), 0, 1/sqrt(2) at init) and the complex shift beta.
    ``layout``: "auto" takes either form, "complex" / "real_imag" only that one.
    """


class ComplexBatchNorm1d(_ComplexBatchNorm):
    __doc__ = """Complex BN (paper 3.4) for (N, C) / (N, C, L) complex or (N, 2C) / (N, 2C, L) real [real | imag]
    inputs; the output has the input's form and dtype.""" + _BN_ARGS


class ComplexBatchNorm2d(_ComplexBatchNorm):
    __doc__ = """Complex BN (paper 3.4) for (N, C, H, W) complex or (N, 2C, H, W) real [real | imag] inputs; the
    output has the input's form and dtype.""" + _BN_ARGS
