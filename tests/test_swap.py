"""The FX swap: what it keeps, what it changes, and the nn.Module contract of its result."""

import copy

import pytest
import torch
from torch import fx, nn
from torch.nn import functional as F
from torchvision.models import efficientnet_b0, googlenet, resnet18, swin_t

import quantswap
from quantswap.functional import sign
from quantswap.nn import QuantConv2d, QuantLinear


def test_pretrained_weights_are_copied_exactly_and_the_input_model_is_untouched():
    model = resnet18(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bnn = quantswap.binarize(model, method="irnet")
    after = bnn.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())
    assert isinstance(bnn, fx.GraphModule)


class OddConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=True)
        self.depthwise = nn.Conv2d(16, 16, 5, padding=4, dilation=2, groups=16, padding_mode="reflect")
        self.shared = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.depthwise(self.grouped(self.stem(x)))
        x = self.shared(self.shared(x))  # one module called from two places
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("method", ["mcdonnell", "ternary"])
def test_weight_only_swap_equals_the_float_model_with_quantized_weights(method):
    model = OddConvs().eval()
    options = dict(skip_depthwise=False)  # quantize the depthwise conv too (it is kept real by default)
    swapped = (quantswap.ternarize(model, 2, **options) if method == "ternary"
               else quantswap.binarize(model, method=method, **options))
    reference = copy.deepcopy(model)
    for name in quantswap.get_swap_report(swapped).quantized:
        layer = swapped.get_submodule(name)
        reference.get_submodule(name).weight.data = layer.quantized_weight().detach()
        original = model.get_submodule(name)
        for attr in ("stride", "padding", "dilation", "groups", "padding_mode"):
            assert getattr(layer, attr) == getattr(original, attr)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(swapped(x), reference(x), atol=1e-5, rtol=1e-5)
    assert quantswap.get_swap_report(swapped).quantized == ["grouped", "depthwise", "shared"]
    assert [n.target for n in swapped.graph.nodes if n.op == "call_module"].count("shared") == 2


def test_first_and_last_follow_dataflow_on_a_multi_head_model():
    model = googlenet(weights=None, aux_logits=True, init_weights=False)
    bnn = quantswap.binarize(model, method="xnor")
    kept = quantswap.get_swap_report(bnn).kept_real
    assert kept["conv1.conv"] == "first layer (skip_first=True)"
    for head in ("fc", "aux1.fc2", "aux2.fc2"):
        assert kept[head] == "last layer (skip_last=True)"
    assert isinstance(bnn.get_submodule("aux1.fc1"), QuantLinear)


def test_train_and_eval_keep_their_own_behaviour():
    bnn = quantswap.binarize(googlenet(weights=None, aux_logits=True, init_weights=False), method="irnet")
    x = torch.randn(2, 3, 64, 64)
    assert isinstance(bnn.train()(x), tuple)  # GoogLeNetOutputs with the auxiliary logits
    assert isinstance(bnn.eval()(x), torch.Tensor)
    eff = quantswap.binarize(efficientnet_b0(num_classes=10), method="mcdonnell").eval()
    torch.testing.assert_close(eff(x), eff(x))  # stochastic depth off in eval


def test_swapped_model_is_an_ordinary_module():
    bnn = quantswap.binarize(resnet18(num_classes=10), method="bireal").eval()
    x = torch.randn(2, 3, 32, 32)
    y = bnn(x)
    torch.testing.assert_close(copy.deepcopy(bnn)(x), y)
    # a binary net is discontinuous (sign), so float64 is checked for dtype, not for equal values
    assert bnn.to(torch.float64)(x.double()).dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in bnn.parameters())
    bnn.float()
    fresh = quantswap.binarize(resnet18(num_classes=10), method="bireal").eval()
    fresh.load_state_dict(bnn.state_dict(), strict=True)
    torch.testing.assert_close(fresh(x), y)


def test_include_exclude_and_skip_options():
    report = quantswap.get_swap_report(quantswap.binarize(resnet18(), method="xnor", exclude=["layer4.*"]))
    assert not any(n.startswith("layer4") for n in report.quantized) and report.kept_real["layer4.0.conv1"]
    report = quantswap.get_swap_report(quantswap.binarize(resnet18(), method="xnor", include=["layer1.*"]))
    assert report.quantized == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    report = quantswap.get_swap_report(quantswap.binarize(resnet18(), method="mcdonnell", skip_first=False,
                                                          skip_last=False))
    assert "conv1" in report.quantized and "fc" in report.quantized


class Separable(nn.Module):
    """A depthwise 3x3 (groups == in_channels), a grouped conv (2 channels per group) and a pointwise."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.pointwise(self.grouped(self.depthwise(self.stem(x)))))


def test_depthwise_convs_stay_real_unless_asked():
    report = quantswap.get_swap_report(quantswap.binarize(Separable(), method="irnet"))
    assert report.kept_real["depthwise"] == "depthwise conv (skip_depthwise=True)"
    assert report.quantized == ["grouped", "pointwise"]  # a grouped conv with 2 channels per group is not depthwise
    report = quantswap.get_swap_report(quantswap.ternarize(Separable(), expansion=2, skip_depthwise=False))
    assert report.quantized == ["depthwise", "grouped", "pointwise"]
    with pytest.raises(TypeError, match="skip_depthwise must be True or False"):
        quantswap.binarize(Separable(), method="irnet", skip_depthwise="no")


def test_a_config_written_before_skip_depthwise_rebuilds_the_swap_it_made():
    new = quantswap.config_for("irnet").to_dict()
    assert new["version"] >= 2 and new["skip_depthwise"] is True
    old = {k: v for k, v in new.items() if k != "skip_depthwise"} | {"version": 1}
    assert quantswap.config_from_dict(old).skip_depthwise is False  # version 1 quantized depthwise convs


def test_binary_activation_methods_replace_relus_feeding_binary_layers():
    bnn = quantswap.binarize(resnet18(), method="irnet")
    assert isinstance(bnn.layer1[0].relu, nn.Hardtanh) and isinstance(bnn.relu, nn.Hardtanh)
    bwn = quantswap.binarize(resnet18(), method="irnet", activations=False)
    assert isinstance(bwn.layer1[0].relu, nn.ReLU)
    assert bwn.layer1[0].conv1.input_quantizer is None
    shifted = quantswap.binarize(resnet18(), method="mcdonnell", shifted_relu=True)
    x = torch.randn(1, 8)
    assert torch.equal(shifted.layer1[0].relu(x), x.clamp_min(-1))


def test_mcdonnell_bn_without_affine_keeps_running_statistics():
    model = resnet18()
    model.layer1[0].bn1.running_var.fill_(2.0)
    bwn = quantswap.binarize(model, method="mcdonnell", bn_affine=False)
    bn = bwn.layer1[0].bn1
    assert not bn.affine and bn.weight is None
    assert torch.equal(bn.running_var, torch.full((64,), 2.0))
    assert bwn.bn1.affine  # after the real first conv: untouched


def test_set_progress_drives_every_ede_quantizer():
    bnn = quantswap.binarize(resnet18(), method="irnet", t_min=0.01, t_max=10)
    quantswap.set_progress(bnn, 1 / 3)
    ks = {(m.k, m.t) for m in bnn.modules() if isinstance(m, quantswap.nn.ScheduledQuantizer)}
    assert len(ks) == 1  # weights and activations of every layer share the schedule
    ((k, t),) = ks
    assert t == pytest.approx(0.01 * 10 ** (1 / 3 * 3)) and k == pytest.approx(1 / t)


def test_weights_read_directly_are_quantized_too():
    model = swin_t(num_classes=10)
    bnn = quantswap.binarize(model, method="xnor", activations=False)
    reads = [n.target for n in bnn.graph.nodes if n.op == "call_module" and n.target.endswith("qkv.weight_quantizer")]
    assert len(reads) == 12


# -- Bi-Real ------------------------------------------------------------------------------------


def test_bireal_adds_one_shortcut_per_binary_conv():
    bnn = quantswap.binarize(resnet18(), method="bireal")
    report = quantswap.get_swap_report(bnn)
    binary_convs = [n for n in report.quantized if isinstance(bnn.get_submodule(n), QuantConv2d)]
    assert len(report.shortcuts) == len(binary_convs) == 16
    adds = [n for n in bnn.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 16 + 8  # a shortcut per binary conv + ResNet's own 8 block residuals (the default)
    authors = quantswap.binarize(resnet18(), method="bireal", block_residual=False)
    assert len([n for n in authors.graph.nodes if n.op == "call_function" and "add" in str(n.target)]) == 16


class OneBlock(nn.Module):
    """A stem, one torchvision BasicBlock with a stride-2 downsample, and a head."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.block = BasicBlock(16, 32, stride=2, downsample=down)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_bireal_block_with_block_residual_computes_the_hand_written_block():
    """``block_residual=True``: the per-conv shortcuts and the block's own residual (tests/test_structure.py
    checks the authors' structure, without it)."""
    torch.manual_seed(0)
    model = OneBlock()
    bnn = quantswap.binarize(model, method="bireal", block_residual=True)
    for m in bnn.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    bnn.eval()
    b = bnn.block

    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    def binconv(conv, t):
        alpha = conv.weight.abs().mean((1, 2, 3), keepdim=True)
        return F.conv2d(sign(t), alpha * sign(conv.weight), None, conv.stride, conv.padding)

    x = torch.randn(2, 3, 16, 16)
    s = bnn.stem(x)
    sc = b.conv1_shortcut
    shortcut1 = bn(sc[2], F.conv2d(F.avg_pool2d(s, 2, ceil_mode=True, count_include_pad=False), sc[1].weight))
    h = bn(b.bn1, binconv(b.conv1, s)) + shortcut1  # Bi-Real: no ReLU
    o = bn(b.bn2, binconv(b.conv2, h)) + h  # identity shortcut around conv2
    out = o + bn(b.downsample[1], F.conv2d(s, b.downsample[0].weight, stride=2))  # the block's own residual
    expected = bnn.fc(out.mean((2, 3)))
    torch.testing.assert_close(bnn(x), expected, atol=1e-5, rtol=1e-5)


def test_the_swap_is_a_pipeline_and_a_method_adds_its_own_passes():
    """Issue 11: every pass is ``pass(ctx) -> None``; Bi-Real and McDonnell contribute theirs, nobody else does."""
    from quantswap.fx import passes
    from quantswap.fx.pipeline import STANDARD_PASSES, SwapContext, lint

    def extra(config):
        return SwapContext(resnet18(), config).passes()[len(STANDARD_PASSES):-1]

    assert extra(quantswap.config_for("bireal")) == [passes.add_bireal_shortcuts]
    assert extra(quantswap.config_for("bireal", block_residual=False)) == [passes.add_bireal_shortcuts,
                                                                           passes.remove_block_residuals]
    assert extra(quantswap.config_for("mcdonnell", bn_affine=False)) == [passes.freeze_bn_affine]
    assert extra(quantswap.config_for("mcdonnell")) == extra(quantswap.config_for("irnet")) == []
    assert SwapContext(resnet18(), quantswap.config_for("xnor")).passes()[-1] is lint

    seen = []

    class Counting(type(quantswap.config_for("xnor"))):
        def graph_passes(self):
            return (lambda ctx: seen.append(len(ctx.report.quantized)),)

    quantswap.swap(resnet18(), Counting())
    assert seen == [19]  # a method's pass sees the chosen layers


@pytest.mark.parametrize("method", ["irnet", "react"])
def test_weights_false_keeps_real_weights_with_binary_activations_until_quantize_weights(method, tmp_path):
    """W32/A1 (the two-step recipe's first stage): a swapped layer computes conv(A(x), W) with the latent
    W itself, and W's gradient is the float conv's; quantize_weights then gives the same model the
    method's weight quantizers, after which it equals a W1/A1 swap of the same weights."""
    from quantswap.nn.quantizers import RealWeight

    torch.manual_seed(0)
    base = resnet18(num_classes=10)
    stage1 = quantswap.binarize(base, method=method, weights=False)
    assert quantswap.get_swap_report(stage1).config.label == f"{method} W32/A1"
    layer = stage1.layer1[0].conv1
    assert isinstance(layer.weight_quantizer, RealWeight) and layer.input_quantizer is not None
    x = torch.randn(2, 64, 8, 8)
    y = layer(x)
    torch.testing.assert_close(y, F.conv2d(layer.input_quantizer(x), layer.weight, None, 1, 1), rtol=0, atol=0)
    y.square().sum().backward()
    expected = torch.nn.grad.conv2d_weight(layer.input_quantizer(x).detach(), layer.weight.shape, 2 * y.detach(),
                                           padding=1)
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-5)
    for verb in (quantswap.freeze, lambda m: quantswap.save_pretrained(m, tmp_path / "w32")):
        with pytest.raises(ValueError, match=r"real weights .*quantswap\.quantize_weights"):
            verb(stage1)
    assert not (tmp_path / "w32").exists()

    stage1.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stage1(images)  # caches each layer's eval-mode (real) weight
    weight = stage1.layer1[0].conv1.weight
    stage2 = quantswap.quantize_weights(stage1)
    assert stage2 is stage1 and stage2.layer1[0].conv1.weight is weight
    assert quantswap.get_swap_report(stage2).config == quantswap.config_for(method)
    reference = quantswap.binarize(base, method=method).eval()
    reference.load_state_dict(stage2.state_dict())
    with torch.no_grad():
        assert torch.equal(stage2(images), reference(images))
    with pytest.raises(ValueError, match="already quantized"):
        quantswap.quantize_weights(stage2)
    with pytest.raises(ValueError, match="needs binary activations"):
        quantswap.binarize(base, method="irnet", weights=False, activations=False)


def test_the_swap_report_prints_as_a_table_of_layers_and_changes():
    """Issue 29: ``get_swap_report()`` printed as a 900-character dataclass line."""
    report = quantswap.get_swap_report(quantswap.binarize(resnet18(), method="recu", block_residual=False))
    lines = repr(report).splitlines()
    assert lines[0] == "swap (recu W1/A1): 16 layers quantized, 2 kept real"
    assert any(line.split() == ["layer1.0.conv1", "recu", "W1/A1", "+", "shortcut"] for line in lines)
    assert any(line.split()[:3] == ["conv1", "kept", "real"] and "skip_first=True" in line for line in lines)
    assert "added after the stem: 1 (relu_hardtanh)" in lines and max(len(line) for line in lines) < 140
