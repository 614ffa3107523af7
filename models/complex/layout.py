"""The complex representation of the paper (section 3.1), and the native complex dtype at the layer boundary.

A feature map with C complex channels is stored as a real tensor with 2C channels along one
dimension: the first C are the real parts, the last C the imaginary parts. Keeping everything
real lets every layer be an ordinary PyTorch op (cuDNN, autocast, channels_last, torch.compile,
ONNX).

Every layer also takes a native complex tensor (complex64 / complex128) with C channels and gives
back the same dtype: ``apply_real_imag`` runs the layer's one real implementation on [real | imag]
and converts at the boundary; ``map_parts`` runs a per-value rule on the real and imaginary parts
of either form. ``check_input`` decides which form a tensor is and refuses what is ambiguous: a real
tensor whose size is not twice the layer's complex channels (a real 6-channel tensor is not read
as 3 complex channels by a layer built for 6), a real tensor for a layer built with
``layout="complex"``, a complex one for ``layout="real_imag"``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

LAYOUTS = ("auto", "complex", "real_imag")


def real_imag(x: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the real and imaginary halves of ``x`` along ``dim`` (no copy)."""
    if x.shape[dim] % 2:
        raise ValueError(f"complex layout needs an even size along dim {dim}, got {x.shape[dim]}")
    re, im = x.chunk(2, dim=dim)
    return re, im


def to_complex(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """[real | imag] real tensor -> native complex tensor with half the size along ``dim``."""
    re, im = real_imag(x, dim)
    return torch.complex(re, im)


def from_complex(z: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Native complex tensor -> [real | imag] real tensor with twice the size along ``dim``."""
    if not z.is_complex():
        raise TypeError(f"from_complex expects a complex tensor, got {z.dtype}")
    return torch.cat([z.real, z.imag], dim=dim)


def check_layout(layout: str) -> str:
    """Validate a layer's ``layout`` argument: "auto" (either form), "complex" or "real_imag" (only that form)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def layout_repr(layout: str) -> str:
    """The ``layout`` part of a layer's extra_repr: empty for the default "auto"."""
    return "" if layout == "auto" else f", layout={layout!r}"


def check_input(x: torch.Tensor, owner: object, channels: int | None = None, dim: int | None = 1) -> bool:
    """True if ``x`` is a native complex tensor, False if it is the real [real | imag] layout.

    ``owner`` is the layer (its ``layout`` attribute and name go into the checks and messages) or a name;
    ``channels`` the complex channels expected along ``dim`` (None: any; a real tensor still needs an even size
    there); ``dim`` None: no size check, for rules applied to every real number alike (CReLU). Raises TypeError
    for a form the layer was told not to take or a non-float real tensor, ValueError for a size that fits neither.
    """
    layout = getattr(owner, "layout", "auto")
    native = x.is_complex()
    if (native and layout == "real_imag") or (not native and layout == "complex"):
        wanted = "complex tensors" if layout == "complex" else "real [real | imag] tensors"
        raise TypeError(f"{_name(owner)} was built with layout={layout!r} and takes {wanted}, got {x.dtype}")
    if not native and not x.is_floating_point():
        raise TypeError(f"{_name(owner)} takes a complex or floating-point [real | imag] tensor, got {x.dtype}")
    if dim is None:  # a per-value rule on the real tensor: any layout, nothing to check
        return native
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{_name(owner)}: expected a channel dim {dim}, got a {x.dim()}-d tensor {tuple(x.shape)}")
    size = x.shape[dim]
    if channels is None:
        if not native and size % 2:
            raise ValueError(f"{_name(owner)}: a real input is the [real | imag] layout and needs an even size along "
                             f"dim {dim}, got {tuple(x.shape)}; pass complex values as a complex tensor")
    elif size != (channels if native else 2 * channels):
        raise ValueError(f"{_name(owner)}: expected {channels} complex channels along dim {dim}, i.e. a complex "
                         f"tensor with {channels} or a real [real | imag] tensor with {2 * channels}; got a "
                         f"{'complex' if native else 'real'} tensor of shape {tuple(x.shape)}"
                         + ("" if native else " (complex values go in as a complex dtype or via from_complex)"))
    return native


def _name(owner: object) -> str:
    return owner if isinstance(owner, str) else type(owner).__name__


def apply_real_imag(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, owner: object,
                    channels: int | None = None, dim: int = 1) -> torch.Tensor:
    """``fn`` (a real computation on the [real | imag] layout along ``dim``) applied to ``x`` in either form.

    A real input goes to ``fn`` untouched (the fast path the models use); a complex input is converted to the
    layout and back, and keeps its dtype (also under autocast, where ``fn`` may return bf16/fp16).
    """
    if check_input(x, owner, channels, dim):
        return to_complex(fn(from_complex(x, dim)).to(x.dtype.to_real()), dim)
    return fn(x)


def map_parts(fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
              owner: object, channels: int | None = None, dim: int = 1) -> torch.Tensor:
    """``fn(re, im) -> (re, im)``, a per-value rule, applied to the real and imaginary parts of ``x`` in either form
    (no conversion: a complex tensor's parts are views, so are the halves of the layout)."""
    if check_input(x, owner, channels, dim):
        return torch.complex(*fn(x.real, x.imag))
    return torch.cat(fn(*real_imag(x, dim)), dim=dim)
