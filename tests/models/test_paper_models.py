"""The paper-faithful models: layer plans and parameter counts against counts derived from the authors' code
(ChihebTrabelsi/deep_complex_networks: musicnet/musicnet/models/__init__.py and models/complex/__init__.py for
MusicNet, scripts/training.py for CIFAR), activations, init and BN options.

Counting rules of that Keras code, used below. Counts here are trainable parameters; Keras' count_params()
also counts BN moving statistics (2C for BatchNormalization, 5C for ComplexBN), given where the paper compares.
- Conv1D(f, k) on c channels: f*c*k + f (bias on by default).  ComplexConv1D(f, k) on c complex channels
  (2c real): real and imaginary kernels 2*f*c*k, bias 2f.
- BatchNormalization(C): gamma, beta = 2C.  ComplexBN(C complex): gamma_rr, gamma_ii, gamma_ri (3C), beta (2C) = 5C.
- Dense(u) on d inputs: d*u + u.  ComplexDense(u) on d real inputs (d/2 complex): 2*(d/2)*u + 2u.
- 'same' padding: L -> L/s; 'valid': L -> (L - k)//s + 1; pooling p stride s: (L - p)//s + 1.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.checkpoint import build_model, count_parameters
from models.cifar import AUTHORS_OPTIONS, ComplexResNet, RealResNet, paper_resnet_config
from models.complex import ComplexBatchNorm1d, ComplexBatchNorm2d, ComplexConv1d, CReLU, ModReLU, ZReLU
from models.transcriber import AUTHORS_MUSICNET_ARCHS, AuthorsMusicNet


def conv(f, c, k):
    return f * c * k + f


def cconv(f, c, k):
    return 2 * f * c * k + 2 * f


def dense(d, u):
    return d * u + u


def valid(length, k, s):
    return (length - k) // s + 1


def deep_complex_count(length: int) -> int:
    """get_deep_convnet (complex): 'same' convs 16 k6 s2, 32 k3 s2, 64, 64, 128 (no BN), 128; avg-pool 2 after
    all but the fifth; Dense 2048; Dense 84. Input: `length` FFT bins, one complex channel."""
    n = cconv(16, 1, 6) + 5 * 16 + cconv(32, 16, 3) + 5 * 32 + cconv(64, 32, 3) + 5 * 64 + cconv(64, 64, 3) + 5 * 64
    n += cconv(128, 64, 3) + cconv(128, 128, 3) + 5 * 128
    out_len = length // 2 ** 7  # two stride-2 'same' convs and five pools halve the length 7 times
    return n + dense(out_len * 2 * 128, 2048) + dense(2048, 84)


def deep_real_count(length: int) -> int:
    """get_deep_convnet (real): 'valid' convs 64 k7 s3, 64 k3 s2, 128, 128, 256 (no BN), 256; max-pool 2."""
    n, L = 0, length
    for f, c, k, s, bn, pool in [(64, 1, 7, 3, True, True), (64, 64, 3, 2, True, True), (128, 64, 3, 1, True, True),
                                 (128, 128, 3, 1, True, True), (256, 128, 3, 1, False, False),
                                 (256, 256, 3, 1, True, True)]:
        n += conv(f, c, k) + (2 * f if bn else 0)
        L = valid(L, k, s)
        L = valid(L, 2, 2) if pool else L
    return n + dense(L * 256, 2048) + dense(2048, 84)


def shallow_count(length: int, complex_valued: bool) -> int:
    """get_shallow_convnet: one 'valid' conv k512 s16 (32 complex / 64 real filters), pool 4 stride 2,
    dense 2048, 84 outputs (ComplexDense in the complex model, whose real part is the output)."""
    L = valid(valid(length, 512, 16), 4, 2)
    if complex_valued:
        return cconv(32, 1, 512) + (2 * (L * 64 // 2) * 2048 + 2 * 2048) + (2 * 2048 * 84 + 2 * 84)
    return conv(64, 1, 512) + dense(L * 64, 2048) + dense(2048, 84)


BN_STATS = {"musicnet_deep_complex": 5 * (16 + 32 + 64 + 64 + 128), "musicnet_deep_real": 2 * (64 + 64 + 128 + 128 + 256)}


@pytest.mark.parametrize("arch, config, derived", [
    ("musicnet_deep_complex", {"fft_bins": "full"}, deep_complex_count(4096)),     # the code: 17.1M
    ("musicnet_deep_complex", {}, deep_complex_count(2048)),                       # paper text: 8.8M
    ("musicnet_deep_real", {}, deep_real_count(4096)),                             # paper and code: 10.0M
    ("musicnet_shallow_complex", {}, shallow_count(4096, True)),
    ("musicnet_shallow_real", {}, shallow_count(4096, False)),
])
def test_musicnet_parameter_counts_match_the_authors_code(arch, config, derived):
    model = build_model(arch, config)
    measured = count_parameters(model)
    print(f"{arch} {config}: measured {measured:,}, derived {derived:,}")
    assert measured == derived


def test_musicnet_counts_against_the_paper_and_code_totals():
    # With Keras' moving statistics counted, as model.count_params() printed them.
    assert round((deep_complex_count(4096) + BN_STATS["musicnet_deep_complex"]) / 1e6, 1) == 17.1
    assert round((deep_complex_count(2048) + BN_STATS["musicnet_deep_complex"]) / 1e6, 1) == 8.8
    assert round((deep_real_count(4096) + BN_STATS["musicnet_deep_real"]) / 1e6, 1) == 10.0


def test_deep_layer_plans():
    cx = build_model("musicnet_deep_complex", {"dense": 8})
    convs = [m for m in cx.features if isinstance(m, ComplexConv1d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == \
        [(16, 6, 2), (32, 3, 2), (64, 3, 1), (64, 3, 1), (128, 3, 1), (128, 3, 1)]
    assert sum(isinstance(m, ComplexBatchNorm1d) for m in cx.features) == 5  # none after the fifth conv
    assert sum(isinstance(m, nn.AvgPool1d) for m in cx.features) == 5
    assert all(c.init_mode == "independent" for c in convs)  # complex_independent, as the authors
    assert cx.features[1].eps == 1e-4  # ComplexBN's epsilon there
    real = build_model("musicnet_deep_real", {"dense": 8})
    rconvs = [m for m in real.features if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in rconvs] == \
        [(64, 7, 3, 0), (64, 3, 2, 0), (128, 3, 1, 0), (128, 3, 1, 0), (256, 3, 1, 0), (256, 3, 1, 0)]
    assert sum(isinstance(m, nn.MaxPool1d) for m in real.features) == 5
    assert sum(isinstance(m, nn.BatchNorm1d) for m in real.features) == 5
    assert real.input == "fft" and real.length == 4096 and cx.length == 2048


@pytest.mark.parametrize("arch", AUTHORS_MUSICNET_ARCHS)
def test_musicnet_models_follow_the_transcription_contract(arch):
    model = build_model(arch, {"dense": 8}).eval()
    assert model.frames_per_window == 1 and model.pitches == list(range(21, 105)) and model.sample_rate == 11000
    x = torch.randn(3, model.frames_per_window * model.hop_length + 2 * model.context)
    y = model(x)
    assert y.shape == (3, 1, 84) and torch.isfinite(y).all()
    # the output bias starts at -5, as the authors' Constant(-5)
    with torch.no_grad():
        assert float(torch.sigmoid(model(torch.zeros_like(x))).mean()) < 0.05


def test_shallow_models_take_raw_audio():
    sc = build_model("musicnet_shallow_complex", {"dense": 8})
    assert sc.input == "raw"
    z = sc.features_input(torch.randn(2, 4096))
    assert z.shape == (2, 2, 4096) and (z[:, 1] == 0).all()  # the audio as the real part, imaginary zero
    assert isinstance(build_model("musicnet_shallow_real", {"dense": 8}).features[2], nn.MaxPool1d)


@pytest.mark.parametrize("activation, cls", [("crelu", CReLU), ("modrelu", ModReLU), ("zrelu", ZReLU)])
def test_activation_is_selectable(activation, cls):
    for arch in ("musicnet_deep_complex", "musicnet_shallow_complex", "musicnet_paper_complex"):
        cfg = {"dense": 8, "activation": activation}
        if arch == "musicnet_paper_complex":
            cfg["filters"] = [2, 2, 2, 2, 2, 2]
        model = build_model(arch, cfg)
        assert any(isinstance(m, cls) for m in model.modules())
        assert torch.isfinite(model(torch.randn(2, 4096))).all()
    resnet = ComplexResNet(width=2, blocks_per_stage=1, activation=activation)
    assert any(isinstance(m, cls) for m in resnet.modules()) and resnet(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        AuthorsMusicNet(activation="tanh")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR: the authors' ResNet topology (scripts/training.py, getResnetModel)

def authors_resnet_count(sf: int, n: int, kind: str, classes: int = 10) -> int:
    """learnConcatRealImagBlock: (BN(3) + 1x1 conv 3->3, no bias) twice = 2*(6 + 9). conv1 3x3 + BN.
    Stage 2: n regular blocks at sf; stages 3 and 4: a projection block (its convs keep the input width w, a
    strided 1x1 conv w->w, concatenated -> 2w) then n - 1 regular blocks at 2w. A regular block: BN, conv 3x3,
    BN, conv 3x3. No BN before the average pooling; Dense(classes) on [real | imag]. Convs have no bias.
    Complex: conv 3x3 c->f = 2*9*c*f, BN 5 per complex channel. Real: conv 9*c*f, BN 2 per channel, and its
    first conv sees [image | learned] = 6 channels (the authors' code concatenates for both models)."""
    cx = kind == "complex"
    k3 = (lambda c, f: 2 * 9 * c * f) if cx else (lambda c, f: 9 * c * f)
    k1 = (lambda c, f: 2 * c * f) if cx else (lambda c, f: c * f)
    bn = (lambda c: 5 * c) if cx else (lambda c: 2 * c)
    total = 2 * (6 + 9) + k3(3 if cx else 6, sf) + bn(sf)
    regular = lambda w: 2 * bn(w) + 2 * k3(w, w)
    projection = lambda w: 2 * bn(w) + 2 * k3(w, w) + k1(w, w)
    total += n * regular(sf) + projection(sf) + (n - 1) * regular(2 * sf) + projection(2 * sf) + (n - 1) * regular(4 * sf)
    return total + dense((2 if cx else 1) * 4 * sf, classes)


@pytest.mark.parametrize("variant", ["WS", "IB", "DN"])
@pytest.mark.parametrize("kind, cls", [("complex", ComplexResNet), ("real", RealResNet)])
def test_authors_resnet_counts(variant, kind, cls):
    cfg = paper_resnet_config(variant, kind, authors=True)
    model = cls(**cfg)
    measured = count_parameters(model)
    print(f"{variant} {kind} authors' topology: {measured:,}")
    assert measured == authors_resnet_count(cfg["width"], cfg["blocks_per_stage"], kind)
    assert len(model.blocks) == 3 * cfg["blocks_per_stage"]  # the projection block is one of each stage's n
    if kind == "complex":  # the block count is the one nearest the paper's ~1.7M budget for this topology
        w, n = cfg["width"], cfg["blocks_per_stage"]
        assert abs(measured - 1.7e6) < min(abs(authors_resnet_count(w, m, kind) - 1.7e6) for m in (n - 1, n + 1))


def test_authors_resnet_options():
    model = ComplexResNet(width=2, blocks_per_stage=2, **AUTHORS_OPTIONS)
    assert isinstance(model.head_norm, nn.Identity)
    assert model.blocks[2].downsample and model.blocks[4].downsample and not model.blocks[3].downsample
    bns = [m for m in model.modules() if isinstance(m, (ComplexBatchNorm2d, nn.BatchNorm2d))]
    assert bns and all(m.eps == 1e-4 for m in bns)
    assert all(m.init_mode == "independent" for m in model.modules() if hasattr(m, "init_mode"))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    real = RealResNet(width=4, blocks_per_stage=1, learned_input=True, **AUTHORS_OPTIONS)
    w = real.stem[0].weight.flatten(1)  # (4, 54): orthogonal rows with gain sqrt(2)
    assert real.stem[0].in_channels == 6
    assert torch.allclose(w @ w.T, 2 * torch.eye(4), atol=1e-5)
    assert real(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # defaults unchanged: the original layout (3n + 2 blocks, final BN-act)
    default = ComplexResNet(width=2, blocks_per_stage=2)
    assert len(default.blocks) == 8 and not isinstance(default.head_norm, nn.Identity)
