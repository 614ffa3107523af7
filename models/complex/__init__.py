"""Deep complex network building blocks (Trabelsi et al., ICLR 2018).

Every layer takes a native complex tensor (complex64 / complex128, same dtype out) or the real [real | imag]
channel layout the models use internally (models/complex/layout.py).
"""
from .activations import (
    ACTIVATIONS,
    Cardioid,
    CReLU,
    ModReLU,
    ModTanh,
    SplitSigmoid,
    SplitTanh,
    ZReLU,
    complex_activation,
)
from .batchnorm import ComplexBatchNorm1d, ComplexBatchNorm2d, fold_complex_bn
from .conv import (
    ComplexConv1d,
    ComplexConv2d,
    ComplexConv3d,
    ComplexConvTranspose1d,
    ComplexConvTranspose2d,
    ComplexConvTranspose3d,
    ComplexLinear,
    block_weight,
    transposed_block_weight,
)
from .init import complex_init_
from .layernorm import ComplexLayerNorm
from .layout import LAYOUTS, apply_real_imag, check_input, from_complex, map_parts, real_imag, to_complex
from .pooling import (
    ComplexAvgPool1d,
    ComplexAvgPool2d,
    ComplexAvgPool3d,
    ComplexDropout,
    ComplexMaxPool1d,
    ComplexMaxPool2d,
    ComplexMaxPool3d,
    complex_global_max_pool,
)

__all__ = [
    "ACTIVATIONS", "Cardioid", "CReLU", "ModReLU", "ModTanh", "SplitSigmoid", "SplitTanh", "ZReLU",
    "complex_activation",
    "ComplexBatchNorm1d", "ComplexBatchNorm2d", "fold_complex_bn",
    "ComplexConv1d", "ComplexConv2d", "ComplexConv3d", "ComplexConvTranspose1d", "ComplexConvTranspose2d",
    "ComplexConvTranspose3d", "ComplexLinear", "block_weight", "transposed_block_weight",
    "complex_init_",
    "ComplexLayerNorm",
    "LAYOUTS", "apply_real_imag", "check_input", "from_complex", "map_parts", "real_imag", "to_complex",
    "ComplexAvgPool1d", "ComplexAvgPool2d", "ComplexAvgPool3d", "ComplexDropout", "ComplexMaxPool1d",
    "ComplexMaxPool2d", "ComplexMaxPool3d", "complex_global_max_pool",
]
