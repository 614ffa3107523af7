"""benchmarks/complex_speed.py on tiny settings: it runs, prints its tables and a JSON line of headline numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_complex_speed_runs_and_reports(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.complex_speed", "--batch-size", "2", "--bn-batch", "2",
                           "--steps", "1", "--repeats", "1", "--threads", "1", "--profile", "--top", "3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for heading in ("## (a) complex BN", "## (b) training step", "## --profile",
                    "### time per training step by layer kind"):
        assert heading in out, heading
    assert "complex/real time per epoch: equal params" in out

    result = json.loads(out.strip().splitlines()[-1])
    assert [r["shape"] for r in result["bn"]["rows"]] == ["B2 C32 32x32", "B2 C64 16x16", "B2 C128 8x8", "B2 C256 4x4"]
    assert all(r[k] > 0 for r in result["bn"]["rows"] for k in ("old", "new", "real"))
    models = {r["model"]: r for r in result["training"]}
    assert set(models) == {"complex_resnet9", "real, equal params", "real, equal FLOPs", "complex, old BN"}
    # The twins are what the benchmark says: equal parameters (within 0.2%) and equal multiply-adds (within 1%).
    cx = models["complex_resnet9"]
    assert abs(models["real, equal params"]["params"] / cx["params"] - 1) < 0.002
    assert abs(models["real, equal FLOPs"]["gmacs"] / cx["gmacs"] - 1) < 0.01
    for r in models.values():
        assert r["s_per_epoch"] > 0 and abs(r["s_per_epoch"] - 45_000 / r["images_per_s"]) < 1e-6 * r["s_per_epoch"]
    assert result["complex_over_real_equal_flops"] == cx["s_per_epoch"] / models["real, equal FLOPs"]["s_per_epoch"]
    shares = result["profile_ms_per_step"]["complex_resnet9"]
    assert shares["conv/linear"] > 0 and shares["batch norm"] > 0
    parts = sum(v for k, v in shares.items() if k != "total")
    assert abs(parts - shares["total"]) < 1e-6 * shares["total"]
