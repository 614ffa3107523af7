"""Complex initialisation: Var(W) = 2 sigma^2 with the paper's sigma; 'independent' filters are semi-unitary."""
from __future__ import annotations

import math

import pytest
import torch

from models.complex import ComplexConv2d, ComplexLinear, complex_init_
from models.complex.init import complex_fans, semi_unitary


@pytest.mark.parametrize("criterion", ["glorot", "he"])
@pytest.mark.parametrize("shape", [(128, 64, 3, 3), (96, 160, 5), (300, 400)])
def test_rayleigh_variance_and_uniform_phase(criterion, shape):
    g = torch.Generator().manual_seed(1)
    w = complex_init_(torch.empty(shape, dtype=torch.complex128), criterion, "rayleigh", generator=g)
    fan_in, fan_out = complex_fans(shape)
    want = 2 / (fan_in + fan_out) if criterion == "glorot" else 2 / fan_in
    n = w.numel()
    # |W|^2 of a Rayleigh(sigma) modulus is exponential: its mean estimate has relative std 1/sqrt(n).
    got = (w.abs() ** 2).mean().item()
    assert abs(got / want - 1) < 5 / math.sqrt(n)
    assert abs(w.mean().abs().item()) < 5 * math.sqrt(want / n)  # zero mean: uniform phase
    phase = torch.angle(w)
    assert abs(torch.cos(phase).mean()) < 5 / math.sqrt(n) and abs(torch.sin(phase).mean()) < 5 / math.sqrt(n)
    # The Keras bug (variance passed as sigma) would give (2/(fan_in+fan_out))^2 * 2: far off.
    assert got > 0.5 * want


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (8, 64, 1), (40, 30)])
@pytest.mark.parametrize("criterion", ["glorot", "he"])
def test_independent_is_semi_unitary_with_the_same_variance(shape, criterion):
    w = complex_init_(torch.empty(shape, dtype=torch.complex128), criterion, "independent",
                      generator=torch.Generator().manual_seed(2))
    fan_in, fan_out = complex_fans(shape)
    want = 2 / (fan_in + fan_out) if criterion == "glorot" else 2 / fan_in
    torch.testing.assert_close((w.abs() ** 2).mean().item(), want, rtol=1e-9, atol=0)
    m = w.reshape(shape[0], -1)
    rows, cols = m.shape
    gram = m @ m.conj().T if rows <= cols else m.conj().T @ m
    scale = gram.diagonal().real.mean()
    torch.testing.assert_close(gram / scale, torch.eye(min(rows, cols), dtype=gram.dtype), atol=1e-10, rtol=0)


def test_semi_unitary_helper():
    u = semi_unitary(5, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(u @ u.conj().T, torch.eye(5, dtype=u.dtype), atol=1e-12, rtol=0)


def test_layers_use_complex_init_by_default():
    conv = ComplexConv2d(64, 64, 3)
    fan_in, fan_out = complex_fans(conv.complex_weight().shape)
    got = (conv.complex_weight().abs() ** 2).mean().item()
    assert abs(got * (fan_in + fan_out) / 2 - 1) < 0.02
    lin = ComplexLinear(200, 100, criterion="he")
    got = (lin.complex_weight().abs() ** 2).mean().item()
    assert abs(got * 200 / 2 - 1) < 0.03


def test_bad_arguments():
    with pytest.raises(TypeError):
        complex_init_(torch.empty(3, 3))
    with pytest.raises(ValueError, match="criterion"):
        complex_init_(torch.empty(3, 3, dtype=torch.complex64), "xavier")
    with pytest.raises(ValueError, match="mode"):
        complex_init_(torch.empty(3, 3, dtype=torch.complex64), "he", "gaussian")
