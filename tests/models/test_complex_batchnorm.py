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
