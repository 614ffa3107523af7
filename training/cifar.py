"""Train and evaluate the CIFAR-10 classifiers of ``models/cifar.py``.

    python -m training.cifar train --preset fast --data ../shared/data/cifar-10-batches-py --out runs/fast
    python -m training.cifar train --preset paper --arch real_resnet --variant WS ...      # the paper's recipe
    torchrun --nproc_per_node 8 -m training.cifar train --preset fast ...                  # DDP, same code
    python -m training.cifar evaluate --checkpoint models/checkpoints/cifar10_complex.pt \
        --data ../shared/data/cifar-10-batches-py --split val

The whole data set lives on the training device as uint8; each step gathers a batch, augments it
with tensor ops (translate + flip + cutout) and converts it to float. The validation split is the
fixed 45,000 / 5,000 split of ``training.data.cifar.train_val_split`` (seed 0), evaluated in order,
in eval mode, so its numbers are deterministic.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from models.cifar import classify, count_parameters, paper_resnet_config
from training.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DatasetError,
    ImageSet,
    augment,
    batches,
    load_dataset,
    train_val_split,
)
from training.loop import (
    JsonlLogger,
    Runtime,
    all_reduce_sum,
    autocast,
    git_commit,
    hardware_string,
    load_training_state,
    progress,
    save_training_state,
    seed_everything,
    setup_runtime,
    teardown,
    unwrap,
    wrap_ddp,
)
from training.metrics import classification_report


@dataclass
class TrainConfig:
    data: str = "../shared/data/cifar-10-batches-py"
    out: str = "runs/cifar"  # state.pt (resumable), log.jsonl, model.pt
    save: str = ""  # final checkpoint path (default: <out>/model.pt)
    arch: str = "complex_resnet9"
    arch_config: dict[str, Any] = field(default_factory=dict)  # constructor kwargs (defaults fill the rest)
    epochs: int = 24
    batch_size: int = 512
    optimizer: str = "sgd"  # sgd (Nesterov) | adamw
    lr: float = 0.4  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4  # decoupled from clipping: the optimizer's weight_decay (after clipping)
    l2: float = 0.0  # Keras-style l2 coefficient: loss += l2 * sum(w^2) over conv/dense kernels, i.e. the
    #                  gradient gains 2 * l2 * w BEFORE clipping (the authors' kernel_regularizer=l2(1e-4))
    schedule: str = "onecycle"  # onecycle: linear 0 -> lr over warmup_epochs, then linear -> 0 | paper: steps
    warmup_epochs: float = 5.0
    label_smoothing: float = 0.2
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights (and BN statistics) with this decay
    #                   per step; it is what gets evaluated at the end and saved (0 = off, the plain final weights)
    clip_norm: float = 0.0  # 0 = no gradient clipping
    pad: int = 4  # random translation by up to `pad` pixels (reflect padding)
    flip: bool = True
    cutout: int = 8
    val_size: int = 5000
    split_seed: int = 0  # the fixed train/val split; do not change to keep numbers comparable
    train_limit: int = 0  # use only the first N training images (quick runs / tests); 0 = all
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True  # on CUDA
    compile: bool = False
    threads: int = 0  # torch CPU threads; 0 = torch's default
    eval_every: int = 1  # validate every N epochs (and always after the last)
    resume: str = ""  # path of a state.pt to continue from
    progress: bool = True


# The paper's recipe (section 4.1): SGD Nesterov 0.9, clip-norm 1, weight decay 1e-4, batch 64, 200 epochs,
# lr 0.01 (warm-up) -> 0.1 at epoch 10 -> 0.01 at 100 -> 1e-3 at 120 -> 1e-4 at 150; shifts and flips.
# Weight decay as the authors' code applies it: Keras l2(1e-4) on every conv/dense kernel, i.e. 2e-4 * w added
# to the gradient before the norm is clipped (weight_decay=0: nothing decoupled). The model takes the authors'
# layout and init (models.cifar.AUTHORS_OPTIONS). docs/paper_fidelity.md lists what still differs.
PAPER_LR_STEPS = ((0, 0.01), (10, 0.1), (100, 0.01), (120, 1e-3), (150, 1e-4))
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "arch": "complex_resnet", "arch_config": paper_resnet_config("IB", "complex", authors=True), "epochs": 200,
        "batch_size": 64, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "l2": 1e-4,
        "schedule": "paper", "label_smoothing": 0.0, "clip_norm": 1.0, "pad": 4, "flip": True, "cutout": 0,
    },
    # The shipped model: the DAWNBench ResNet-9 recipe (Page, 2018), made complex. The shipped checkpoint used
    # --epochs 47 --warmup-epochs 9.8 (its model card has the numbers and the command).
    "fast": {
        "arch": "complex_resnet9", "arch_config": {}, "epochs": 24, "batch_size": 512, "optimizer": "sgd", "lr": 0.4,
        "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle", "warmup_epochs": 5.0, "label_smoothing": 0.2,
        "clip_norm": 0.0, "pad": 4, "flip": True, "cutout": 8,
    },
}


def learning_rate(cfg: TrainConfig, epoch_float: float) -> float:
    """Learning rate at a (fractional) epoch."""
    if cfg.schedule == "paper":
        lr = PAPER_LR_STEPS[0][1]
        for start, value in PAPER_LR_STEPS:
            if epoch_float * 200 / max(cfg.epochs, 1) >= start:  # the steps scale with a shorter run
                lr = value
        return lr * cfg.lr / 0.1
    if cfg.schedule == "onecycle":
        warm = min(cfg.warmup_epochs, cfg.epochs / 2)
        if epoch_float < warm:
            return cfg.lr * epoch_float / warm
        return cfg.lr * max(0.0, (cfg.epochs - epoch_float) / max(cfg.epochs - warm, 1e-9))
    if cfg.schedule == "constant":
        return cfg.lr
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on BN scales/shifts and biases (1-D parameters): decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


class WeightEMA:
    """Exponential moving average of a model's floating-point parameters and buffers (complex BN's running means
    and covariances included: a convex combination of covariances is a covariance). The decay ramps up as
    (1 + n) / (10 + n) so the early average is not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
        own = list(self.model.parameters()) + list(self.model.buffers())
        src = list(model.parameters()) + list(model.buffers())
        floats = [(a, b) for a, b in zip(own, src) if a.is_floating_point()]
        return [a for a, _ in floats], [b.detach() for _, b in floats], \
            [(a, b) for a, b in zip(own, src) if not a.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine, theirs, ints = self._pairs(model)
        torch._foreach_lerp_(mine, theirs, 1.0 - decay)
        for a, b in ints:
            a.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


@torch.no_grad()
def add_l2_gradient_(params: list[torch.Tensor], l2: float) -> None:
    """grad += d/dw (l2 * sum(w^2)) = 2 * l2 * w: Keras' kernel_regularizer=l2(l2) as the authors use it. Called
    before clipping, so, as in Keras, the decay term is part of the gradient whose norm is clipped."""
    for p in params:
        if p.grad is not None:
            p.grad.add_(p, alpha=2 * l2)


def load_split(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    train, val = train_val_split(load_dataset(cfg.data, "train"), cfg.val_size, cfg.split_seed)
    if cfg.train_limit:
        train = train.subset(slice(0, cfg.train_limit))
    return train, val


def to_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> float in [0, 1] (the models normalise themselves)."""
    x = images.float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate_model(model: nn.Module, ds: ImageSet, flip_tta: bool = False, batch_size: int = 1000) -> dict:
    """Deterministic evaluation through ``classify`` (the same path the service uses)."""
    was_training = model.training
    model.eval()
    probs = classify(model, ds.images, flip_tta=flip_tta, batch_size=batch_size)
    model.train(was_training)
    return classification_report(probs, ds.labels, ds.class_names)


def train(cfg: TrainConfig, command: str = "") -> dict:
    """Train; write <out>/log.jsonl, <out>/state.pt every epoch and the final checkpoint. Returns the final metrics."""
    rt: Runtime = setup_runtime(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + rt.rank)
    out = Path(cfg.out)
    log = JsonlLogger(out / "log.jsonl", enabled=rt.is_main)
    cuda = rt.device.type == "cuda"
    channels_last = cfg.channels_last and cuda
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    train_set, val_set = load_split(cfg)
    train_set, val_set = train_set.to(rt.device), val_set.to(rt.device)  # uint8: 138 MB for all of CIFAR-10
    arch_config = {**cfg.arch_config, "num_classes": len(train_set.class_names)}
    model = build_model(cfg.arch, arch_config).to(rt.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    optimizer = make_optimizer(cfg, model)
    l2_params = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]  # conv and dense kernels
    start_epoch, elapsed = 0, 0.0
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling + augmentation, same on every rank
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
    if cfg.resume:
        state = load_training_state(cfg.resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        gen.set_state(state["generator"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        elif ema is not None:  # a state saved without --ema: start the average from the resumed weights
            ema.model.load_state_dict(model.state_dict())
    ddp_model = wrap_ddp(model, rt)
    step_model = torch.compile(ddp_model) if cfg.compile else ddp_model
    per_rank_batch = cfg.batch_size // rt.world_size  # --batch-size is the global batch
    steps_per_epoch = max(len(train_set) // cfg.batch_size, 1)
    if rt.is_main:
        print(json.dumps({"event": "start", "arch": cfg.arch, "params": n_params, "train_images": len(train_set),
                          "val_images": len(val_set), "device": hardware_string(rt.device),
                          "world_size": rt.world_size}), flush=True)

    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        bar = progress(batches(train_set, per_rank_batch, shuffle=True, generator=gen, drop_last=True,
                               rank=rt.rank, world_size=rt.world_size),
                       total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       enabled=cfg.progress and rt.is_main)
        for step, (images, labels) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch + step / steps_per_epoch)
            x = to_input(augment(images, cfg.pad, cfg.flip, cfg.cutout, generator=gen), channels_last)
            with autocast(rt.device):
                logits = step_model(x)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.l2 > 0:
                add_l2_gradient_(l2_params, cfg.l2)
            if cfg.clip_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            # .item() syncs the GPU; every 10 steps is enough for the progress bar
            if step % 10 == 0 or step == steps_per_epoch - 1:
                n = len(labels)
                loss_sum += loss.item() * n
                correct += float((logits.argmax(1) == labels).sum())
                seen += n
                if hasattr(bar, "set_postfix"):
                    rate = (step + 1) * len(labels) * rt.world_size / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")
        if cuda:
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        elapsed += epoch_time
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], rt)
        record = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(seen, 1), 4),
                  "train_accuracy": round(correct / max(seen, 1), 4), "lr": learning_rate(cfg, epoch + 1),
                  "epoch_time_s": round(epoch_time, 2),
                  "images_per_s": round(steps_per_epoch * cfg.batch_size / epoch_time, 1),
                  "elapsed_s": round(elapsed, 1)}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            val = evaluate_model(model, val_set)  # every rank evaluates the whole (small) val set: no reduction
            record["val_accuracy"] = round(val["accuracy"], 4)
            if ema is not None:
                record["val_accuracy_ema"] = round(evaluate_model(ema.model, val_set)["accuracy"], 4)
        log.log(**record)
        if rt.is_main:
            print(json.dumps(record), flush=True)
            save_training_state(out / "state.pt", model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                                epoch=epoch + 1, elapsed=elapsed, generator=gen.get_state(),
                                config=json.dumps(dataclasses.asdict(cfg)),
                                **({"ema": ema.state_dict()} if ema is not None else {}))
        metrics = record

    # Final numbers: the whole val split with test-time flip augmentation, exactly as the shipped model is used.
    # With --ema the averaged weights are the model (chosen before training, not by comparing on val); the plain
    # final weights are reported beside them.
    raw_model, model = model, (ema.model if ema is not None else model)
    final = evaluate_model(model, val_set, flip_tta=True)
    final_plain = evaluate_model(model, val_set, flip_tta=False)
    first_1000 = evaluate_model(model, val_set.subset(slice(0, 1000)), flip_tta=True)
    extra = {"val_accuracy_final_weights": round(evaluate_model(raw_model, val_set, flip_tta=True)["accuracy"], 4)} \
        if ema is not None else {}
    result = {**extra, "val_accuracy": round(final["accuracy"], 4),
              "val_accuracy_no_tta": round(final_plain["accuracy"], 4),
              "val_images": final["images"], "val_accuracy_first_1000": round(first_1000["accuracy"], 4),
              "val_per_class": final["per_class"], "train_images": len(train_set), "epochs": cfg.epochs,
              "training_time_s": round(elapsed, 1), "images_per_s": metrics.get("images_per_s"), "params": n_params}
    if rt.is_main:
        meta = {
            "task": "image-classification",
            "class_names": list(train_set.class_names),
            "input_size": list(train_set.images.shape[2:]),
            "normalization": {"mean": list(arch_config.get("mean", CIFAR10_MEAN)),
                              "std": list(arch_config.get("std", CIFAR10_STD))},
            "flip_tta": True,
            "metrics": {k: result[k] for k in ("val_accuracy", "val_accuracy_no_tta", "val_images",
                                               "val_accuracy_first_1000", "val_per_class", *extra)},
            "dataset": train_set.name or "cifar10",
            "split": {"train_images": len(train_set), "val_images": len(val_set), "split_seed": cfg.split_seed,
                      "how": "training.data.cifar.train_val_split: torch.randperm(N, seed) -> first val_size = val"},
            "command": command,
            "train_config": dataclasses.asdict(cfg),
            "git_commit": git_commit(),
            "hardware": hardware_string(rt.device) + (f" x{rt.world_size}" if rt.distributed else ""),
            "training_time_s": result["training_time_s"],
            "images_per_s": result["images_per_s"],
            "parameters": n_params,
            "epochs": cfg.epochs,
        }
        path = save_checkpoint(cfg.save or out / "model.pt", model, cfg.arch, arch_config, meta)
        log.log(event="final", checkpoint=str(path), hardware=meta["hardware"], **result)
        print(json.dumps({"event": "final", "checkpoint": str(path), **result}), flush=True)
    teardown(rt)
    return result


def evaluate(checkpoint: str, data: str, split: str = "val", limit: int = 0, device: str = "auto",
             flip_tta: bool | None = None, batch_size: int = 500) -> dict:
    """Accuracy of a checkpoint on the fixed val split, the official test batch, or the 45k train split."""
    dev = setup_runtime(device).device
    model, meta = load_checkpoint(checkpoint, dev)
    split_info = meta.get("split", {})
    if split == "test":
        ds = load_dataset(data, "test")
    elif split in ("val", "train"):
        train_set, val_set = train_val_split(load_dataset(data, "train"), int(split_info.get("val_images", 5000)),
                                             int(split_info.get("split_seed", 0)))
        ds = val_set if split == "val" else train_set
    else:
        raise ValueError(f"split must be val, test or train, got {split!r}")
    if limit:
        ds = ds.subset(slice(0, limit))
    tta = meta.get("flip_tta", True) if flip_tta is None else flip_tta
    t0 = time.perf_counter()
    probs = classify(model, ds.images, flip_tta=tta, batch_size=batch_size)
    report = classification_report(probs, ds.labels, list(meta.get("class_names", ds.class_names)))
    return {"checkpoint": str(checkpoint), "split": split, **report, "accuracy": round(report["accuracy"], 4),
            "flip_tta": tta, "seconds": round(time.perf_counter() - t0, 2), "device": str(dev)}


# ----------------------------------------------------------------------------------------------------------------
# CLI


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    arch = args.arch or values.get("arch", "complex_resnet9")
    if arch != values.get("arch"):
        values["arch_config"] = {}  # another architecture than the preset's: start from its own defaults
    values["arch"] = arch
    authors_flag, activation_flag = getattr(args, "authors_layout", None), getattr(args, "activation", None)
    authors = authors_flag if authors_flag is not None else args.preset == "paper"
    if arch in ("complex_resnet", "real_resnet") and (args.variant or activation_flag or authors_flag is not None
                                                      or not values["arch_config"]):
        values["arch_config"] = paper_resnet_config(args.variant or "IB", arch.split("_")[0], authors=authors,
                                                    activation=activation_flag or "crelu")
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None and f.name not in ("arch", "arch_config"):
            values[f.name] = v
    if args.arch_config:
        values["arch_config"] = {**values.get("arch_config", {}), **json.loads(args.arch_config)}
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m training.cifar", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a classifier")
    t.add_argument("--preset", choices=sorted(PRESETS), default="fast")
    t.add_argument("--arch", choices=["complex_resnet9", "real_resnet9", "complex_resnet", "real_resnet"])
    t.add_argument("--variant", choices=["WS", "IB", "DN"], help="paper ResNet shape (complex_resnet/real_resnet)")
    t.add_argument("--activation", choices=["crelu", "modrelu", "zrelu"],
                   help="complex activation of complex_resnet (paper 3.3; default crelu)")
    t.add_argument("--authors-layout", action=argparse.BooleanOptionalAction, default=None,
                   help="complex_resnet/real_resnet with the authors' code's topology, BN eps and init "
                        "(default: on with --preset paper)")
    t.add_argument("--arch-config", help='JSON constructor kwargs, e.g. \'{"widths": [16, 32, 64, 128]}\'')
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("arch", "arch_config"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(getattr(defaults, f.name), bool):
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            t.add_argument(flag, type=type(getattr(defaults, f.name)), default=None)
    e = sub.add_parser("evaluate", help="evaluate a checkpoint; prints one JSON line")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True, help="CIFAR folder/.tar.gz (for --split test a folder with test_batch)")
    e.add_argument("--split", choices=["val", "test", "train"], default="val")
    e.add_argument("--limit", type=int, default=0, help="first N images of the split only")
    e.add_argument("--device", default="auto")
    e.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="flip TTA (default: as trained)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "train":
            cfg = _config_from_args(args)
            train(cfg, command="python -m training.cifar " + " ".join(shlex.quote(a) for a in argv))
        else:
            print(json.dumps(evaluate(args.checkpoint, args.data, args.split, args.limit, args.device, args.tta)))
    except (DatasetError, CheckpointError) as e:  # a wrong path or file: one clear line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
