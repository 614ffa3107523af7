"""A complex ResNet-style stack built from the public blocks exports (torch.export, ONNX) and compiles on CPU."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.complex import CReLU, ComplexBatchNorm2d, ComplexConv2d, ComplexLinear, ComplexMaxPool2d, ModReLU


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = ComplexBatchNorm2d(c), ComplexConv2d(c, c, 3, padding=1)
        self.bn2, self.conv2 = ComplexBatchNorm2d(c), ComplexConv2d(c, c, 3, padding=1)
        self.act = CReLU()

    def forward(self, x):
        return x + self.conv2(self.act(self.bn2(self.conv1(self.act(self.bn1(x))))))


class _Stack(nn.Module):
    def __init__(self, c: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = ComplexConv2d(3, c, 3, padding=1)  # input: real image + zero imaginary part (6 channels)
        self.block = _Block(c)
        self.pool = ComplexMaxPool2d(2)
        self.mod = ModReLU(c, bias_init=-0.1)
        self.head = ComplexLinear(c, classes)

    def forward(self, x):
        x = torch.cat([x, torch.zeros_like(x)], 1)
        x = self.mod(self.pool(self.block(self.stem(x))))
        return self.head(x.mean((2, 3)))[:, :10]


@pytest.fixture(scope="module")
def stack():
    torch.manual_seed(0)
    model = _Stack()
    model.train()
    for _ in range(2):
        model(torch.randn(16, 3, 16, 16))  # non-trivial running statistics
    return model.eval()


def test_torch_export_matches_eager(stack):
    x = torch.randn(4, 3, 16, 16)
    exported = torch.export.export(stack, (x,))
    torch.testing.assert_close(exported.module()(x), stack(x), rtol=1e-5, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime(stack, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(4, 3, 16, 16)
    path = tmp_path / "stack.onnx"
    torch.onnx.export(stack, (x,), str(path), dynamo=True, input_names=["x"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), stack(x), rtol=1e-4, atol=1e-4)


def test_torch_compile_matches_eager_forward_and_backward(stack):
    torch.manual_seed(1)
    model = _Stack().train()
    compiled = torch.compile(model)
    x = torch.randn(8, 3, 16, 16)
    out_c = compiled(x)
    grads_c = torch.autograd.grad(out_c.square().sum(), list(model.parameters()))
    model_e = _Stack().train()
    model_e.load_state_dict(model.state_dict())  # same params; running stats differ by one update, not used in train
    out_e = model_e(x)
    grads_e = torch.autograd.grad(out_e.square().sum(), list(model_e.parameters()))
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("arch,config", [("complex_resnet", {"width": 4, "blocks_per_stage": 1}),
                                         ("complex_resnet9", {"widths": [4, 8, 8, 8]})])
def test_project_complex_resnets_export_to_onnx(arch, config, tmp_path):
    """The architectures the project trains and serves export too (small widths keep this quick)."""
    ort = pytest.importorskip("onnxruntime")
    from models.checkpoint import build_model
    torch.manual_seed(0)
    model = build_model(arch, config).eval()
    x = torch.rand(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)
    path = tmp_path / f"{arch}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)
