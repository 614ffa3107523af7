"""The README's newcomer path, run as written: transcribe a recording from Python, with ``dcn-transcribe``, over HTTP
and over the WebSocket, and read the MIDI with a third-party library (mido).

The blocks are the README's fenced code blocks after ``<!-- newcomer: NAME -->`` markers, run unchanged in a
temporary folder that holds ``piece.wav`` (a synthesised C major chord), with three differences a reader would not
see: the install line is not run (this checkout is already importable: PYTHONPATH), the console commands are this
checkout's ``[project.scripts]`` entry points (so the test does not depend on what an earlier install put on
PATH), and the service listens on a free port (``DCN_PORT``, ``DCN_URL``; ``localhost:8000`` in the block is
rewritten to it). The models load without warm-up on one thread, to keep the test within a minute.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks() -> dict[str, str]:
    found = re.findall(r"<!-- newcomer: (\w+) -->\n```\w*\n(.*?)```", README, re.DOTALL)
    return dict(found)


def chord(seconds: float = 2.0, sr: int = 16000, pitches=(60, 64, 67)) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    on = (t >= 0.2) & (t < 1.4)
    x = sum(np.sin(2 * np.pi * k * 440 * 2 ** ((p - 69) / 12) * t) / k for p in pitches for k in range(1, 5))
    return (0.1 * x * on * np.exp(-1.5 * np.clip(t - 0.2, 0, None))).astype(np.float32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    work = tmp_path_factory.mktemp("newcomer")
    sf.write(work / "piece.wav", chord(), 16000)
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would leave the venv
    (bin_dir / "python").chmod(0o755)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"dcn-transcribe", "dcn-serve"} <= set(scripts)
    for name, target in scripts.items():  # what pip writes for an entry point, pointing at this checkout
        module, func = target.split(":")
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
        script.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(work), "OMP_NUM_THREADS": "1",
           "DCN_PORT": str(port), "DCN_URL": f"http://127.0.0.1:{port}", "DCN_WARMUP": "false",
           "DCN_TORCH_THREADS": "1", "LANG": "C.UTF-8"}
    return work, env


def run_block(code: str, work: Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    # Output to files, not pipes: a background server would hold a pipe open after the block ends.
    with open(work / ".out", "w+") as out, open(work / ".err", "w+") as err:
        proc = subprocess.Popen(["bash", "-e", "-c", code], cwd=work, env=env, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:  # whatever the block started (dcn-serve &) goes with it, pass or fail
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def test_readme_has_the_newcomer_blocks():
    assert list(blocks()) == ["install", "python", "shell", "service"]
    assert blocks()["install"].strip() == "pip install -e ."


def test_python_api_block(workdir):
    work, env = workdir
    (work / "newcomer.py").write_text(blocks()["python"])
    p = run_block("python newcomer.py", work, env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert all(line.startswith("{'onset': ") for line in lines[:3])
    m = re.fullmatch(r"(\d+) notes; lowest (\d+) highest (\d+)", lines[-1])
    assert m and int(m[1]) >= 3 and int(m[2]) <= 60 and int(m[3]) >= 67, lines  # the chord's C, E and G at least


def test_command_line_block(workdir):
    work, env = workdir
    p = run_block(blocks()["shell"], work, env)
    assert p.returncode == 0, p.stderr
    rows = (work / "piece.csv").read_text().splitlines()
    assert rows[0] == "onset,offset,pitch,confidence,velocity" and len(rows) >= 4  # the served model has velocity
    assert {60, 64, 67} <= {int(r.split(",")[2]) for r in rows[1:]}
    assert (work / "out" / "piece.mid").is_file() and sf.info(work / "out" / "piece.sonified.wav").duration > 1


def test_http_and_websocket_block(workdir):
    work, env = workdir
    port = env["DCN_PORT"]
    code = blocks()["service"].replace("localhost:8000", f"localhost:{port}")
    p = run_block(code, work, env)
    assert p.returncode == 0, p.stdout + p.stderr
    http_notes = [m.note for m in mido.MidiFile(work / "piece-http.mid") if m.type == "note_on" and m.velocity]
    assert {60, 64, 67} <= set(http_notes)
    assert '"notes":[{"onset"' in p.stdout and '"probabilities"' not in p.stdout  # frames=false
    summary = [line for line in p.stdout.splitlines() if line.startswith("# ") and " notes in " in line]
    assert summary and int(summary[0].split()[1]) >= 3, p.stdout
