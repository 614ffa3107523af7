"""Complex activations: the paper's CReLU, modReLU and zReLU (section 3.3) and the bounded ones of the literature.

Every activation takes a native complex tensor (same dtype out) or the real [real | imag] layout (``dim`` is
the axis of the two halves; ignored by the split activations, which treat every real number alike).

- split (a real function on the real and on the imaginary part): ``CReLU`` (paper), ``SplitSigmoid`` and
  ``SplitTanh`` (complexPyTorch's complex_sigmoid / complex_tanh; the classic split activations of Nitta and
  Leung & Haykin). Cheap, bounded (sigmoid, tanh), but not phase-preserving.
- phase-preserving, acting on the modulus: ``ModReLU`` (paper, Arjovsky et al. 2016) and ``ModTanh``,
  tanh(|z|) z / |z| (Hirose's amplitude-phase activation; the bounded complex ratio mask of DCCRN speech
  enhancement). A "modulus sigmoid" sigmoid(|z|) z / |z| is left out on purpose: it is 1/2 in modulus at z = 0
  where the phase is undefined, so it is discontinuous there.
- phase-dependent gates: ``ZReLU`` (paper, Guberman 2016) and ``Cardioid`` (Virtue et al. 2017, MRI
  fingerprinting), 0.5 (1 + cos arg z) z: keeps z on the positive real axis, zeroes it on the negative, ReLU on
  the real line.

Moduli are smoothed as sqrt(|z|^2 + eps) so outputs and gradients are finite at z = 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import check_input, check_layout, layout_repr, map_parts


class _SplitActivation(nn.Module):
    """f(Re z) + i f(Im z) for a real function f: on the [real | imag] layout simply f of the real tensor."""

    _fn = None  # set by subclasses

    def __init__(self, layout: str = "auto") -> None:
        super().__init__()
        self.layout = check_layout(layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = type(self)._fn
        if check_input(x, self, dim=None):
            return torch.complex(f(x.real), f(x.imag))
        return f(x)

    def extra_repr(self) -> str:
        return layout_repr(self.layout)[2:]


class CReLU(_SplitActivation):
    """ReLU on the real and the imaginary part separately (paper 3.3); on the real layout it is plain ReLU.

    ``inplace`` (real layout only) as in ``nn.ReLU``; ``layout``: "auto" | "complex" | "real_imag"."""

    def __init__(self, inplace: bool = False, layout: str = "auto") -> None:
        super().__init__(layout)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if check_input(x, self, dim=None):
            return torch.complex(F.relu(x.real), F.relu(x.imag))
        return F.relu(x, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"inplace={self.inplace}{layout_repr(self.layout)}"


class SplitSigmoid(_SplitActivation):
    """sigmoid(Re z) + i sigmoid(Im z) (complexPyTorch's complex_sigmoid): values in the unit square (0, 1)^2."""
    _fn = staticmethod(torch.sigmoid)


class SplitTanh(_SplitActivation):
    """tanh(Re z) + i tanh(Im z) (complexPyTorch's complex_tanh): values in the square (-1, 1)^2."""
    _fn = staticmethod(torch.tanh)


class _PartwiseActivation(nn.Module):
    """An activation written as a rule on (real part, imaginary part) of each value, for both input forms."""

    channels: int | None = None  # complex channels along dim the rule needs (ModReLU's bias), None: any

    def __init__(self, dim: int = 1, layout: str = "auto") -> None:
        super().__init__()
        self.dim, self.layout = dim, check_layout(layout)

    def parts(self, re: torch.Tensor, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_parts(self.parts, x, self, self.channels, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}{layout_repr(self.layout)}"


class _ModulusActivation(_PartwiseActivation):
    """A rule that needs |z|, smoothed as sqrt(|z|^2 + eps) so that it and its gradient are finite at z = 0."""

    def __init__(self, eps: float = 1e-8, dim: int = 1, layout: str = "auto") -> None:
        super().__init__(dim, layout)
        self.eps = eps

    def modulus(self, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(re * re + im * im + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, {super().extra_repr()}"


class ModReLU(_ModulusActivation):
    """ReLU(|z| + b) z / |z| with a learned bias b per complex channel (paper 3.3, Arjovsky et al. 2016).

    ``num_features``: complex channels along ``dim``; ``bias_init``: initial b (negative values give a dead zone
    around 0); |z| is smoothed as sqrt(|z|^2 + ``eps``) so the output and its gradient are finite (zero) at z = 0.
    """

    def __init__(self, num_features: int, bias_init: float = 0.0, eps: float = 1e-8, dim: int = 1,
                 layout: str = "auto") -> None:
        super().__init__(eps, dim, layout)
        self.num_features = self.channels = num_features
        self.bias = nn.Parameter(torch.full((num_features,), float(bias_init)))

    def parts(self, re, im):
        modulus = self.modulus(re, im)
        shape = [1] * re.dim()
        shape[self.dim] = self.num_features
        scale = F.relu(modulus + self.bias.view(shape)) / modulus
        return re * scale, im * scale

    def extra_repr(self) -> str:
        return f"{self.num_features}, {super().extra_repr()}"


class ZReLU(_PartwiseActivation):
    """z where its phase lies in [0, pi/2] (both parts non-negative), else 0 (paper 3.3, Guberman 2016)."""

    def parts(self, re, im):
        keep = ((re >= 0) & (im >= 0)).to(re.dtype)
        return re * keep, im * keep


class Cardioid(_ModulusActivation):
    """0.5 (1 + cos(arg z)) z (Virtue et al. 2017): phase kept, modulus scaled by a cardioid of the phase.

    cos(arg z) = Re z / |z| with |z| smoothed by ``eps`` (at z = 0 the output is 0, the gradient 1/2)."""

    def parts(self, re, im):
        scale = 0.5 * (1 + re / self.modulus(re, im))
        return re * scale, im * scale


class ModTanh(_ModulusActivation):
    """tanh(|z|) z / |z|: phase kept, modulus squashed into [0, 1) (Hirose's amplitude-phase activation; the
    bounded complex mask of DCCRN). |z| smoothed by ``eps`` (at z = 0 the output is 0, the gradient 1)."""

    def parts(self, re, im):
        modulus = self.modulus(re, im)
        scale = torch.tanh(modulus) / modulus
        return re * scale, im * scale


ACTIVATIONS = ("crelu", "modrelu", "zrelu", "cardioid", "modtanh", "split_sigmoid", "split_tanh")


def complex_activation(name: str, num_features: int, dim: int = 1) -> nn.Module:
    """A complex activation by name: ``crelu`` | ``modrelu`` | ``zrelu`` (the paper's, section 3.3) | ``cardioid`` |
    ``modtanh`` | ``split_sigmoid`` | ``split_tanh``.

    ``num_features`` (complex channels) sizes modReLU's learned bias; ``dim`` is the [real | imag] axis.
    """
    if name == "crelu":
        return CReLU()
    if name == "modrelu":
        return ModReLU(num_features, dim=dim)
    if name == "zrelu":
        return ZReLU(dim=dim)
    if name in ("cardioid", "modtanh"):
        return (Cardioid if name == "cardioid" else ModTanh)(dim=dim)
    if name in ("split_sigmoid", "split_tanh"):
        return SplitSigmoid() if name == "split_sigmoid" else SplitTanh()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
