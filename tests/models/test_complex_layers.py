"""Every complex layer against a reference computed with torch's native complex128 ops."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.complex import (
    Cardioid,
    ComplexConv1d,
    ComplexConv2d,
    ComplexConv3d,
    ComplexConvTranspose1d,
    ComplexConvTranspose2d,
    ComplexConvTranspose3d,
    ComplexDropout,
    ComplexLinear,
    ComplexMaxPool1d,
    ComplexMaxPool2d,
    CReLU,
    ModReLU,
    ModTanh,
    SplitSigmoid,
    SplitTanh,
    ZReLU,
    complex_activation,
    from_complex,
    to_complex,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _float64_and_seed():
    """References in double precision; the default dtype is process-wide, so restore it for other tests."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


def _grads_of(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def test_layout_round_trip_and_dims():
    z = torch.randn(2, 3, 5, dtype=torch.complex128)
    x = from_complex(z)
    assert x.shape == (2, 6, 5)
    assert torch.equal(x[:, :3], z.real) and torch.equal(x[:, 3:], z.imag)
    assert torch.equal(to_complex(x), z)
    assert torch.equal(to_complex(from_complex(z, dim=-1), dim=-1), z)
    with pytest.raises(ValueError, match="even"):
        to_complex(torch.randn(2, 3))
    with pytest.raises(TypeError):
        from_complex(torch.randn(2, 4))


CONV_CASES = [
    (ComplexConv2d, F.conv2d, dict(kernel_size=3, padding=1)),
    (ComplexConv2d, F.conv2d, dict(kernel_size=3, stride=2, padding=1, bias=False)),
    (ComplexConv2d, F.conv2d, dict(kernel_size=(3, 1), dilation=2, padding=(2, 0))),
    (ComplexConv2d, F.conv2d, dict(kernel_size=3, groups=2, padding="same")),
    (ComplexConv1d, F.conv1d, dict(kernel_size=5, stride=2, padding=2)),
    (ComplexConv1d, F.conv1d, dict(kernel_size=3, dilation=3, groups=2)),
    (ComplexConv3d, F.conv3d, dict(kernel_size=(2, 3, 1), stride=(1, 2, 1), padding=1)),
    (ComplexConvTranspose1d, F.conv_transpose1d, dict(kernel_size=4, stride=2, padding=1)),
    (ComplexConvTranspose1d, F.conv_transpose1d, dict(kernel_size=3, stride=3, dilation=2, groups=2, bias=False)),
    (ComplexConvTranspose2d, F.conv_transpose2d, dict(kernel_size=3, stride=2, padding=1, output_padding=1)),
    (ComplexConvTranspose2d, F.conv_transpose2d, dict(kernel_size=(3, 2), stride=(2, 1), groups=2)),
    (ComplexConvTranspose3d, F.conv_transpose3d, dict(kernel_size=2, stride=2)),
]
SPATIAL = {1: (23,), 2: (9, 7), 3: (4, 5, 3)}


@pytest.mark.parametrize("layer_cls,native_conv,kwargs", CONV_CASES)
def test_conv_matches_native_complex_forward_and_backward(layer_cls, native_conv, kwargs):
    cin, cout = 4, 6
    layer = layer_cls(cin, cout, **kwargs)
    x = torch.randn(3, 2 * cin, *SPATIAL[layer._dims], requires_grad=True)
    y = layer(x)
    ref_args = {k: v for k, v in kwargs.items() if k not in ("kernel_size", "bias")}
    ref = native_conv(to_complex(x), layer.complex_weight(), layer.complex_bias(), **ref_args)
    torch.testing.assert_close(to_complex(y), ref, rtol=1e-10, atol=1e-10)

    # Gradients: the same real loss through our layer and through the native complex reference.
    g = torch.randn_like(y)
    params = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    ours = _grads_of((y * g).sum(), params)
    theirs = _grads_of((from_complex(ref) * g).sum(), params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_conv_gradcheck():
    layer = ComplexConv2d(2, 3, 3, padding=1, groups=1)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    grouped = ComplexConv1d(2, 4, 3, groups=2)
    assert torch.autograd.gradcheck(grouped, (torch.randn(2, 4, 8, requires_grad=True),))


def test_transposed_conv_is_the_adjoint_of_the_conv_and_takes_output_size():
    """<convT(x; W), y> = <x, conv(y; conj W)> (complex inner products): the transposed convolution is the adjoint of
    the convolution with the conjugate filters, as nn.ConvTranspose2d is of nn.Conv2d for real filters."""
    up = ComplexConvTranspose2d(3, 5, 3, stride=2, padding=1, bias=False)
    x = torch.randn(2, 3, 4, 6, dtype=torch.complex128)
    y_shape = up(x).shape
    y = torch.randn(y_shape, dtype=torch.complex128)
    down = F.conv2d(y, up.complex_weight().conj(), stride=2, padding=1)
    torch.testing.assert_close(torch.vdot(up(x).flatten(), y.flatten()), torch.vdot(x.flatten(), down.flatten()))
    # output_size resolves the ambiguity of a strided transposed conv (a U-Net decoder matching its encoder)
    assert up(x, output_size=(8, 12)).shape[-2:] == (8, 12) and y_shape[-2:] == (7, 11)
    ref = F.conv_transpose2d(x, up.complex_weight(), stride=2, padding=1, output_padding=1)
    torch.testing.assert_close(up(x, output_size=[2, 5, 8, 12]), ref)
    with pytest.raises(ValueError, match="output_size"):
        up(x, output_size=(9, 12))
    with pytest.raises(ValueError, match="output_padding"):
        ComplexConvTranspose1d(1, 1, 3, stride=2, output_padding=2)
    with pytest.raises(TypeError, match="integer padding"):
        ComplexConvTranspose2d(1, 1, 3, padding="same")


def test_new_convs_gradcheck():
    for layer, shape in [(ComplexConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1), (1, 4, 3, 3)),
                         (ComplexConvTranspose1d(2, 4, 2, stride=2, groups=2), (2, 4, 3)),
                         (ComplexConv3d(1, 2, 2), (1, 2, 3, 3, 2))]:
        assert torch.autograd.gradcheck(layer, (torch.randn(shape, requires_grad=True),))


def test_conv_channels_last_and_float32_match():
    layer = ComplexConv2d(8, 8, 3, padding=1).float()
    x = torch.randn(4, 16, 10, 10, dtype=torch.float32)
    y = layer(x)
    y_cl = layer.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, y_cl, rtol=1e-4, atol=1e-4)


def test_linear_matches_native_complex():
    layer = ComplexLinear(5, 3)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 7, 10, requires_grad=True)
    y = layer(x)
    z = to_complex(x, dim=-1)
    ref = z @ layer.complex_weight().T + layer.complex_bias()
    torch.testing.assert_close(to_complex(y, dim=-1), ref)
    g = torch.randn_like(y)
    params = [x, layer.weight, layer.bias]
    for a, b in zip(_grads_of((y * g).sum(), params), _grads_of((from_complex(ref, dim=-1) * g).sum(), params)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(layer, (torch.randn(2, 10, requires_grad=True),))


def test_crelu_matches_native():
    z = torch.randn(3, 4, 5, dtype=torch.complex128)
    ref = torch.complex(F.relu(z.real), F.relu(z.imag))
    torch.testing.assert_close(to_complex(CReLU()(from_complex(z))), ref)


def test_modrelu_matches_native_and_is_safe_at_zero():
    act = ModReLU(4, eps=1e-30)
    with torch.no_grad():
        act.bias.copy_(torch.tensor([-0.5, 0.0, 0.3, -2.0]))
    z = torch.randn(6, 4, 3, dtype=torch.complex128)
    b = act.bias.view(1, 4, 1)
    ref = F.relu(z.abs() + b) * z / z.abs()
    torch.testing.assert_close(to_complex(act(from_complex(z))), ref)
    # At z = 0 the output and every gradient are finite (and the output is 0).
    safe = ModReLU(2)
    x = torch.zeros(1, 4, requires_grad=True)
    y = safe(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()
    assert torch.autograd.gradcheck(ModReLU(2, bias_init=-0.1), (torch.randn(3, 4, requires_grad=True),))


def test_zrelu_matches_native_phase_rule():
    z = torch.randn(5, 3, 4, dtype=torch.complex128)
    phase = torch.angle(z)
    ref = torch.where((phase >= 0) & (phase <= math.pi / 2), z, torch.zeros_like(z))
    torch.testing.assert_close(to_complex(ZReLU()(from_complex(z))), ref)


def test_complex_max_pool_keeps_largest_modulus_value():
    z = torch.randn(2, 3, 6, 4, dtype=torch.complex128)
    out = to_complex(ComplexMaxPool2d(2)(from_complex(z)))
    windows = z.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, 3, 2, 4)
    idx = windows.abs().argmax(-1, keepdim=True)
    torch.testing.assert_close(out, windows.gather(-1, idx).squeeze(-1))
    z1 = torch.randn(2, 3, 9, dtype=torch.complex128)
    out1 = to_complex(ComplexMaxPool1d(3)(from_complex(z1)))
    w1 = z1.unfold(2, 3, 3)
    torch.testing.assert_close(out1, w1.gather(-1, w1.abs().argmax(-1, keepdim=True)).squeeze(-1))


def test_complex_dropout_drops_whole_complex_values():
    drop = ComplexDropout(0.5)
    x = torch.ones(8, 20, 16)
    y = drop(x)
    assert torch.equal(y[:, :10] == 0, y[:, 10:] == 0)
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0}
    assert 0.3 < (y == 0).double().mean() < 0.7
    assert torch.equal(drop.eval()(x), x)


def test_complex_global_max_pool_keeps_largest_modulus_value():
    from models.complex import complex_global_max_pool
    z = torch.randn(3, 4, 5, 6, dtype=torch.complex128)
    flat = z.flatten(2)
    ref = flat.gather(2, flat.abs().argmax(2, keepdim=True)).squeeze(2)
    torch.testing.assert_close(to_complex(complex_global_max_pool(from_complex(z))), ref)


# The bounded / phase-based activations against their native complex128 definitions (eps tiny: the exact formulas).
NEW_ACTIVATIONS = [
    (SplitSigmoid(), lambda z: torch.complex(torch.sigmoid(z.real), torch.sigmoid(z.imag))),
    (SplitTanh(), lambda z: torch.complex(torch.tanh(z.real), torch.tanh(z.imag))),
    (Cardioid(eps=1e-30), lambda z: 0.5 * (1 + torch.cos(torch.angle(z))) * z),
    (ModTanh(eps=1e-30), lambda z: torch.polar(torch.tanh(z.abs()), torch.angle(z))),
]


@pytest.mark.parametrize("act,ref", NEW_ACTIVATIONS, ids=lambda v: type(v).__name__)
def test_new_activations_match_native_definition_and_gradcheck(act, ref):
    z = torch.randn(4, 3, 5, dtype=torch.complex128)
    torch.testing.assert_close(act(z), ref(z))
    torch.testing.assert_close(to_complex(act(from_complex(z))), ref(z))
    # gradients: the same real loss through our layer and through the native definition
    zz = z.clone().requires_grad_()
    g = torch.randn_like(z)
    ours = torch.autograd.grad((act(zz) * g.conj()).real.sum(), zz)[0]
    theirs = torch.autograd.grad((ref(zz) * g.conj()).real.sum(), zz)[0]
    torch.testing.assert_close(ours, theirs)
    assert torch.autograd.gradcheck(type(act)(), (torch.randn(2, 6, 3, requires_grad=True),))


def test_modulus_activations_are_finite_at_zero_and_bounded():
    for act in (Cardioid(), ModTanh(), ModReLU(2)):
        x = torch.zeros(1, 4, requires_grad=True)
        y = act(x)
        y.sum().backward()
        assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()
    big = torch.randn(100, 3, dtype=torch.complex128) * 100
    assert ModTanh()(big).abs().max() <= 1
    assert SplitSigmoid()(big).real.min() >= 0 and SplitTanh()(big).imag.abs().max() <= 1
    # cardioid: identity on the positive real axis, zero on the negative one
    line = torch.tensor([[-2.0, 3.0]], dtype=torch.complex128)
    torch.testing.assert_close(Cardioid(eps=0.0)(line), torch.tensor([[0.0, 3.0]], dtype=torch.complex128))


def test_complex_activation_builds_every_name():
    from models.complex import ACTIVATIONS
    z = torch.randn(2, 3, 4, dtype=torch.complex128)
    for name in ACTIVATIONS:
        assert complex_activation(name, 3)(z).shape == z.shape
    with pytest.raises(ValueError, match="activation must be one of"):
        complex_activation("sigmoid", 3)
