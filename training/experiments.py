"""Seeded complex-vs-real comparisons: run a grid of training runs, then tabulate mean ± std per model.

    python -m training.experiments cifar --variant WS --blocks-per-stage 1 --train-limit 5000 --epochs 10 \
        --seeds 0,1,2 --out runs/experiments/cifar_ws1
    python -m training.experiments musicnet --data DIR --steps 600 --seeds 0 --out runs/experiments/musicnet_deep
    python -m training.experiments table runs/experiments/cifar_ws1      # the markdown table again

Each run is one `python -m training.cifar train` / `python -m training.musicnet train` subprocess with the paper
preset and only the named flags changed, so a row can be re-run by hand from the command stored beside it
(results.jsonl). Finished runs are skipped, so an interrupted grid resumes where it stopped. Runs are ordered
seed-major (every model at seed 0, then seed 1, ...) so a grid cut short still compares the models fairly.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CIFAR_ARCHS = ("complex_resnet", "real_resnet")
MUSICNET_ARCHS = ("musicnet_deep_complex", "musicnet_deep_real")


def _run(cmd: list[str], log_path: Path) -> None:
    with open(log_path, "a") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def _final_record(log_jsonl: Path, event: str) -> dict | None:
    if not log_jsonl.exists():
        return None
    found = None
    for line in log_jsonl.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == event:
            found = rec
    return found


def _append(out: Path, row: dict) -> None:
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _done(out: Path) -> set[tuple[str, int]]:
    path = out / "results.jsonl"
    if not path.exists():
        return set()
    return {(r["arch"], r["seed"]) for r in map(json.loads, path.read_text().splitlines())}


def _run_grid(out: Path, archs: list[str], seeds: list[int], run_one: Callable[[str, int, Path], dict]) -> None:
    """Seed-major: every model at seed 0, then seed 1, ...; rows already in results.jsonl are skipped."""
    out.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    for seed in seeds:
        for arch in archs:
            if (arch, seed) not in done:
                _append(out, {"arch": arch, "seed": seed, **run_one(arch, seed, out / f"{arch}_s{seed}")})


def run_cifar(a: argparse.Namespace) -> None:
    out = Path(a.out)

    def one(arch: str, seed: int, run_dir: Path) -> dict:
        cmd = [sys.executable, "-m", "training.cifar", "train", "--preset", "paper", "--arch", arch,
               "--variant", a.variant, "--seed", str(seed), "--epochs", str(a.epochs), "--data", a.data,
               "--out", str(run_dir), "--eval-every", str(a.epochs), "--no-progress", "--threads", str(a.threads)]
        if a.blocks_per_stage:
            cmd += ["--arch-config", json.dumps({"blocks_per_stage": a.blocks_per_stage})]
        if a.train_limit:
            cmd += ["--train-limit", str(a.train_limit)]
        cmd += shlex.split(a.train_args)
        _run(cmd, out / "runs.log")
        final = _final_record(run_dir / "log.jsonl", "final")
        if final is None:
            raise RuntimeError(f"{run_dir}/log.jsonl has no final record")
        return {"params": final["params"], "val_accuracy": final["val_accuracy"],
                "val_accuracy_no_tta": final["val_accuracy_no_tta"], "training_time_s": final["training_time_s"],
                "epochs": a.epochs, "train_images": a.train_limit or 45000, "variant": a.variant,
                "blocks_per_stage": a.blocks_per_stage, "hardware": final.get("hardware", ""),
                "command": shlex.join(cmd[1:])}

    _run_grid(out, a.archs, a.seeds, one)


def run_musicnet(a: argparse.Namespace) -> None:
    out = Path(a.out)
    cache = ["--cache-dir", a.cache_dir] if a.cache_dir else []

    def one(arch: str, seed: int, run_dir: Path) -> dict:
        train_cmd = [sys.executable, "-m", "training.musicnet", "train", "--preset", "paper", "--arch", arch,
                     "--data", a.data, "--out", str(run_dir), "--steps", str(a.steps), "--seed", str(seed),
                     "--eval-every", str(10 ** 9), "--log-every", "50", "--threads", str(a.threads), "--no-resume",
                     *cache, *shlex.split(a.train_args)]
        t0 = time.time()
        _run(train_cmd, out / "runs.log")
        train_s = time.time() - t0
        eval_cmd = [sys.executable, "-m", "training.musicnet", "evaluate", "--checkpoint", str(run_dir / "model.pt"),
                    "--data", a.data, "--split", "test", "--grid", "authors", "--threads", str(a.threads),
                    "--out", str(run_dir / "eval_authors"), *cache]
        _run(eval_cmd, out / "runs.log")
        metrics = json.loads((run_dir / "eval_authors" / "metrics.json").read_text())
        start = _final_record(run_dir / "log.jsonl", "start") or {}
        return {"params": start.get("params"), "steps": a.steps, "test_micro_ap": metrics["ap"],
                "test_log_loss": metrics["loss"], "test_windows": metrics["windows"],
                "test_recordings": metrics["recordings"], "training_time_s": round(train_s, 1),
                "hardware": _cpu_string(a.threads),
                "command": shlex.join(train_cmd[1:]) + " && " + shlex.join(eval_cmd[1:])}

    _run_grid(out, a.archs, a.seeds, one)


def _cpu_string(threads: int) -> str:
    import torch

    from training.loop import hardware_string
    torch.set_num_threads(threads)
    return hardware_string(torch.device("cpu"))


def _mean_std(values: list[float], fmt: str) -> str:
    m = sum(values) / len(values)
    if len(values) < 2:
        return f"{m:{fmt}} (1 seed)"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))  # sample std
    return f"{m:{fmt}} ± {sd:{fmt}}"


def table(out: str | Path) -> str:
    """Markdown table of results.jsonl: one row per model, mean ± sample std over seeds."""
    rows = [json.loads(line) for line in (Path(out) / "results.jsonl").read_text().splitlines()]
    if "val_accuracy" in rows[0]:
        cols = [("val accuracy, flip TTA (%)", "val_accuracy", 100, ".2f"), ("no TTA (%)", "val_accuracy_no_tta", 100, ".2f")]
    else:
        cols = [("test micro-AP", "test_micro_ap", 1, ".3f"), ("test log loss", "test_log_loss", 1, ".4f")]
    cols.append(("training time per run (s)", "training_time_s", 1, ".0f"))
    lines = ["| model | parameters | seeds | " + " | ".join(c[0] for c in cols) + " |", "|---" * (3 + len(cols)) + "|"]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["seed"])
        cells = [_mean_std([r[key] * scale for r in rs], fmt) for _, key, scale, fmt in cols]
        lines.append(f"| {arch} | {rs[0]['params']:,} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    seeds = {"type": lambda s: [int(x) for x in s.split(",")], "default": [0, 1, 2]}
    c = sub.add_parser("cifar", help="paper preset, complex vs real ResNet")
    c.add_argument("--variant", choices=["WS", "IB", "DN"], default="WS")
    c.add_argument("--blocks-per-stage", type=int, default=0, help="0: the variant's own count")
    c.add_argument("--train-limit", type=int, default=0, help="first N training images; 0: all 45,000")
    c.add_argument("--epochs", type=int, default=200, help="the paper's lr steps are stretched to this length")
    c.add_argument("--data", default="../shared/data/cifar-10-batches-py")
    c.add_argument("--archs", type=lambda s: s.split(","), default=list(CIFAR_ARCHS))
    c.add_argument("--seeds", **seeds)
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--out", required=True)
    m = sub.add_parser("musicnet", help="paper preset, deep complex vs deep real (authors' layer plans)")
    m.add_argument("--data", required=True, help="a MusicNet-layout folder (train_data/, train_labels/, test_...)")
    m.add_argument("--steps", type=int, default=200_000)
    m.add_argument("--archs", type=lambda s: s.split(","), default=list(MUSICNET_ARCHS))
    m.add_argument("--seeds", **seeds)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--cache-dir", default=None)
    m.add_argument("--out", required=True)
    for p in (c, m):
        p.add_argument("--train-args", default="", help="more flags for every training command, e.g. "
                                                        "'--activation zrelu' or '--device cuda'")
    t = sub.add_parser("table", help="print the markdown table of a finished (or partial) grid")
    t.add_argument("out")
    a = ap.parse_args(argv)
    if a.cmd == "cifar":
        run_cifar(a)
    elif a.cmd == "musicnet":
        run_musicnet(a)
    if (Path(a.out) / "results.jsonl").exists():
        print(table(a.out))


if __name__ == "__main__":
    main()
