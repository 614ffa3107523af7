"""Complex layer norm: per-example whitening against an eigendecomposition reference in native complex128."""
from __future__ import annotations

import math

import torch

from models.complex import ComplexLayerNorm, from_complex


def _correlated(n: int = 4, shape=(3, 16), seed: int = 0) -> torch.Tensor:
    """Complex examples with their own mean, scale and real/imag correlation (as a complex tensor)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, 1, generator=g, dtype=torch.float64) * 3
    re = torch.randn(n, *shape, generator=g, dtype=torch.float64) * scale
    im = 0.7 * re + 0.2 * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return torch.complex(re + 2, im - 1)


def _reference(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalised over all dims but the first, gamma = I/sqrt(2), beta = 0: centre each example, multiply its
    points (re, im) by (V + eps I)^{-1/2} from an eigendecomposition."""
    flat = z.reshape(z.shape[0], -1)
    centred = flat - flat.mean(1, keepdim=True)
    pts = torch.stack([centred.real, centred.imag], 1)                       # (n, 2, m)
    cov = pts @ pts.transpose(1, 2) / pts.shape[-1] + eps * torch.eye(2, dtype=pts.dtype)
    evals, evecs = torch.linalg.eigh(cov)
    white = evecs @ torch.diag_embed(evals.rsqrt()) @ evecs.transpose(1, 2) @ pts / math.sqrt(2)
    return torch.complex(white[:, 0], white[:, 1]).reshape(z.shape)


def test_matches_eigendecomposition_reference_and_whitens_each_example():
    z = _correlated()
    ln = ComplexLayerNorm((3, 16), eps=1e-9, dtype=torch.float64)
    y = ln(z)
    torch.testing.assert_close(y, _reference(z, 1e-9), rtol=1e-9, atol=1e-9)
    flat = y.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4, dtype=y.dtype), atol=1e-9, rtol=0)
    for part in (flat.real, flat.imag):                    # covariance I/2 per example
        torch.testing.assert_close(part.var(1, correction=0), torch.full((4,), 0.5, dtype=torch.float64))
    torch.testing.assert_close((flat.real * flat.imag).mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-7, rtol=0)


def test_real_layout_doubles_the_first_normalised_dim_and_per_element_affine():
    z = _correlated(n=2, shape=(3, 5))
    ln = ComplexLayerNorm((3, 5), dtype=torch.float64)
    with torch.no_grad():
        for p in (ln.gamma_rr, ln.gamma_ri, ln.gamma_ii, ln.beta):
            p.normal_()
    y = ln(z)
    torch.testing.assert_close(ln(from_complex(z, dim=-2)), from_complex(y, dim=-2))
    white = _reference(z, ln.eps) * math.sqrt(2)
    gamma_r = ln.gamma_rr * white.real + ln.gamma_ri * white.imag
    gamma_i = ln.gamma_ri * white.real + ln.gamma_ii * white.imag
    ref = torch.complex(gamma_r + ln.beta[:3], gamma_i + ln.beta[3:])
    torch.testing.assert_close(y, ref)


def test_last_dim_form_like_complex_linear_and_no_batch_dependence():
    z = torch.randn(2, 7, 6, dtype=torch.complex128)   # (N, T, C) with normalized_shape C: per (n, t)
    ln = ComplexLayerNorm(6, dtype=torch.float64)
    y = ln(z)
    torch.testing.assert_close(y[1:], ln(z[1:]))       # each example on its own: no batch statistics
    torch.testing.assert_close(y, ln.eval()(z))        # and the same in eval mode
    torch.testing.assert_close(y.reshape(14, 6), _reference(z.reshape(14, 6), ln.eps))


def test_gradcheck_and_no_affine():
    ln = ComplexLayerNorm((2, 3), dtype=torch.float64)
    with torch.no_grad():
        ln.gamma_ri.fill_(0.3)
        ln.beta.normal_()
    assert torch.autograd.gradcheck(ln, (torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True),))
    assert torch.autograd.gradcheck(ln, (_correlated(n=2, shape=(2, 3)).requires_grad_(),))
    bare = ComplexLayerNorm(4, elementwise_affine=False)
    assert list(bare.parameters()) == [] and set(ComplexLayerNorm(4, bias=False).state_dict()) == {
        "gamma_rr", "gamma_ri", "gamma_ii"}
    y = bare(torch.randn(8, 4, dtype=torch.complex64))
    assert y.dtype == torch.complex64


def test_bfloat16_statistics_in_float32():
    ln = ComplexLayerNorm(16)
    x = torch.randn(4, 32) * 5 + 3
    y = ln(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ln(x), atol=0.05, rtol=0.02)
