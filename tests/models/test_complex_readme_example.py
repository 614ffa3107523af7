"""The complex-layer examples of README.md, run exactly as written there (found by their marker comments)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str) -> str:
    """The ```python block right after ``<!-- test: marker -->`` in README.md."""
    found = re.search(rf"<!-- test: {re.escape(marker)} -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL)
    if found is None:
        pytest.fail(f"README.md has no python block after <!-- test: {marker} -->")
    return found.group(1)


def test_layers_example_runs():
    namespace: dict = {}
    exec(compile(readme_block("complex-layers-example"), "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["y"].dtype == torch.complex64 and namespace["y"].shape == (8, 32, 32, 32)


def test_training_example_trains_from_native_complex_input(capsys):
    namespace: dict = {}
    exec(compile(readme_block("complex-training-example"), "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    losses, noisy, clean = namespace["losses"], namespace["noisy"], namespace["clean"]
    assert noisy.dtype == torch.complex64 and namespace["model"](noisy).dtype == torch.complex64
    assert losses[-1] < 0.25 * losses[0]
    # better than doing nothing: below the error of the noisy input itself
    assert losses[-1] < (noisy - clean).abs().square().mean().item()
    assert f"loss {losses[0]:.3f} -> {losses[-1]:.3f}" in capsys.readouterr().out
