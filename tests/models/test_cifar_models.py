"""The CIFAR architectures: the paper's parameter budgets, shapes, complex layout, registration, classify()."""
from __future__ import annotations

import pytest
import torch

from models.checkpoint import build_model, load_checkpoint, save_checkpoint
from models.cifar import (
    PAPER_VARIANTS,
    ComplexResNet,
    ComplexResNet9,
    RealResNet,
    RealResNet9,
    classify,
    complex_cat,
    count_parameters,
    paper_resnet_config,
)
from models.complex import ComplexBatchNorm2d, ComplexConv2d


@pytest.mark.parametrize("variant", sorted(PAPER_VARIANTS))
def test_paper_variants_have_the_paper_budget(variant):
    complex_params = count_parameters(ComplexResNet(**paper_resnet_config(variant, "complex")))
    real_params = count_parameters(RealResNet(**paper_resnet_config(variant, "real")))
    print(f"{variant}: complex {complex_params / 1e6:.3f}M, real {real_params / 1e6:.3f}M")
    assert 1.6e6 < complex_params < 1.9e6  # paper: ~1.7M for each shape
    assert abs(real_params - complex_params) / complex_params < 0.05  # the baseline's budget matches


def test_paper_resnet_shapes_and_depth():
    deep = paper_resnet_config("DN")
    wide = paper_resnet_config("WS")
    assert deep["blocks_per_stage"] > wide["blocks_per_stage"] and deep["width"] < wide["width"]
    model = ComplexResNet(width=4, blocks_per_stage=1)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert isinstance(model.stem[0], ComplexConv2d) and isinstance(model.stem[1], ComplexBatchNorm2d)
    assert model.fc.in_features == 2 * 16  # real and imaginary parts of 4 * width complex channels


def test_resnet9_is_complex_throughout_and_small_enough():
    model = ComplexResNet9()
    params = count_parameters(model)
    print(f"complex_resnet9: {params / 1e6:.3f}M parameters")
    assert params * 4 < 25e6  # fp32 checkpoint under the 25 MB limit
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (1, 1) for c in convs)  # only the learned-imaginary 1x1 convs are real
    assert sum(isinstance(m, ComplexConv2d) for m in model.modules()) == 8
    real = count_parameters(RealResNet9())
    assert abs(real - params) / params < 0.01  # the real twin has the same budget


def test_complex_cat_keeps_the_layout():
    a = torch.tensor([[1.0, 2.0, 10.0, 20.0]]).view(1, 4, 1, 1)  # 2 complex channels: 1+10i, 2+20i
    b = torch.tensor([[3.0, 30.0]]).view(1, 2, 1, 1)  # 1 complex channel: 3+30i
    assert complex_cat(a, b).flatten().tolist() == [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]


def test_registered_and_round_trip(tmp_path):
    for arch, config in (("complex_resnet9", {"widths": [4, 8, 8, 16]}), ("real_resnet9", {"widths": [4, 8, 8, 16]}),
                         ("complex_resnet", {"width": 4, "blocks_per_stage": 1}),
                         ("real_resnet", {"width": 4, "blocks_per_stage": 1})):
        model = build_model(arch, config).eval()
        path = save_checkpoint(tmp_path / f"{arch}.pt", model, arch, config, {"task": "image-classification"})
        loaded, meta = load_checkpoint(path)
        x = torch.rand(3, 3, 32, 32)
        assert torch.allclose(model(x), loaded(x), atol=1e-6) and meta["arch"] == arch
        assert torch.load(path, weights_only=True)["config"] == config


def test_classify_contract():
    model = ComplexResNet9(widths=[4, 8, 8, 16]).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    p = classify(model, images)
    assert p.shape == (5, 10) and p.dtype == torch.float32
    assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
    # flip TTA = average of the two logits
    x = images.float() / 255
    with torch.no_grad():
        expected = ((model(x) + model(x.flip(3))) / 2).softmax(1)
    assert torch.allclose(p, expected, atol=1e-5)
    assert torch.allclose(classify(model, images, batch_size=2), p, atol=1e-4)  # conv algorithms vary with batch size
    with pytest.raises(ValueError, match="uint8"):
        classify(model, images.float())
