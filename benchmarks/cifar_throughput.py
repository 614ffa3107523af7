"""Training throughput (images/s) of the CIFAR architectures on this machine: forward + backward + SGD step,
bf16 autocast and channels_last on CUDA, fp32 on CPU. Random data, so no dataset is needed.

    python -m benchmarks.cifar_throughput --arch complex_resnet9 --batch-size 512 --steps 30
    python -m benchmarks.cifar_throughput --arch complex_resnet --variant IB --batch-size 128
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.checkpoint import build_model, resolve_device
from models.cifar import count_parameters, paper_resnet_config
from training.loop import autocast, hardware_string


def make_train_step(model: torch.nn.Module, batch_size: int, device: torch.device, compile: bool = False,
                    label_smoothing: float = 0.0, weight_decay: float = 0.0) -> Callable[[], None]:
    """One training step on fixed random data (forward + backward + SGD Nesterov), as training.cifar runs it:
    bf16 autocast and channels_last on CUDA, fp32 on CPU."""
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with autocast(device):
            loss = F.cross_entropy(step_model(x).float(), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure(arch: str, config: dict, batch_size: int, steps: int, device: torch.device, compile: bool = False) -> dict:
    model = build_model(arch, config).to(device)
    cuda = device.type == "cuda"
    step = make_train_step(model, batch_size, device, compile)

    t0 = time.perf_counter()
    for _ in range(3):  # warm-up (cudnn autotune, compile)
        step()
    if cuda:
        torch.cuda.synchronize()
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"arch": arch, "config": config, "params": count_parameters(model), "batch_size": batch_size,
            "compile": compile, "images_per_s": round(steps * batch_size / dt, 1), "warmup_s": round(warmup, 1),
            "hardware": hardware_string(device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="complex_resnet9")
    p.add_argument("--variant", default="IB")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    config = paper_resnet_config(a.variant, a.arch.split("_")[0]) if a.arch in ("complex_resnet", "real_resnet") else {}
    print(json.dumps(measure(a.arch, config, a.batch_size, a.steps, resolve_device(a.device), a.compile)), flush=True)


if __name__ == "__main__":
    main()
