"""Complex BN: whitening statistics, a reference built from an eigendecomposition, running stats, state_dict."""
from __future__ import annotations

import math

import pytest
import torch

from models.complex import ComplexBatchNorm1d, ComplexBatchNorm2d, from_complex, to_complex


def _correlated_input(n=512, c=3, hw=(4, 4), dtype=torch.float64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    re = torch.randn(n, c, *hw, generator=g, dtype=dtype) * torch.tensor([2.0, 0.5, 1.0], dtype=dtype).view(1, c, 1, 1) + 3
    im = 0.8 * re + 0.3 * torch.randn(n, c, *hw, generator=g, dtype=dtype) - 1.5
    return torch.cat([re, im], 1)


def _stats(y: torch.Tensor):
    c = y.shape[1] // 2
    yr, yi = y[:, :c].transpose(0, 1).reshape(c, -1), y[:, c:].transpose(0, 1).reshape(c, -1)
    mr, mi = yr.mean(1), yi.mean(1)
    cr, ci = yr - mr[:, None], yi - mi[:, None]
    return mr, mi, (cr * cr).mean(1), (cr * ci).mean(1), (ci * ci).mean(1)


def _reference_whiten(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Independent reference: V^{-1/2} via eigh of the per-channel 2x2 covariance, in native complex."""
    c = x.shape[1] // 2
    z = to_complex(x).transpose(0, 1).reshape(c, -1)
    centred = z - z.mean(1, keepdim=True)
    pts = torch.stack([centred.real, centred.imag], 1)  # (c, 2, n)
    cov = pts @ pts.transpose(1, 2) / pts.shape[-1] + eps * torch.eye(2, dtype=x.dtype)
    evals, evecs = torch.linalg.eigh(cov)
    inv_sqrt = evecs @ torch.diag_embed(evals.rsqrt()) @ evecs.transpose(1, 2)
    white = (inv_sqrt @ pts) / math.sqrt(2)  # gamma = I/sqrt(2) at init
    out = torch.complex(white[:, 0], white[:, 1]).reshape(c, x.shape[0], *x.shape[2:]).transpose(0, 1)
    return from_complex(out)


def test_training_mode_whitens_to_half_identity():
    x = _correlated_input()
    bn = ComplexBatchNorm2d(3, eps=1e-12, dtype=torch.float64)
    mr, mi, vrr, vri, vii = _stats(bn(x))
    zeros, half = torch.zeros(3, dtype=x.dtype), torch.full((3,), 0.5, dtype=x.dtype)
    for got, want in [(mr, zeros), (mi, zeros), (vrr, half), (vri, zeros), (vii, half)]:
        torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


def test_forward_matches_eigendecomposition_reference():
    x = _correlated_input(n=64)
    bn = ComplexBatchNorm2d(3, eps=1e-5, dtype=torch.float64)
    torch.testing.assert_close(bn(x), _reference_whiten(x, 1e-5), rtol=1e-9, atol=1e-9)


def test_learned_scale_and_shift():
    x = _correlated_input(n=64)
    bn = ComplexBatchNorm2d(3, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        bn.gamma_rr.uniform_(0.5, 2)
        bn.gamma_ii.uniform_(0.5, 2)
        bn.gamma_ri.uniform_(-0.3, 0.3)
        bn.beta.normal_()
    white = _reference_whiten(x, 1e-5) * math.sqrt(2)
    c = 3
    wr, wi = white[:, :c], white[:, c:]
    v = lambda p: p.view(1, c, 1, 1)
    yr = v(bn.gamma_rr) * wr + v(bn.gamma_ri) * wi + v(bn.beta[:c])
    yi = v(bn.gamma_ri) * wr + v(bn.gamma_ii) * wi + v(bn.beta[c:])
    torch.testing.assert_close(bn(x), torch.cat([yr, yi], 1), rtol=1e-9, atol=1e-9)


def test_gradcheck_through_whitening():
    bn = ComplexBatchNorm1d(2, eps=1e-3, dtype=torch.float64)
    with torch.no_grad():
        bn.gamma_ri.fill_(0.2)
        bn.beta.normal_()
    x = torch.randn(6, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bn, (x,))
    flat = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)  # (N, 2C) input
    assert torch.autograd.gradcheck(bn, (flat,))


def test_eval_mode_uses_running_statistics():
    x = _correlated_input(n=256)
    bn = ComplexBatchNorm2d(3, momentum=None, eps=1e-12, dtype=torch.float64)  # cumulative average: one batch = its stats
    bn(x)
    n = x.numel() // x.shape[1]
    _, _, vrr, vri, vii = _stats(x)
    torch.testing.assert_close(bn.running_covar, torch.stack([vrr, vri, vii]) * n / (n - 1))
    bn.eval()
    other = _correlated_input(n=16, seed=1)
    y = bn(other)
    # Eval output uses the stored statistics: whitening the other batch with its own statistics differs.
    fresh = ComplexBatchNorm2d(3, eps=1e-12, dtype=torch.float64)
    assert not torch.allclose(y, fresh(other))
    # Applying eval-mode BN to the training batch gives (nearly) whitened output (unbiased n/(n-1) factor).
    mr, mi, vrr2, vri2, vii2 = _stats(bn(x))
    torch.testing.assert_close(vrr2, torch.full((3,), 0.5 * (n - 1) / n, dtype=x.dtype), atol=1e-6, rtol=0)
    torch.testing.assert_close(mr, torch.zeros(3, dtype=x.dtype), atol=1e-9, rtol=0)


def test_momentum_update_and_no_tracking():
    bn = ComplexBatchNorm2d(3, momentum=0.25, dtype=torch.float64)
    x = _correlated_input(n=32)
    bn(x)
    mr, mi, *_ = _stats(x)
    torch.testing.assert_close(bn.running_mean, 0.25 * torch.cat([mr, mi]))
    assert bn.num_batches_tracked.item() == 1
    free = ComplexBatchNorm2d(3, track_running_stats=False, dtype=torch.float64).eval()
    mr2, *_ = _stats(free(x))  # uses batch statistics even in eval mode
    torch.testing.assert_close(mr2, torch.zeros(3, dtype=x.dtype), atol=1e-9, rtol=0)


def test_state_dict_round_trip():
    bn = ComplexBatchNorm2d(3, dtype=torch.float64)
    for _ in range(3):
        bn(_correlated_input(n=32, seed=_))
    with torch.no_grad():
        bn.gamma_ri.fill_(0.1)
    clone = ComplexBatchNorm2d(3, dtype=torch.float64)
    clone.load_state_dict(bn.state_dict())
    x = _correlated_input(n=8, seed=9)
    torch.testing.assert_close(clone.eval()(x), bn.eval()(x))
    assert set(bn.state_dict()) == {"gamma_rr", "gamma_ri", "gamma_ii", "beta", "running_mean", "running_covar",
                                    "num_batches_tracked"}


def test_bfloat16_input_keeps_dtype_and_accuracy():
    bn = ComplexBatchNorm2d(3)
    x = _correlated_input(n=64, dtype=torch.float32)
    y = bn(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), bn(x), atol=0.05, rtol=0.02)


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="expected"):
        ComplexBatchNorm2d(3)(torch.randn(2, 5, 4, 4))


@pytest.mark.parametrize("dims", [1, 2])
def test_fold_into_convolution_matches_conv_then_eval_bn(dims):
    from models.complex import ComplexConv1d, ComplexConv2d, fold_complex_bn
    import torch.nn.functional as F
    torch.manual_seed(0)
    conv = (ComplexConv2d if dims == 2 else ComplexConv1d)(3, 4, 3, padding=1, dtype=torch.float64)
    bn = (ComplexBatchNorm2d if dims == 2 else ComplexBatchNorm1d)(4, dtype=torch.float64)
    x = torch.randn(8, 6, *(5,) * dims, dtype=torch.float64)
    bn(conv(x) * 3 + 1)  # non-trivial running statistics
    with torch.no_grad():
        bn.gamma_ri.fill_(0.2)
        bn.beta.normal_()
        conv.bias.normal_()
    bn.eval()
    w, b = fold_complex_bn(conv, bn)
    folded = (F.conv2d if dims == 2 else F.conv1d)(x, w, b, padding=1)
    torch.testing.assert_close(folded, bn(conv(x)), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# The fast implementation (custom autograd function, one-pass eval map) against the op-by-op reference
# (models/complex/batchnorm_reference.py, the implementation it replaced): same outputs, gradients and running
# statistics, in training and evaluation mode.

from models.complex.batchnorm_reference import use_reference_bn


def _pair(cls, c, dtype, seed=0, **kwargs):
    """(new, reference) BN modules with identical non-trivial parameters."""
    torch.manual_seed(seed)
    new = cls(c, dtype=dtype, **kwargs)
    if new.affine:
        with torch.no_grad():
            new.gamma_rr.uniform_(0.5, 1.5)
            new.gamma_ii.uniform_(0.5, 1.5)
            new.gamma_ri.uniform_(-0.4, 0.4)
            new.beta.normal_()
    old = cls(c, dtype=dtype, **kwargs)
    old.load_state_dict(new.state_dict())
    return new, use_reference_bn(old)


def _inputs(shape, dtype, seed=1):
    """Correlated real and imaginary parts, means far from zero (centring matters), requires_grad."""
    g = torch.Generator().manual_seed(seed)
    n, c2 = shape[0], shape[1]
    re = torch.randn(n, c2 // 2, *shape[2:], generator=g, dtype=dtype) * 1.5 + 4
    im = 0.6 * re + 0.5 * torch.randn(re.shape, generator=g, dtype=dtype) - 2
    return torch.cat([re, im], 1).requires_grad_()


_TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}
# Parameter gradients are sums over the whole batch of terms of size ~1-30 that largely cancel (a gamma gradient of
# 0.12 from 64 terms of ~10): fp32 summation order alone (1 vs 2 threads) moves them by ~2e-5, so the absolute
# tolerance follows the size of the terms, not of the result. A wrong formula is off by O(1).
_GRAD_TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-4}, torch.float64: _TOL[torch.float64]}
_CASES = [  # (module, input shape, options)
    (ComplexBatchNorm2d, (16, 8, 5, 6), {}),
    (ComplexBatchNorm2d, (32, 6, 4, 4), {"affine": False}),
    (ComplexBatchNorm2d, (8, 8, 3, 3), {"momentum": None}),
    (ComplexBatchNorm1d, (16, 6, 7), {}),
    (ComplexBatchNorm1d, (64, 6), {}),
    (ComplexBatchNorm2d, (16, 8, 5, 6), {"track_running_stats": False}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls,shape,opts", _CASES)
def test_training_mode_matches_reference(cls, shape, opts, dtype):
    new, old = _pair(cls, shape[1] // 2, dtype, **opts)
    for step in range(3):  # several batches: running statistics accumulate the same way
        x_new, x_old = _inputs(shape, dtype, seed=step), _inputs(shape, dtype, seed=step)
        grad = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(10 + step))
        y_new, y_old = new(x_new), old(x_old)
        torch.testing.assert_close(y_new, y_old, **_TOL[dtype])
        new.zero_grad()
        old.zero_grad()
        y_new.backward(grad)
        y_old.backward(grad)
        torch.testing.assert_close(x_new.grad, x_old.grad, **_TOL[dtype])
        for (name, p_new), p_old in zip(new.named_parameters(), old.parameters()):
            torch.testing.assert_close(p_new.grad, p_old.grad, **_GRAD_TOL[dtype], msg=name)
    for (name, b_new), b_old in zip(new.named_buffers(), old.buffers()):
        torch.testing.assert_close(b_new, b_old, **_TOL[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad_enabled", [False, True])
def test_eval_mode_matches_reference(dtype, grad_enabled):
    new, old = _pair(ComplexBatchNorm2d, 4, dtype)
    for seed in range(3):
        new(_inputs((16, 8, 5, 5), dtype, seed))
        old(_inputs((16, 8, 5, 5), dtype, seed))
    new.eval(), old.eval()
    x_new, x_old = _inputs((4, 8, 6, 6), dtype, seed=7), _inputs((4, 8, 6, 6), dtype, seed=7)
    with torch.set_grad_enabled(grad_enabled):
        y_new, y_old = new(x_new), old(x_old)
    torch.testing.assert_close(y_new, y_old, **_TOL[dtype])
    if grad_enabled:  # eval-mode BN with gradients (fine-tuning with frozen statistics)
        y_new.square().sum().backward()
        y_old.square().sum().backward()
        torch.testing.assert_close(x_new.grad, x_old.grad, **_TOL[dtype])
        torch.testing.assert_close(new.gamma_ri.grad, old.gamma_ri.grad, **_GRAD_TOL[dtype])


def test_gradient_layouts_and_channels_last():
    """Expanded (sum().backward()), sliced and channels_last gradients/inputs give the reference's gradients."""
    new, old = _pair(ComplexBatchNorm2d, 4, torch.float64)
    for make_grad in (lambda y: y.sum(), lambda y: (y[:, :, 1:, :] * 2).sum(), lambda y: (y * y).sum()):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x_new = _inputs((6, 8, 4, 5), torch.float64).detach().to(memory_format=fmt).requires_grad_()
            x_old = x_new.detach().clone().requires_grad_()
            make_grad(new(x_new)).backward()
            make_grad(old(x_old)).backward()
            torch.testing.assert_close(x_new.grad, x_old.grad, rtol=1e-10, atol=1e-10)


def test_hand_written_whitening_backward_matches_autograd():
    from models.complex.batchnorm import whitening_matrix, whitening_matrix_backward
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(9, 2, 40, generator=g, dtype=torch.float64)
    pts[:, 1] = 0.9 * pts[:, 0] + 0.3 * pts[:, 1]  # strongly correlated channels too
    cov = pts @ pts.transpose(1, 2) / 40
    for affine in (True, False):
        v = [cov[:, 0, 0].clone().requires_grad_(), cov[:, 0, 1].clone().requires_grad_(),
             cov[:, 1, 1].clone().requires_grad_()]
        gamma = [torch.randn(9, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)] if affine else []
        dw = [torch.randn(9, generator=g, dtype=torch.float64) for _ in range(4)]
        want = torch.autograd.grad(whitening_matrix(*v, 1e-4, gamma or None), v + gamma, dw)
        got_v, got_gamma = whitening_matrix_backward(*(t.detach() for t in v), 1e-4,
                                                     [t.detach() for t in gamma] or None, dw)
        for a, b in zip(want, [*got_v, *(got_gamma or ())]):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_compile_path_formulation_matches_eager():
    """The plain formulation used under torch.compile/export (fused by the compiler) equals the eager function."""
    from models.complex import batchnorm as cbn
    new, _ = _pair(ComplexBatchNorm2d, 4, torch.float64)
    x = _inputs((8, 8, 3, 4), torch.float64)
    gamma = (new.gamma_rr, new.gamma_ri, new.gamma_ii)
    plain = cbn._plain_complex_batch_norm(x, [0, 2, 3], (1, 4, 1, 1), new.eps, gamma, new.beta)
    fast = cbn._ComplexBatchNormFn.apply(x, *gamma, new.beta, new.eps)
    for a, b in zip(plain, fast):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.autograd.gradcheck(lambda t: cbn._plain_complex_batch_norm(t, [0, 2, 3], (1, 4, 1, 1), new.eps, gamma,
                                                                      new.beta)[0], (x[:3, :, :2, :2].detach()
                                                                                     .requires_grad_(),))


def test_shipped_cifar_checkpoint_loads_and_matches_reference_bn():
    """models/checkpoints/cifar10_complex.pt: weights_only load, same state_dict keys, same logits as the old BN."""
    from pathlib import Path

    from models.checkpoint import build_model
    path = Path(__file__).resolve().parents[2] / "models" / "checkpoints" / "cifar10_complex.pt"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    models = []
    for reference in (False, True):
        model = build_model(blob["arch"], blob["config"])
        model.load_state_dict(blob["state_dict"])  # strict: the BN state_dict keys did not change
        models.append(use_reference_bn(model.eval()) if reference else model.eval())
    assert set(models[0].state_dict()) == set(blob["state_dict"])
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        new, old = models[0](x), models[1](x)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)
    assert torch.equal(new.argmax(1), old.argmax(1))


def test_float32_precision_with_large_means():
    """Statistics from centred data: with |mean| = 100 std the fp32 output and input gradient stay within 1e-4 of
    float64 (the old implementation: 3e-5 and 7e-6; uncentred moments would be off by ~1e-3)."""
    g = torch.Generator().manual_seed(0)
    re = torch.randn(64, 8, 8, 8, generator=g, dtype=torch.float64) + 100
    im = 0.6 * (re - 100) + 0.5 * torch.randn(re.shape, generator=g, dtype=torch.float64) - 50
    x64 = torch.cat([re, im], 1)
    grad = torch.randn(x64.shape, generator=g, dtype=torch.float64)
    out = {}
    for dtype in (torch.float32, torch.float64):
        x = x64.to(dtype).requires_grad_()
        y = ComplexBatchNorm2d(8, dtype=dtype)(x)
        y.backward(grad.to(dtype))
        out[dtype] = (y.double(), x.grad.double())
    for a, b in zip(out[torch.float32], out[torch.float64]):
        assert (a - b).abs().max() < 1e-4


def test_centred_dot_is_the_sum_of_products():
    from models.complex.batchnorm import _centred_dot
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, 3, 4, generator=g, dtype=torch.float64) + 3
    a = torch.randn(x.shape, generator=g, dtype=torch.float64)
    m = x.mean((0, 2, 3))
    for aa, xx, mm in ((a, x, m), (a[:, :4], x[:, 4:], m[4:])):  # whole tensors and real/imag halves (strided)
        dot, total = _centred_dot(aa, xx, mm)
        torch.testing.assert_close(dot, (aa * (xx - mm.view(1, -1, 1, 1))).sum((0, 2, 3)))
        torch.testing.assert_close(total, aa.sum((0, 2, 3)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_reference_fp32_and_bf16_autocast(channels_last):
    """On the GPU, as training runs it (channels_last, bf16 autocast): same outputs and gradients as the reference."""
    new, old = _pair(ComplexBatchNorm2d, 16, torch.float32)
    new, old = new.cuda(), old.cuda()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for autocast in (False, True):
        x = _inputs((32, 32, 8, 8), torch.float32).detach().cuda().to(memory_format=fmt)
        x_new, x_old = x.clone().requires_grad_(), x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            inp_new, inp_old = (x_new.bfloat16(), x_old.bfloat16()) if autocast else (x_new, x_old)
            y_new, y_old = new(inp_new), old(inp_old)
        torch.testing.assert_close(y_new.float(), y_old.float(), rtol=1e-2 if autocast else 1e-4,
                                   atol=1e-2 if autocast else 1e-5)
        y_new.float().square().sum().backward()
        y_old.float().square().sum().backward()
        torch.testing.assert_close(x_new.grad, x_old.grad, rtol=2e-2 if autocast else 1e-4,
                                   atol=2e-2 if autocast else 1e-4)
    for b_new, b_old in zip(new.buffers(), old.buffers()):
        torch.testing.assert_close(b_new, b_old, rtol=1e-3, atol=1e-4)
