"""``python -m bulk`` on a real two-node Ray cluster on this machine: outputs byte for byte the CLI's, a corrupt file
as an error row, a worker killed mid-run, and a re-run that skips everything. Skipped without Ray (the optional
``batch`` extra) except under CI=true, where the suite installs the extra and these tests must run."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

if os.environ.get("CI") == "true":
    import ray  # noqa: F401 - CI installs '.[batch]': a missing Ray is a failure there, not a skip
else:
    pytest.importorskip("ray")

from benchmarks.bulk_throughput import (
    ROOT,
    differing_outputs,
    make_recordings,
    ray_cluster,
    ray_env,
    run_bulk,
    run_cli,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster((1, 1)) as address:  # two nodes, one CPU each; `ray stop --force` pass or fail
        yield address


def test_transcribe_on_two_nodes_survives_a_killed_worker_and_resumes(tmp_path, cluster):
    make_recordings(tmp_path / "in", 8, 8.0, corrupt=1)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        failed, _ = run_cli([str(tmp_path / "in")], tmp_path / "cli", ["mid", "csv", "npz"])
    assert failed == [str(tmp_path / "in" / "broken0.wav")]

    first, (_, before) = run_bulk([str(tmp_path / "in")], tmp_path / "out", cluster, workers=2, kill=True)
    assert (first["done"], first["failed"], first["skipped"]) == (8, 1, 0)
    # each file once through the model (401 frames: 3 windows of 200); a killed attempt returns no rows
    assert first["windows"] == 8 * 3
    rows = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 9
    workers = {int(r["worker"].rsplit(":", 1)[1]) for r in rows}
    assert workers - set(before), "no row came from the worker Ray started after the kill"
    broken = next(r for r in rows if r["path"].endswith("broken0.wav"))
    assert broken["status"] == "failed" and "cannot decode" in broken["reason"]
    assert len(list((tmp_path / "cli").iterdir())) == 24
    assert differing_outputs(tmp_path / "cli", tmp_path / "out") == []
    assert abs(first["audio_hours_done"] - 8 * 8 / 3600) < 1e-3
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("rec*")}

    second, _ = run_bulk([str(tmp_path / "in")], tmp_path / "out", cluster, workers=2)
    assert (second["done"], second["failed"], second["skipped"]) == (0, 1, 8)
    assert second["windows"] == 0 and second["model_loads"] == 0  # no model work at all
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("rec*")} == mtimes
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"] == 8


def test_classify_on_the_cluster_writes_parquet_and_resumes(tmp_path, cluster):
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cmd = [sys.executable, "-m", "bulk", "classify", str(tmp_path / "*.png"), str(tmp_path / "bad.jpg"),
           "--out", str(tmp_path / "r.parquet"), "--address", cluster, "--top-k", "2", "--no-progress"]
    for expect_skipped in (0, 4):
        p = subprocess.run(cmd, check=False, env=ray_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert p.returncode == 2, p.stderr[-2000:]  # one input failed; the others are all done
        summary = json.loads(p.stdout.splitlines()[-1])
        assert (summary["failed"], summary["skipped"], summary["done"]) == (1, expect_skipped, 4 - expect_skipped)
        table = pq.read_table(tmp_path / "r.parquet").to_pylist()
        assert sorted(r["status"] for r in table) == ["done"] * 4 + ["failed"]
        assert all(len(r["labels"]) == 2 for r in table if r["status"] == "done")
    assert summary["model_loads"] == 0
