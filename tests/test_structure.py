"""The authors' structure for the Bi-Real layout's methods (issue 27, ``block_residual=False``): per-conv
shortcuts only, the block residual they make redundant removed; checked against plain-PyTorch blocks written
from the authors' formulas (docs/methods.md), on ResNet-18's counts and published operations, and through save
and load. The default keeps the block residual, which scored higher fine-tuned from a pretrained parent."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2, resnet18, resnet50
from torchvision.models.resnet import BasicBlock

import quantswap

LAYOUT = ("bireal", "react", "recu", "adabin")
ATOL = 1e-5


def sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)  # sign(0) = +1, as everywhere in quantswap


class TwoBlocks(nn.Module):
    """A stem (conv, BN, ReLU), a torchvision BasicBlock with a stride-2 projection, one without, a head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.block1 = BasicBlock(16, 32, stride=2, downsample=down)
        self.block2 = BasicBlock(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.block2(self.block1(x)).mean((2, 3)))


def _randomize(model: nn.Module) -> None:
    """Every parameter and BN statistic away from its initial value, so a block that skips one differs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight_quantizer" not in name and p.dim() <= 1:
                p.uniform_(0.5, 1.5) if name.endswith(("weight", "alpha", "slope", "positive", "scale")) \
                    else p.uniform_(-0.3, 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)


def _bn(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _per_channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def _binary_conv(method: str, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The authors' binary conv (eval mode), from the formulas of docs/methods.md."""
    w = conv.weight
    if method == "adabin":
        q = conv.input_quantizer
        xb = q.alpha * sign((x - q.beta) / q.alpha) + q.beta
        mu = w.mean((1, 2, 3), keepdim=True)
        sigma = w.var((1, 2, 3), unbiased=False, keepdim=True).sqrt()
        wb = sigma * sign((w - mu) / sigma) + mu
    elif method == "recu":
        xb, wb = sign(x), sign(w - w.mean((1, 2, 3), keepdim=True))  # the scale is the ChannelScale after it
    else:
        shift = _per_channel(conv.input_quantizer.bias) if method == "react" else 0.0
        xb, wb = sign(x + shift), w.abs().mean((1, 2, 3), keepdim=True) * sign(w)
    return F.conv2d(xb, wb, None, conv.stride, conv.padding)


def _after_sum(method: str, block: nn.Module, conv: str, y: torch.Tensor) -> torch.Tensor:
    if method == "react":  # RPReLU: PReLU_β(y − γ) + ζ
        act = getattr(block, f"{conv}_rprelu")
        d = y - _per_channel(act.shift_in)
        return torch.where(d > 0, d, _per_channel(act.slope) * d) + _per_channel(act.shift_out)
    if method == "recu":
        return y.clamp(-1, 1)
    if method == "adabin":
        return _maxout(getattr(block, f"{conv}_maxout"), y)
    return y


def _maxout(act: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return _per_channel(act.positive) * y.clamp_min(0) - _per_channel(act.negative) * (-y).clamp_min(0)


def _authors_block(method: str, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``y1 = act(BN1(conv1(x)) + sc(x))``, ``out = act(BN2(conv2(y1)) + y1)``: no block residual."""
    def branch(conv: str, bn: str, t: torch.Tensor) -> torch.Tensor:
        out = _binary_conv(method, getattr(block, conv), t)
        if method == "recu":
            out = out * _per_channel(getattr(block, f"{conv}_scale").scale)
        return _bn(getattr(block, bn), out)

    sc = getattr(block, "conv1_shortcut", None)
    shortcut = x if sc is None else _bn(sc[2], F.conv2d(F.avg_pool2d(x, 2, ceil_mode=True), sc[1].weight))
    y1 = _after_sum(method, block, "conv1", branch("conv1", "bn1", x) + shortcut)
    return _after_sum(method, block, "conv2", branch("conv2", "bn2", y1) + y1)


@pytest.mark.parametrize("method", LAYOUT)
def test_each_block_is_the_authors_block(method):
    """Every method's swapped network equals the network written by hand from its authors' formulas: the
    stem's activation (ReCU's Hardtanh, AdaBin's Maxout, none for Bi-Real and ReActNet), then each block."""
    bnn = quantswap.binarize(TwoBlocks(), method=method, block_residual=False)
    _randomize(bnn)
    bnn.eval()
    x = torch.randn(2, 3, 16, 16)
    stem = _bn(bnn.bn1, bnn.conv1(x))
    stem = {"recu": lambda t: t.clamp(-1, 1), "adabin": lambda t: _maxout(bnn.relu_maxout, t)}.get(method, lambda t: t)(stem)
    out = _authors_block(method, bnn.block2, _authors_block(method, bnn.block1, stem))
    torch.testing.assert_close(bnn(x), bnn.fc(out.mean((2, 3))), atol=ATOL, rtol=ATOL)
    report = quantswap.get_swap_report(bnn)
    assert report.blocks_rewired == ["block1", "block2"] and not hasattr(bnn.block1, "downsample")


@pytest.mark.parametrize("method", LAYOUT)
def test_resnet18_is_bireal18_sixteen_sums_three_real_projections_and_its_published_operations(method):
    bnn = quantswap.binarize(resnet18(), method=method, block_residual=False)
    sums = [n for n in bnn.graph.nodes if n.op == "call_function" and n.target in (operator.add, operator.iadd)]
    assert len(sums) == 16  # one per binary conv, no block residual
    real_1x1 = [n for n, m in bnn.named_modules() if type(m) is nn.Conv2d and m.kernel_size == (1, 1)]
    assert real_1x1 == [f"layer{i}.0.conv1_shortcut.1" for i in (2, 3, 4)]
    assert quantswap.summary(bnn).ops == pytest.approx(1.63e8, rel=0.01)  # Bi-Real-18's published OPs
    report = quantswap.get_swap_report(bnn)
    assert len(report.blocks_rewired) == 8 and len(report.quantized) == len(report.shortcuts) == 16
    assert not any("downsample" in name for name in [*report.quantized, *report.kept_real])
    assert [n for n in bnn.state_dict() if "downsample" in n] == []
    loss = bnn(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is not None for n, p in bnn.named_parameters() if "weight_quantizer" not in n)


@pytest.mark.parametrize("method", LAYOUT)
def test_the_default_keeps_the_block_residual_as_quantswap_built_before(method):
    bnn = quantswap.binarize(resnet18(), method=method)
    assert quantswap.get_swap_report(bnn).config.block_residual is True
    sums = [n for n in bnn.graph.nodes if n.op == "call_function" and n.target in (operator.add, operator.iadd)]
    assert len(sums) == 16 + 8 and hasattr(bnn.layer2[0], "downsample")
    assert quantswap.get_swap_report(bnn).blocks_rewired == [] and quantswap.get_swap_report(bnn).stem_activations == []
    assert quantswap.summary(bnn).ops == pytest.approx(1.83e8, rel=0.01)


def test_the_projection_shortcut_starts_from_the_pretrained_downsample():
    """The removed 1×1 projection's weights and BN statistics seed the Bi-Real shortcut that replaces it."""
    model = TwoBlocks()
    _randomize(model)
    down_conv, down_bn = model.block1.downsample
    expected_weight, expected_mean = down_conv.weight.clone(), down_bn.running_mean.clone()
    bnn = quantswap.binarize(model, method="react", block_residual=False)
    shortcut = bnn.block1.conv1_shortcut
    assert torch.equal(shortcut[1].weight, expected_weight) and torch.equal(shortcut[2].running_mean, expected_mean)


def test_bottleneck_blocks_are_rewired_too_and_models_without_such_blocks_keep_their_residuals():
    bnn = quantswap.binarize(resnet50(), method="bireal", block_residual=False)
    assert len(quantswap.get_swap_report(bnn).blocks_rewired) == 16
    bnn(torch.randn(2, 3, 32, 32)).sum().backward()
    # MobileNetV2's blocks hold a real depthwise conv (skip_depthwise): not every conv has its own shortcut
    mobile = quantswap.binarize(mobilenet_v2(), method="react", block_residual=False)
    assert quantswap.get_swap_report(mobile).blocks_rewired == []
    reference = quantswap.binarize(mobilenet_v2(), method="react", block_residual=True)
    assert [n.name for n in mobile.graph.nodes] == [n.name for n in reference.graph.nodes]


def test_summary_and_the_report_say_which_structure_was_built():
    bnn = quantswap.binarize(resnet18(), method="recu", block_residual=False)
    assert quantswap.get_swap_report(bnn).stem_activations == ["relu_hardtanh"]
    assert "authors' structure: 8 block residuals removed" in str(quantswap.summary(bnn))
    old = quantswap.binarize(resnet18(), method="recu", block_residual=True)
    assert "block residuals kept (block_residual=True)" in str(quantswap.summary(old))
    with pytest.raises(TypeError, match="block_residual must be True or False"):
        quantswap.config_for("react", block_residual="yes")


def test_a_config_written_before_block_residual_rebuilds_the_structure_it_saved():
    new = quantswap.config_for("react", block_residual=False).to_dict()
    assert new["version"] == 3 and new["block_residual"] is False
    old = {k: v for k, v in new.items() if k != "block_residual"} | {"version": 2}
    assert quantswap.config_from_dict(old).block_residual is True
    irnet = quantswap.config_for("irnet").to_dict() | {"version": 2}
    assert not hasattr(quantswap.config_from_dict(irnet), "block_residual")


@pytest.mark.parametrize("block_residual", [False, True])
def test_save_and_load_keep_the_structure(tmp_path, block_residual):
    torch.manual_seed(0)
    bnn = quantswap.binarize(resnet18(num_classes=10), method="adabin", block_residual=block_residual).eval()
    quantswap.save_pretrained(bnn, tmp_path, base_model="torchvision:resnet18", base_model_args={"num_classes": 10})
    loaded = quantswap.from_pretrained(tmp_path, backend="float").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), bnn(x), atol=1e-4, rtol=1e-4)
    assert quantswap.get_swap_report(loaded).blocks_rewired == quantswap.get_swap_report(bnn).blocks_rewired
