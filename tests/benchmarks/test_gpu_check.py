"""benchmarks/gpu_check.py: the dry run on the CPU (every stage, the training stage too), and the rules that make
a lent GPU's minutes count: a failing or overrunning stage is recorded and the next one runs; results are on disk
after every stage."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from tests.training.test_cifar_data import write_cifar10_folder

REPO = Path(__file__).resolve().parents[2]


def table_rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| stage |")]


@pytest.mark.slow
def test_cpu_dry_run_runs_every_stage_and_trains_both_twins(tmp_path):
    data = write_cifar10_folder(tmp_path / "data", per_batch=64)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--train", "--out", str(out),
                        "--cifar", str(data)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [s["stage"] for s in report["stages"]] == [*gpu_check.CHECK_STAGES, "train"]
    assert all(s["status"] == "ok" and s["rows"] for s in report["stages"])
    rows = table_rows((out / "gpu_check.md").read_text())
    assert rows and all(len(row) == 4 and row[3] == report["hardware"] and "CPU" in row[3] for row in rows)
    assert (out / "gpu_check.md").read_text() in r.stdout  # the one table is printed too
    by = {s["stage"]: s for s in report["stages"]}
    assert by["cuda_tests"]["counts"]["skipped"] >= 3  # no GPU here: the cuda tests were found and skipped
    assert set(by["classify"]["results"]) >= {"batched 1", "batch 1 1", "batched 4", "batch 1 4", "ratio 4"}
    assert by["transcribe"]["audio_hours_per_hour"] > 0
    assert by["stream"]["levels"] and by["stream"]["levels"][0]["frames"] > 0
    assert by["complex_speed"]["results"]["eager"]["complex_over_real_equal_flops"] > 0
    train = by["train"]
    assert train["throughput_images_per_s"] > 0 and train["epochs"] >= 1  # epochs from the measured throughput
    for name, arch in (("complex", "complex_resnet9"), ("real", "real_resnet9")):
        blob = torch.load(out / f"cifar10_{name}.pt", weights_only=True)
        assert blob["arch"] == arch and blob["meta"]["train_config"]["ema"] == 0.995
        assert "training.cifar" in train["results"][name]["command"] and (out / f"train_{name}.log").is_file()


def _args(tmp_path, **kw) -> argparse.Namespace:
    base = {"cpu": True, "out": str(tmp_path), "budget": 60.0, "budget_scale": 1.0, "stages": None, "train": False,
            "train_only": False, "argv": [], "cifar_pack": []}
    return argparse.Namespace(**{**base, **kw})


def test_failed_and_overrunning_stages_are_recorded_and_the_next_runs(tmp_path, monkeypatch):
    calls = []

    def boom(run, budget):
        calls.append("boom")
        raise ValueError("broken on purpose")

    def hang(run, budget):
        calls.append("hang")
        time.sleep(30)  # interrupted by the stage's alarm
        return {"rows": []}

    def fine(run, budget):
        calls.append("fine")
        # what earlier stages recorded is on disk before this one starts
        done = json.loads((Path(run.out) / "gpu_check.json").read_text())["stages"]
        return {"rows": [("earlier stages on disk", str([s["status"] for s in done]))]}

    monkeypatch.setattr(gpu_check, "STAGES", {"env": boom, "cuda_tests": hang, "classify": fine, "stream": fine})
    monkeypatch.setattr(gpu_check, "GPU_BUDGETS", {"env": 10, "cuda_tests": 1.5, "classify": 10, "stream": 10})
    t0 = time.monotonic()
    report = gpu_check.run_stages(_args(tmp_path, stages=["env", "cuda_tests", "classify"]))
    assert time.monotonic() - t0 < 15
    assert calls == ["boom", "hang", "fine"]
    status = {s["stage"]: s for s in report["stages"]}
    assert status["env"]["status"] == "failed" and "broken on purpose" in status["env"]["error"]
    assert status["cuda_tests"]["status"] == "timeout" and status["cuda_tests"]["seconds"] < 5
    assert status["classify"]["status"] == "ok"
    assert status["classify"]["rows"][0][1] == "['failed', 'timeout']"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "**failed**" in md and "**timeout**" in md


def test_stages_past_the_budget_are_skipped(tmp_path, monkeypatch):
    def slow(run, budget):
        time.sleep(1.2)
        return {"rows": [("slept", "1.2 s")]}

    monkeypatch.setattr(gpu_check, "STAGES", {"env": slow, "classify": slow})
    monkeypatch.setattr(gpu_check, "GPU_BUDGETS", {"env": 10, "classify": 10})
    report = gpu_check.run_stages(_args(tmp_path, budget=5.5, stages=["env", "classify"]))
    assert [s["status"] for s in report["stages"]] == ["ok", "skipped"]


def test_prepare_plans_calls_under_the_upload_limit(tmp_path, monkeypatch):
    """The carry lists --prepare prints: wheels + the first parts with the checks, the rest after, training last."""
    dest = tmp_path / "gpu"
    (dest / "wheels").mkdir(parents=True)
    (dest / "wheels" / "x-1-py3-none-any.whl").write_bytes(b"0" * 7_000_000)
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    monkeypatch.setattr(gpu_check, "tree_bytes", lambda: 17_000_000)
    real_run = subprocess.run
    monkeypatch.setattr(gpu_check.subprocess, "run",  # no pip download in the test
                        lambda cmd, **kw: None if "pip" in cmd else real_run(cmd, **kw))
    from training.data.cifar import PACK_MANIFEST, pack_cifar10
    info = pack_cifar10(write_cifar10_folder(tmp_path / "data", per_batch=40), dest / "cifar", parts=8)
    part = max(p["bytes"] for p in info["parts"])
    manifest = (dest / "cifar" / PACK_MANIFEST).stat().st_size
    monkeypatch.setattr(gpu_check, "UPLOAD_LIMIT", 24_000_000 + manifest + int(2.5 * part))  # 2 parts a call
    plan = gpu_check.prepare(dest, tmp_path / "unused", parts=8)
    calls = plan["calls"]
    assert len(calls) >= 2 and calls[0]["carry"][0] == "gpu/wheels"
    assert all(c["mb"] <= gpu_check.UPLOAD_LIMIT / 1e6 and len(c["carry"]) <= 8 for c in calls)
    parts = [c.rsplit("/", 1)[1] for call in calls for c in call["carry"] if c.endswith(".webp")]
    assert parts == [f"part-{k}.webp" for k in range(8)]  # each part exactly once, in order
    assert all(call["carry"][-1 if i else 1].startswith("gpu/cifar/") for i, call in enumerate(calls))
    assert "pip install" in calls[0]["command"] and "--budget 330" in calls[0]["command"]
    assert "--train-only" in calls[-1]["command"] and "GIT_COMMIT=" in calls[-1]["command"]
