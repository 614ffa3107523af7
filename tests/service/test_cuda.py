"""The service on the GPU (DCN_DEVICE=cuda) with both shipped checkpoints: same answers as on the CPU.

Marked ``cuda`` (``pytest -m cuda`` runs only these and the other GPU checks; benchmarks/gpu_check.py runs them on
a lent GPU). Skipped where no CUDA device is present, so ``make test`` stays green on CPU machines.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import TestClient, audio_bytes, image_bytes, tone

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _serve(device: str) -> dict:
    """Classify four images, transcribe a 440 Hz tone and stream it, on ``device``, with the shipped models."""
    from service.app import create_app
    from service.settings import Settings
    s = Settings(device=device, warmup=device == "cuda")  # the warm-up is part of what the GPU must survive
    missing = [p.name for p in (s.classifier_checkpoint, s.transcriber_checkpoint) if not p.is_file()]
    if missing:
        pytest.skip(f"shipped checkpoints missing: {missing}")
    rng = np.random.default_rng(0)
    images = [image_bytes("PNG", tuple(int(v) for v in rng.integers(0, 256, 3)), size=(32, 32)) for _ in range(4)]
    with TestClient(create_app(s)) as c:
        devices = {m["name"]: m["device"] for m in c.get("/models").json()["models"]}
        r = c.post("/classify", files=[("file", (f"{i}.png", b)) for i, b in enumerate(images)])
        assert r.status_code == 200, r.text
        probs = [res["probabilities"] for res in r.json()["results"]]
        r = c.post("/transcribe", files={"file": ("a.wav", audio_bytes(tone(seconds=2.0, sr=16000), sr=16000))})
        assert r.status_code == 200, r.text
        notes = [n["pitch"] for n in r.json()["notes"]]
    return {"devices": devices, "probs": probs, "notes": notes}


def test_service_on_cuda_matches_cpu_with_the_shipped_checkpoints():
    gpu, cpu = _serve("cuda"), _serve("cpu")
    assert set(gpu["devices"].values()) == {"cuda"} and set(cpu["devices"].values()) == {"cpu"}
    for g, c in zip(gpu["probs"], cpu["probs"]):  # bf16 autocast on the GPU, fp32 on the CPU
        assert max(g, key=g.get) == max(c, key=c.get)
        assert max(abs(g[k] - c[k]) for k in g) < 0.05
    assert gpu["notes"] == cpu["notes"] and 69 in gpu["notes"]  # the 440 Hz tone is A4
