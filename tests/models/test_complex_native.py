"""Every complex layer on native complex tensors: same result as on the [real | imag] layout, dtype kept, gradients
(gradcheck on complex128), and clear errors for inputs that fit neither form or the wrong one."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import models.complex as mc
from models.complex import (
    Cardioid,
    ComplexAvgPool1d,
    ComplexAvgPool2d,
    ComplexAvgPool3d,
    ComplexBatchNorm1d,
    ComplexBatchNorm2d,
    ComplexConv1d,
    ComplexConv2d,
    ComplexConv3d,
    ComplexConvTranspose1d,
    ComplexConvTranspose2d,
    ComplexConvTranspose3d,
    ComplexDropout,
    ComplexLayerNorm,
    ComplexLinear,
    ComplexMaxPool1d,
    ComplexMaxPool2d,
    ComplexMaxPool3d,
    CReLU,
    ModReLU,
    ModTanh,
    SplitSigmoid,
    SplitTanh,
    ZReLU,
    complex_global_max_pool,
    from_complex,
    to_complex,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# name: (factory, complex input shape, axis of the [real | imag] halves in the real layout)
LAYERS = {
    "conv1d": (lambda: ComplexConv1d(3, 4, 3, padding=1), (2, 3, 9), 1),
    "conv2d": (lambda: ComplexConv2d(3, 4, 3), (2, 3, 6, 6), 1),
    "conv2d_grouped": (lambda: ComplexConv2d(4, 6, 3, groups=2, padding="same"), (2, 4, 5, 5), 1),
    "conv3d": (lambda: ComplexConv3d(2, 3, 2), (2, 2, 3, 4, 3), 1),
    "conv_t1d": (lambda: ComplexConvTranspose1d(3, 4, 3, stride=2), (2, 3, 6), 1),
    "conv_t2d": (lambda: ComplexConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 4), 1),
    "conv_t2d_grouped": (lambda: ComplexConvTranspose2d(4, 2, 2, stride=2, groups=2), (2, 4, 3, 3), 1),
    "conv_t3d": (lambda: ComplexConvTranspose3d(2, 2, 2, stride=2), (1, 2, 2, 3, 2), 1),
    "linear": (lambda: ComplexLinear(5, 3), (2, 4, 5), -1),
    "bn1d": (lambda: ComplexBatchNorm1d(3), (8, 3, 5), 1),
    "bn2d": (lambda: ComplexBatchNorm2d(3), (6, 3, 3, 3), 1),
    "bn2d_eval": (lambda: ComplexBatchNorm2d(3).eval(), (6, 3, 3, 3), 1),
    "layernorm": (lambda: ComplexLayerNorm((3, 4)), (2, 5, 3, 4), -2),
    "crelu": (CReLU, (2, 3, 5), 1),
    "modrelu": (lambda: ModReLU(3, bias_init=-0.3), (2, 3, 5), 1),
    "zrelu": (ZReLU, (2, 3, 5), 1),
    "cardioid": (Cardioid, (2, 3, 5), 1),
    "modtanh": (ModTanh, (2, 3, 5), 1),
    "split_sigmoid": (SplitSigmoid, (2, 3, 5), 1),
    "split_tanh": (SplitTanh, (2, 3, 5), 1),
    "maxpool1d": (lambda: ComplexMaxPool1d(2), (2, 3, 8), 1),
    "maxpool2d": (lambda: ComplexMaxPool2d(2, stride=1, padding=1), (2, 3, 4, 4), 1),
    "maxpool3d": (lambda: ComplexMaxPool3d(2), (1, 2, 4, 4, 2), 1),
    "avgpool1d": (lambda: ComplexAvgPool1d(3, stride=2), (2, 3, 9), 1),
    "avgpool2d": (lambda: ComplexAvgPool2d(2), (2, 3, 4, 4), 1),
    "avgpool3d": (lambda: ComplexAvgPool3d(2), (1, 2, 2, 4, 2), 1),
    "dropout": (lambda: ComplexDropout(0.4), (4, 3, 6), 1),
    "dropout_last_dim": (lambda: ComplexDropout(0.4, dim=-1), (4, 6, 3), -1),
}


def _build(name: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    layer = LAYERS[name][0]().to(dtype)
    if isinstance(layer, ComplexBatchNorm2d) and not layer.training:  # non-trivial running statistics
        with torch.no_grad():
            layer.running_mean.normal_()
            layer.running_covar.copy_(torch.tensor([[2.0], [0.5], [1.0]]).expand_as(layer.running_covar))
    return layer


def _input(name: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(LAYERS[name][1], dtype=dtype, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_complex_input_equals_real_layout_and_keeps_dtype(name):
    dim = LAYERS[name][2]
    z = _input(name, torch.complex128)
    layer = _build(name, torch.float64)
    torch.manual_seed(2)  # dropout draws the same mask on both paths
    y = layer(z)
    torch.manual_seed(2)
    y_layout = layer(from_complex(z, dim))
    assert y.dtype == torch.complex128 and y_layout.dtype == torch.float64
    torch.testing.assert_close(y, to_complex(y_layout, dim), rtol=1e-12, atol=1e-12)

    z64 = z.to(torch.complex64)
    y64 = _build(name, torch.float32)(z64)
    assert y64.dtype == torch.complex64 and y64.shape == y.shape


@pytest.mark.parametrize("name", sorted(n for n in LAYERS if not n.startswith("dropout")))
def test_gradcheck_on_complex128_input(name):
    layer = _build(name, torch.float64)
    z = _input(name, torch.complex128).requires_grad_()
    # fast_mode: the Jacobian checked along random directions, not column by column (seconds instead of minutes)
    assert torch.autograd.gradcheck(layer, (z,), fast_mode=True)


def test_issue_examples_now_work():
    z = torch.randn(2, 3, 8, 8, dtype=torch.complex64)
    y = ComplexConv2d(3, 4, 3)(z)
    assert y.dtype == torch.complex64 and y.shape == (2, 4, 6, 6)
    assert torch.equal(CReLU()(z), torch.complex(z.real.clamp(min=0), z.imag.clamp(min=0)))
    g = complex_global_max_pool(z)
    assert g.dtype == torch.complex64 and g.shape == (2, 3)
    torch.testing.assert_close(g, to_complex(complex_global_max_pool(from_complex(z))))


def test_complex_input_under_autocast_keeps_complex64():
    model = nn.Sequential(ComplexConv2d(2, 4, 3, padding=1), ComplexBatchNorm2d(4), CReLU(),
                          ComplexLayerNorm((4, 6, 6)), ComplexConvTranspose2d(4, 2, 2, stride=2))
    z = torch.randn(2, 2, 6, 6, dtype=torch.complex64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(z)
    assert y.dtype == torch.complex64
    torch.testing.assert_close(y, model(z), atol=0.1, rtol=0.05)


# ---------------------------------------------------------------------------------------------------------------
# Ambiguous or wrong inputs


@pytest.mark.parametrize("layer,x", [
    (ComplexConv2d(6, 4, 3), torch.randn(2, 6, 8, 8)),           # 6 real channels: not 6 complex channels
    (ComplexConvTranspose1d(6, 4, 3), torch.randn(2, 6, 8)),
    (ComplexLinear(6, 2), torch.randn(2, 6)),
    (ComplexBatchNorm2d(6), torch.randn(2, 6, 4, 4)),
    (ComplexLayerNorm(6), torch.randn(2, 6)),
    (ModReLU(6), torch.randn(2, 6, 4)),
])
def test_real_tensor_with_complex_channel_count_is_an_error(layer, x):
    with pytest.raises(ValueError, match=r"expected 6 complex channels.*real \[real \| imag\] tensor with 12"):
        layer(x)
    layer(from_complex(torch.complex(x, torch.zeros_like(x)), dim=-1 if isinstance(layer, (ComplexLinear,
          ComplexLayerNorm)) else 1))  # the same values in a correct form go through


def test_complex_tensor_with_wrong_channel_count_is_an_error():
    with pytest.raises(ValueError, match="expected 3 complex channels.*got a complex tensor"):
        ComplexConv2d(3, 4, 3)(torch.randn(2, 6, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="trailing dims"):
        ComplexLayerNorm((3, 4))(torch.randn(2, 3, 5, dtype=torch.complex64))


@pytest.mark.parametrize("layer", [ComplexConv2d(3, 4, 3, layout="complex"), CReLU(layout="complex"),
                                   ComplexMaxPool2d(2, layout="complex"), ComplexBatchNorm2d(3, layout="complex"),
                                   ComplexDropout(layout="complex").eval()])
def test_complex_only_layer_refuses_real_tensor(layer):
    with pytest.raises(TypeError, match="layout='complex' and takes complex tensors"):
        layer(torch.randn(2, 6, 8, 8))
    assert layer(torch.randn(2, 3, 8, 8, dtype=torch.complex64)).dtype == torch.complex64


@pytest.mark.parametrize("layer", [ComplexConv2d(3, 4, 3, layout="real_imag"), ZReLU(layout="real_imag"),
                                   ComplexAvgPool2d(2, layout="real_imag")])
def test_layout_only_layer_refuses_complex_tensor(layer):
    with pytest.raises(TypeError, match="layout='real_imag'"):
        layer(torch.randn(2, 3, 8, 8, dtype=torch.complex64))
    assert layer(torch.randn(2, 6, 8, 8)).dtype == torch.float32


def test_odd_real_layout_integer_input_and_bad_layout_argument():
    with pytest.raises(ValueError, match="even size"):
        ComplexMaxPool2d(2)(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="even size"):
        Cardioid()(torch.randn(2, 5))
    with pytest.raises(TypeError, match="complex or floating-point"):
        ComplexConv1d(1, 1, 1)(torch.ones(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="layout must be one of"):
        ComplexConv2d(1, 1, 1, layout="complex64")


# ---------------------------------------------------------------------------------------------------------------
# Docstrings and reprs


def _public_layer_classes() -> list[type]:
    return [obj for name in mc.__all__ if inspect.isclass(obj := getattr(mc, name)) and issubclass(obj, nn.Module)]


def test_every_layer_has_a_docstring():
    missing = [cls.__name__ for cls in _public_layer_classes() if not (cls.__doc__ or "").strip()]
    assert not missing


@pytest.mark.parametrize("layer,text", [
    (ComplexMaxPool2d(3, stride=2, padding=1), "kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False"),
    (ComplexMaxPool1d(2), "kernel_size=2, stride=2"),
    (ComplexAvgPool2d(2, layout="complex"),
     "kernel_size=2, stride=2, padding=0, ceil_mode=False, count_include_pad=True, layout='complex'"),
    (ComplexConvTranspose2d(3, 4, 3, stride=2, output_padding=1),
     "3, 4, kernel_size=(3, 3), stride=(2, 2), padding=(0, 0), output_padding=(1, 1)"),
    (ComplexConv3d(2, 3, 1, bias=False), "2, 3, kernel_size=(1, 1, 1)"),
    (ComplexLayerNorm((4, 5), eps=1e-3), "(4, 5), eps=0.001, elementwise_affine=True, bias=True"),
    (ModReLU(4, eps=1e-6), "4, eps=1e-06, dim=1"),
    (ModTanh(), "eps=1e-08, dim=1"),
    (ComplexDropout(0.2), "p=0.2, dim=1"),
    (CReLU(layout="real_imag"), "inplace=False, layout='real_imag'"),
    (SplitTanh(layout="complex"), "layout='complex'"),
    (ComplexBatchNorm1d(5, layout="complex"),
     "5, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, layout='complex'"),
])
def test_repr_shows_arguments(layer, text):
    assert text in repr(layer)
