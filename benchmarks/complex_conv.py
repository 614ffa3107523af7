"""Complex convolution speed: forward + backward of ComplexConv{1,2}d against three baselines, same process.

    python -m benchmarks.complex_conv [--quick] [--repeats 5] [--threads N]

Baselines at each shape (C complex channels):
  (a) real nn.Conv 2C -> 2C on the same real input: FLOP parity, the target (ratio <= 1.05);
  (b) torch's native complex64 nn.Conv C -> C;
  (c) four separate real convs C -> C (A x_r, B x_i, B x_r, A x_i), the textbook implementation.
Timings are medians over interleaved repeats, so load from other processes hits every variant alike.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.complex import ComplexConv1d, ComplexConv2d


def _fwd_bwd(fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        out = fn()
        (out.real.sum() if out.is_complex() else out.sum()).backward()
        for p in params:
            p.grad = None
    return step


def variants(dims: int, batch: int, c: int, spatial: tuple[int, ...]) -> dict[str, Callable[[], None]]:
    conv_cls, real_cls, conv_f = (ComplexConv2d, nn.Conv2d, F.conv2d) if dims == 2 else (ComplexConv1d, nn.Conv1d, F.conv1d)
    k, pad = 3, 1
    x = torch.randn(batch, 2 * c, *spatial, requires_grad=True)
    ours = conv_cls(c, c, k, padding=pad)
    real = real_cls(2 * c, 2 * c, k, padding=pad)
    native = real_cls(c, c, k, padding=pad, dtype=torch.complex64)
    z = torch.randn(batch, c, *spatial, dtype=torch.complex64, requires_grad=True)
    a = torch.randn(c, c, *(k,) * dims, requires_grad=True)
    b = torch.randn(c, c, *(k,) * dims, requires_grad=True)

    def four_real() -> torch.Tensor:
        xr, xi = x[:, :c], x[:, c:]
        return torch.cat([conv_f(xr, a, padding=pad) - conv_f(xi, b, padding=pad),
                          conv_f(xr, b, padding=pad) + conv_f(xi, a, padding=pad)], 1)

    return {
        "ComplexConv": _fwd_bwd(lambda: ours(x), [x, *ours.parameters()]),
        "(a) real 2C->2C": _fwd_bwd(lambda: real(x), [x, *real.parameters()]),
        "(b) native complex64": _fwd_bwd(lambda: native(z), [z, *native.parameters()]),
        "(c) 4 real convs": _fwd_bwd(four_real, [x, a, b]),
    }


def time_variants(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up (allocator, oneDNN primitive cache)
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller batches (a smoke run, not the reported numbers)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b2, b1 = (16, 4) if args.quick else (128, 32)
    shapes = [(2, b2, c, (32, 32)) for c in (16, 32, 64)] + [(1, b1, c, (2048,)) for c in (16, 32, 64)]
    from training.loop import hardware_string  # provenance line only
    print(f"# {hardware_string(torch.device('cpu'))}; forward+backward, median of {args.repeats}")
    header = f"{'shape':<28}{'ComplexConv ms':>16}{'(a) real':>10}{'(b) cplx64':>12}{'(c) 4 real':>12}" \
             f"{'vs (a)':>9}{'(b)/ours':>10}{'(c)/ours':>10}"
    print(header)
    for dims, batch, c, spatial in shapes:
        t = time_variants(variants(dims, batch, c, spatial), args.repeats)
        ours = t["ComplexConv"]
        name = f"conv{dims}d B{batch} C{c} {'x'.join(map(str, spatial))}"
        print(f"{name:<28}{ours * 1e3:>16.1f}{t['(a) real 2C->2C'] * 1e3:>10.1f}"
              f"{t['(b) native complex64'] * 1e3:>12.1f}{t['(c) 4 real convs'] * 1e3:>12.1f}"
              f"{ours / t['(a) real 2C->2C']:>9.3f}{t['(b) native complex64'] / ours:>10.2f}"
              f"{t['(c) 4 real convs'] / ours:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
