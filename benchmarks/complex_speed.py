"""Complex vs real training speed, and where a complex training step spends its time.

    python -m benchmarks.complex_speed                                  # CPU, all threads
    python -m benchmarks.complex_speed --threads 1 --batch-size 64 --steps 2 --repeats 5
    python -m benchmarks.complex_speed --profile                        # + torch.profiler tables
    python -m benchmarks.complex_speed --device cuda --batch-size 512 --steps 20 --repeats 5 --profile
    python -m benchmarks.complex_speed --device cuda --batch-size 512 --compile   # whole models compiled

(a) Complex BN, forward + backward on the feature-map shapes of complex_resnet9: the op-by-op reference
    (models/complex/batchnorm_reference.py, the implementation before this benchmark existed) against
    models.complex.ComplexBatchNorm2d, and torch's real BatchNorm2d on the same 2C real channels.
(b) One training step (forward + backward + SGD with Nesterov momentum; bf16 autocast and channels_last on
    CUDA, as training/cifar.py) of complex_resnet9 against
      - real_resnet9, the real twin at equal parameters (widths x sqrt(2): 45, 91, 181, 362), and
      - real_resnet9 with widths (64, 128, 256, 512): equal multiply-adds. A complex conv with C complex
        channels is one real conv 2C -> 2C (block weight [[A, -B], [B, A]]), the multiply-adds of a real
        network with twice the complex widths;
    and complex_resnet9 with the reference BN, to show what the new BN buys inside the network. Time per
    epoch is extrapolated to the 45,000 training images of the CIFAR-10 split.
--profile: torch.profiler over two training steps per network: the top ops, and the share of the step in
    conv/linear, batch norm, activation and pooling layers (module forward time plus the backward of the
    autograd nodes those modules created; the rest is loss, residual adds, global pooling, optimizer).

All timings in one process, variants interleaved within each repeat, medians over repeats, so load from other
processes hits every variant alike. The last line is one JSON object with the headline numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

import models.complex.batchnorm as complex_bn
from benchmarks.cifar_throughput import make_train_step
from models.checkpoint import count_parameters, resolve_device
from models.cifar import ComplexResNet9, RealResNet9
from models.complex import (
    ComplexBatchNorm1d,
    ComplexBatchNorm2d,
    ComplexConv1d,
    ComplexConv2d,
    ComplexLinear,
    ComplexMaxPool1d,
    ComplexMaxPool2d,
    CReLU,
    ModReLU,
    ZReLU,
)
from models.complex.batchnorm_reference import use_reference_bn

EPOCH_IMAGES = 45_000
COMPLEX_WIDTHS = (32, 64, 128, 256)           # ComplexResNet9 default (complex channels)
EQUAL_PARAMS_WIDTHS = (45, 91, 181, 362)      # RealResNet9 default
EQUAL_FLOPS_WIDTHS = tuple(2 * w for w in COMPLEX_WIDTHS)
# (complex channels, spatial size) of the BN inputs in complex_resnet9 on 32x32 images
BN_SHAPES = ((32, 32), (64, 16), (128, 8), (256, 4))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Seconds per call, median over ``repeats`` rounds that each run every function once, in turn."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------------------------------------------------------
# (a) complex BN alone


def _fwd_bwd(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        torch.autograd.backward(layer(x), grad)
        x.grad = None
        for p in layer.parameters():
            p.grad = None
    return step


def bench_bn(batch: int, repeats: int, device: torch.device) -> list[dict]:
    rows = []
    for c, hw in BN_SHAPES:
        x = torch.randn(batch, 2 * c, hw, hw, device=device, requires_grad=True)
        grad = torch.randn_like(x)
        new = ComplexBatchNorm2d(c).to(device)
        old = use_reference_bn(ComplexBatchNorm2d(c).to(device))
        real = nn.BatchNorm2d(2 * c).to(device)

        fns = {"old": _fwd_bwd(old, x, grad), "new": _fwd_bwd(new, x, grad), "real": _fwd_bwd(real, x, grad)}
        for fn in fns.values():
            fn()
        t = interleaved_medians(fns, repeats, device)
        rows.append({"shape": f"B{batch} C{c} {hw}x{hw}", **{k: v * 1e3 for k, v in t.items()}})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# (b) training steps


def macs_per_image(model: nn.Module, device: torch.device) -> float:
    """Multiply-adds of the conv and linear layers for one 32x32 image (the complex convs as their real block conv)."""
    total = 0

    def hook(m: nn.Module, inputs, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, (nn.Conv1d, nn.Conv2d, ComplexConv1d, ComplexConv2d)):
            fan_in = m.weight.shape[1] * (2 if isinstance(m, (ComplexConv1d, ComplexConv2d)) else 1)
            total += out[0].numel() * fan_in * math.prod(m.weight.shape[2:])
        elif isinstance(m, (nn.Linear, ComplexLinear)):
            total += out[0].numel() * m.weight.shape[1] * (2 if isinstance(m, ComplexLinear) else 1)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 32, 32, device=device))
    model.train(was_training)
    for h in handles:
        h.remove()
    return float(total)


def make_step(model: nn.Module, batch: int, device: torch.device, compile: bool) -> Callable[[], None]:
    # The recipe's label smoothing and weight decay, so the optimizer's share of the step is the training one.
    return make_train_step(model, batch, device, compile, label_smoothing=0.2, weight_decay=5e-4)


def networks(device: torch.device, reference_bn: bool = True) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    nets = {"complex_resnet9": ComplexResNet9(COMPLEX_WIDTHS),
            "real, equal params": RealResNet9(EQUAL_PARAMS_WIDTHS),
            "real, equal FLOPs": RealResNet9(EQUAL_FLOPS_WIDTHS)}
    if reference_bn:
        nets["complex, old BN"] = use_reference_bn(ComplexResNet9(COMPLEX_WIDTHS))
    return {name: m.to(device).train() for name, m in nets.items()}


def _repeat(fn: Callable[[], None], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            fn()
    return run


def bench_training(batch: int, steps: int, repeats: int, device: torch.device, compile: bool) -> list[dict]:
    nets = networks(device, reference_bn=not compile)  # compiled, the reference BN would be fused like the new one
    fns = {}
    for name, model in nets.items():
        step = make_step(model, batch, device, compile)
        for _ in range(2):  # warm-up: allocator, oneDNN / cuDNN autotuning, compilation
            step()
        fns[name] = _repeat(step, steps)
    t = interleaved_medians(fns, repeats, device)
    rows = []
    for name, model in nets.items():
        per_step = t[name] / steps
        rows.append({"model": name, "params": count_parameters(model), "gmacs": macs_per_image(model, device) / 1e9,
                     "ms_per_step": per_step * 1e3, "images_per_s": batch / per_step,
                     "s_per_epoch": EPOCH_IMAGES * per_step / batch})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# --profile


CATEGORIES = (
    ("conv/linear", (nn.Conv1d, nn.Conv2d, nn.Linear, ComplexConv1d, ComplexConv2d, ComplexLinear)),
    ("batch norm", (nn.BatchNorm1d, nn.BatchNorm2d, ComplexBatchNorm1d, ComplexBatchNorm2d)),
    ("activation", (nn.ReLU, CReLU, ModReLU, ZReLU)),
    ("pooling", (nn.MaxPool1d, nn.MaxPool2d, ComplexMaxPool1d, ComplexMaxPool2d)),
)
_LABEL = "layer::"
_BACKWARD = "autograd::engine::evaluate_function: "


def _label_layers(model: nn.Module) -> list:
    """Wrap each categorised layer's forward in a profiler range named layer::<category>."""
    handles = []
    for m in model.modules():
        cat = next((name for name, types in CATEGORIES if isinstance(m, types)), None)
        if cat is None:
            continue
        stack: list = []

        def pre(_m, _inputs, cat=cat, stack=stack) -> None:
            rf = torch.profiler.record_function(_LABEL + cat)
            rf.__enter__()
            stack.append(rf)

        def post(_m, _inputs, _out, stack=stack) -> None:
            stack.pop().__exit__(None, None, None)

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def _walk(event):
    yield event
    for child in event.cpu_children:
        yield from _walk(child)


def category_shares(events, device: torch.device) -> dict[str, float]:
    """Time per category (ms) from a profile of steps wrapped in 'step' ranges.

    Forward: the layer:: ranges. Backward: every autograd node carries the sequence number of the forward op that
    created it, so the node's evaluate_function range is charged to the layer that ran that op.
    """
    def inclusive(e) -> float:  # us; on CUDA the kernel time of the op and its children
        return e.cpu_time_total if device.type == "cpu" else e.device_time_total

    times: dict[str, float] = defaultdict(float)
    seq_to_cat: dict[int, str] = {}
    for e in events:
        if e.name.startswith(_LABEL):
            cat = e.name[len(_LABEL):]
            times[cat] += inclusive(e)
            for d in _walk(e):
                if d.sequence_nr >= 0:
                    seq_to_cat[d.sequence_nr] = cat
    total = 0.0
    for e in events:
        if e.name == "step":
            total += inclusive(e)
        elif e.name.startswith(_BACKWARD) and e.sequence_nr in seq_to_cat:
            parent, nested = e.cpu_parent, False
            while parent is not None:  # a node run inside another node's backward is already counted there
                nested |= parent.name.startswith(_BACKWARD)
                parent = parent.cpu_parent
            if not nested:
                times[seq_to_cat[e.sequence_nr]] += inclusive(e)
    out = {name: times.get(name, 0.0) / 1e3 for name, _ in CATEGORIES}
    out["other (loss, residual adds, global pool, optimizer)"] = total / 1e3 - sum(out.values())
    out["total"] = total / 1e3
    return out


def profile_step(name: str, model: nn.Module, batch: int, device: torch.device, top: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile, record_function
    handles = _label_layers(model)
    step = make_step(model, batch, device, compile=False)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            with record_function("step"):
                step()
            _sync(device)
    for h in handles:
        h.remove()
    sort = "self_cpu_time_total" if device.type == "cpu" else "self_device_time_total"
    print(f"\n### {name}: top ops by {sort.replace('_', ' ')}, 2 training steps")
    print(prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=48))
    shares = category_shares(prof.events(), device)
    return {k: v / 2 for k, v in shares.items()}  # per step


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: 64 on CPU, 512 on CUDA)")
    ap.add_argument("--bn-batch", type=int, default=None, help="batch of the BN timings (default: --batch-size)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per timed repeat (default: 2 CPU, 20 CUDA)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are reported")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler: top ops and time shares per layer kind")
    ap.add_argument("--top", type=int, default=15, help="rows of each --profile table")
    ap.add_argument("--compile", action="store_true", help="torch.compile the whole networks in (b)")
    ap.add_argument("--compiled-bn", action="store_true",
                    help="complex BN through torch.compile, the rest eager (set_compiled_batch_norm)")
    ap.add_argument("--skip-bn", action="store_true", help="skip (a)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    cuda = device.type == "cuda"
    batch = a.batch_size or (512 if cuda else 64)
    steps = a.steps or (20 if cuda else 2)
    if cuda:
        torch.backends.cudnn.benchmark = True
    complex_bn.set_compiled_batch_norm(a.compiled_bn)
    from training.loop import hardware_string
    print(f"# complex_speed: {hardware_string(device)}; median of {a.repeats} interleaved repeats"
          f"{'; whole networks compiled' if a.compile else ''}{'; complex BN compiled' if a.compiled_bn else ''}")
    result: dict = {"hardware": hardware_string(device), "batch_size": batch, "steps": steps, "repeats": a.repeats,
                    "compile": a.compile, "compiled_bn": a.compiled_bn}

    if not a.skip_bn:
        bn_batch = a.bn_batch or batch
        print("\n## (a) complex BN, forward + backward, ms (old: op-by-op reference; real: nn.BatchNorm2d on the "
              "same 2C channels)")
        print(f"{'shape':<22}{'old':>10}{'new':>10}{'real':>10}{'old/new':>9}{'new/real':>10}")
        rows = bench_bn(bn_batch, a.repeats, device)
        for r in rows:
            print(f"{r['shape']:<22}{r['old']:>10.2f}{r['new']:>10.2f}{r['real']:>10.2f}"
                  f"{r['old'] / r['new']:>9.2f}{r['new'] / r['real']:>10.2f}", flush=True)
        old, new, real = (sum(r[k] for r in rows) for k in ("old", "new", "real"))
        print(f"{'all four shapes':<22}{old:>10.2f}{new:>10.2f}{real:>10.2f}{old / new:>9.2f}{new / real:>10.2f}")
        result["bn"] = {"rows": rows, "old_over_new": old / new, "new_over_real": new / real}

    print(f"\n## (b) training step (forward + backward + SGD), batch {batch}, {steps} steps per repeat; "
          f"epoch = {EPOCH_IMAGES:,} images")
    print(f"{'network':<22}{'params':>10}{'GMAC/img':>10}{'ms/step':>10}{'images/s':>10}{'s/epoch':>10}"
          f"{'complex/this':>14}")
    rows = bench_training(batch, steps, a.repeats, device, a.compile)
    cx = next(r for r in rows if r["model"] == "complex_resnet9")
    for r in rows:
        print(f"{r['model']:<22}{r['params'] / 1e6:>9.2f}M{r['gmacs']:>10.3f}{r['ms_per_step']:>10.1f}"
              f"{r['images_per_s']:>10.1f}{r['s_per_epoch']:>10.1f}{cx['s_per_epoch'] / r['s_per_epoch']:>14.2f}")
    by = {r["model"]: r for r in rows}
    ratio_params = cx["s_per_epoch"] / by["real, equal params"]["s_per_epoch"]
    ratio_flops = cx["s_per_epoch"] / by["real, equal FLOPs"]["s_per_epoch"]
    print(f"complex/real time per epoch: equal params {ratio_params:.2f}x, equal FLOPs {ratio_flops:.2f}x")
    result.update(training=rows, complex_over_real_equal_params=ratio_params, complex_over_real_equal_flops=ratio_flops)
    if "complex, old BN" in by:
        result["old_bn_over_new_bn_training"] = by["complex, old BN"]["s_per_epoch"] / cx["s_per_epoch"]

    if a.profile:
        print("\n## --profile: where a training step's time goes")
        nets = networks(device)
        shares = {name: profile_step(name, nets[name], batch, device, a.top)
                  for name in ("complex_resnet9", "complex, old BN", "real, equal FLOPs")}
        cats = list(next(iter(shares.values())))
        print("\n### time per training step by layer kind, ms (share)")
        print(f"{'':<52}" + "".join(f"{n:>22}" for n in shares))
        for cat in cats:
            cells = "".join(f"{s[cat]:>13.1f} ({100 * s[cat] / s['total']:>4.1f}%)" for s in shares.values())
            print(f"{cat:<52}{cells}")
        result["profile_ms_per_step"] = shares

    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()
