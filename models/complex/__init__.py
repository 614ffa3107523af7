"""Deep complex network building blocks (Trabelsi et al., ICLR 2018), on a [real | imag] channel layout."""
from .activations import ACTIVATIONS, CReLU, ModReLU, ZReLU, complex_activation
from .batchnorm import ComplexBatchNorm1d, ComplexBatchNorm2d, fold_complex_bn
from .conv import ComplexConv1d, ComplexConv2d, ComplexLinear, block_weight
from .init import complex_init_
from .layout import from_complex, real_imag, to_complex
from .pooling import ComplexDropout, ComplexMaxPool1d, ComplexMaxPool2d, complex_global_max_pool

__all__ = [
    "ACTIVATIONS", "CReLU", "ModReLU", "ZReLU", "complex_activation",
    "ComplexBatchNorm1d", "ComplexBatchNorm2d", "fold_complex_bn",
    "ComplexConv1d", "ComplexConv2d", "ComplexLinear", "block_weight",
    "complex_init_",
    "from_complex", "real_imag", "to_complex",
    "ComplexDropout", "ComplexMaxPool1d", "ComplexMaxPool2d", "complex_global_max_pool",
]
