"""Each method's effective weight, activation and gradients against the formulas of docs/methods.md.

Tolerances: 1e-6 absolute (float32 rounding of sums over at most a few hundred terms) unless stated.
"""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import quantswap
from quantswap import functional as QF
from quantswap.methods.bireal import BiRealWeight
from quantswap.methods.irnet import IRNetWeight
from quantswap.methods.mcdonnell import McDonnellWeight
from quantswap.methods.ternary import TernaryWeight
from quantswap.methods.xnor import XnorWeight
from quantswap.nn import QuantConv2d, QuantLinear
from quantswap.nn.layers import QuantLayer

ATOL = 1e-6


def surrogate_sign(x, fn):
    """sign(x) forward with fn's derivative backward, by the detach trick (independent of quantswap)."""
    s = torch.where(x >= 0, 1.0, -1.0)
    return s.detach() + fn(x) - fn(x).detach()


def weight_and_grad(quantizer, w, g):
    w = w.detach().clone().requires_grad_(True)
    q = quantizer(w)
    q.backward(g)
    return q.detach(), w.grad


@pytest.fixture
def w():
    return torch.randn(8, 4, 3, 3) * 0.6  # some latent weights beyond ±1


def per_oc(t):
    return t.flatten(1)


def test_xnor_forward_and_corrected_gradient(w):
    g = torch.randn_like(w)
    q, grad = weight_and_grad(XnorWeight(), w, g)
    n = w[0].numel()
    alpha = per_oc(w).abs().mean(1).view(-1, 1, 1, 1)
    sign = torch.where(w >= 0, 1.0, -1.0)
    torch.testing.assert_close(q, alpha * sign, atol=ATOL, rtol=0)
    # jiecaoyu notes: dC/dW_i = (1/n) sign(W_i) sum_j g_j sign(W_j) + alpha g_i 1[|W_i| <= 1]
    cross = (per_oc(g * sign).sum(1) / n).view(-1, 1, 1, 1) * sign
    expected = cross + alpha * g * (w.abs() <= 1)
    torch.testing.assert_close(grad, expected, atol=ATOL, rtol=0)


def test_bireal_forward_and_magnitude_aware_gradient(w):
    g = torch.randn_like(w)
    q, grad = weight_and_grad(BiRealWeight(), w, g)
    alpha = per_oc(w).abs().mean(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(q, alpha * torch.where(w >= 0, 1.0, -1.0), atol=ATOL, rtol=0)
    torch.testing.assert_close(grad, alpha * (w.abs() <= 1) * g, atol=ATOL, rtol=0)


@pytest.mark.parametrize("progress", [0.0, 0.3, 1.0])
def test_irnet_libra_pb_forward_and_ede_gradient(w, progress):
    quantizer = IRNetWeight()
    quantizer.set_progress(progress)
    k, t = QF.ede_schedule(progress)
    g = torch.randn_like(w)
    q, grad = weight_and_grad(quantizer, w, g)

    ref_w = w.detach().clone().requires_grad_(True)
    flat = ref_w.flatten(1)
    balanced = flat - flat.mean(1, keepdim=True)
    w_std = (balanced / balanced.std(1, keepdim=True)).view_as(w)  # unbiased std, as the code
    s = 2.0 ** torch.round(torch.log2(per_oc(w_std.detach()).abs().mean(1))).view(-1, 1, 1, 1)
    ref = s * surrogate_sign(w_std, lambda x: k * torch.tanh(t * x))
    ref.backward(g)
    torch.testing.assert_close(q, ref.detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(grad, ref_w.grad, atol=1e-5, rtol=1e-4)  # through mean and std: longer sums


def test_irnet_scale_is_a_power_of_two_and_filters_are_balanced():
    w = torch.randn(32, 16, 3, 3) + 0.5  # off-centre on purpose
    signs, scale = IRNetWeight().binarize(w)
    exps = torch.log2(scale.flatten())
    assert torch.equal(exps, exps.round())
    assert (signs.flatten(1).float().mean(1) - 0.5).abs().max() < 0.1  # ~half +1, half -1 after balancing


def test_irnet_constant_filter_gives_zero_weight_not_nan():
    w = torch.ones(2, 3, 3, 3)
    assert torch.equal(IRNetWeight()(w), torch.zeros_like(w))


@pytest.mark.parametrize("shape, fan_in", [((8, 4, 3, 3), 36), ((8, 2, 3, 3), 18), ((10, 7), 7)])
def test_mcdonnell_constant_scale_and_identity_gradient(shape, fan_in):
    w = torch.randn(shape)
    g = torch.randn(shape)
    q, grad = weight_and_grad(McDonnellWeight(), w, g)
    torch.testing.assert_close(q, math.sqrt(2 / fan_in) * torch.where(w >= 0, 1.0, -1.0), atol=ATOL, rtol=0)
    assert torch.equal(grad, g)


def test_ternary_weight_levels(w):
    q, grad = weight_and_grad(TernaryWeight((0.05, 0.10)), w, torch.ones_like(w))
    levels = torch.unique(q)
    assert len(levels) <= 5  # 2·t_ex + 1 levels, symmetric
    torch.testing.assert_close(levels, -levels.flip(0))
    assert torch.equal(grad, 2.0 * (w.abs() < 1).float())


@pytest.mark.parametrize("quantizer", [XnorWeight(), IRNetWeight(), BiRealWeight(), McDonnellWeight()],
                         ids=lambda q: type(q).__name__)
def test_binarize_gives_exactly_what_the_forward_uses(quantizer, w):
    signs, scale = quantizer.binarize(w)
    assert signs.dtype == torch.bool and signs.shape == w.shape
    assert torch.equal(quantizer(w), scale * (signs.float() * 2 - 1))


@pytest.mark.parametrize(
    "method, derivative",
    [
        ("xnor", lambda x: (x.abs() <= 1).float()),
        ("bireal", lambda x: (2 - 2 * x.abs()).clamp_min(0)),
        ("irnet", lambda x: 10 * 0.1 * (1 - torch.tanh(0.1 * x) ** 2)),  # EDE at progress 0: k=10, t=0.1
    ],
)
def test_binary_activations_in_a_swapped_conv(method, derivative):
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=True)
    config = quantswap.config_from_dict({"method": method})
    layer = QuantConv2d.from_float(conv, config.weight_quantizer(conv), config.input_quantizer(conv))
    x = torch.randn(2, 4, 5, 5) * 1.5
    g = torch.randn(2, 6, 5, 5)
    x1 = x.clone().requires_grad_(True)
    layer(x1).backward(g)

    w_q = layer.quantized_weight().detach()
    out = F.conv2d(torch.where(x >= 0, 1.0, -1.0), w_q, conv.bias.detach(), padding=1)
    torch.testing.assert_close(layer(x), out, atol=1e-5, rtol=0)
    # input gradient: conv-transpose of g, times the estimator's derivative
    upstream = torch.nn.grad.conv2d_input(x.shape, w_q, g, padding=1)
    torch.testing.assert_close(x1.grad, upstream * derivative(x), atol=1e-5, rtol=0)


def test_react_rsign_forward_and_approxsign_gradient_to_input_and_threshold():
    """RSign: sign(x + b_c) forward; ApproxSign max(0, 2 - 2|x + b|) backward, to x and (summed) to b."""
    from quantswap.methods.react import RSign

    rsign = RSign(4)
    with torch.no_grad():
        rsign.bias.copy_(torch.tensor([0.0, 0.5, -0.3, 1.2]))
    x = (torch.randn(2, 4, 5, 5) * 1.5).requires_grad_(True)
    g = torch.randn(2, 4, 5, 5)
    y = rsign(x)
    y.backward(g)
    shifted = x.detach() + rsign.bias.detach().view(1, -1, 1, 1)
    assert torch.equal(y, torch.where(shifted >= 0, 1.0, -1.0))
    derivative = (2 - 2 * shifted.abs()).clamp_min(0)
    torch.testing.assert_close(x.grad, g * derivative, atol=ATOL, rtol=0)
    torch.testing.assert_close(rsign.bias.grad, (g * derivative).sum((0, 2, 3)), atol=1e-5, rtol=0)
    linear = RSign(3, channel_dim=-1)  # a Linear layer's input: channels last, [N, C] or [N, L, C]
    with torch.no_grad():
        linear.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    x = torch.tensor([[-1e-9, -0.5, 0.4]]).expand(2, 4, 3)
    assert torch.equal(linear(x), torch.tensor([[-1.0, 1.0, -1.0]]).expand(2, 4, 3))


def test_react_rprelu_forward_and_gradients():
    """RPReLU: x - γ + ζ where x > γ, β(x - γ) + ζ elsewhere, per channel; gradients by the same cases."""
    from quantswap.nn.blocks import RPReLU

    act = RPReLU(3)
    assert act.slope.tolist() == [0.25] * 3 and act.shift_in.abs().sum() == 0 == act.shift_out.abs().sum()
    with torch.no_grad():
        act.shift_in.copy_(torch.tensor([0.1, -0.2, 0.3])), act.shift_out.copy_(torch.tensor([-0.5, 0.0, 0.7]))
        act.slope.copy_(torch.tensor([0.25, 0.1, -0.3]))
    x = torch.randn(2, 3, 4, 4).requires_grad_(True)
    g = torch.randn(2, 3, 4, 4)
    y = act(x)
    y.backward(g)
    gamma, zeta, beta = (t.detach().view(1, -1, 1, 1) for t in (act.shift_in, act.shift_out, act.slope))
    d = x.detach() - gamma
    torch.testing.assert_close(y, torch.where(d > 0, d, beta * d) + zeta, atol=ATOL, rtol=0)
    torch.testing.assert_close(x.grad, g * torch.where(d > 0, 1.0, beta), atol=ATOL, rtol=0)
    torch.testing.assert_close(act.shift_out.grad, g.sum((0, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(act.shift_in.grad, -(g * torch.where(d > 0, 1.0, beta)).sum((0, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(act.slope.grad, (g * torch.where(d > 0, 0.0, d)).sum((0, 2, 3)), atol=1e-5, rtol=0)


def test_react_structure_on_resnet18():
    """Every binary conv: RSign on its input (per input channel), Bi-Real's weights, a shortcut around
    conv and BN, and an RPReLU over its output channels after the sum."""
    from torchvision.models import resnet18

    from quantswap.methods.react import RSign
    from quantswap.nn.blocks import RPReLU

    bnn = quantswap.binarize(resnet18(), method="react")
    report = quantswap.get_swap_report(bnn)
    assert len(report.quantized) == 16 and report.shortcuts == report.quantized
    for name in report.quantized:
        layer = bnn.get_submodule(name)
        assert isinstance(layer.input_quantizer, RSign) and layer.input_quantizer.bias.numel() == layer.in_channels
        assert isinstance(layer.weight_quantizer, BiRealWeight)
        rprelu = bnn.get_submodule(f"{name}_rprelu")
        assert isinstance(rprelu, RPReLU) and rprelu.slope.numel() == layer.out_channels
    users = {n.target: [u.target for u in n.users] for n in bnn.graph.nodes}
    bn_sum = users["layer1.0.bn1"][0]  # BN -> (+ shortcut) -> RPReLU
    add = next(n for n in bnn.graph.nodes if n.target == bn_sum)
    assert [u.target for u in add.users] == ["layer1.0.conv1_rprelu"]
    frozen = quantswap.freeze(bnn)  # RSign packs: the layer adds b and the kernel takes the sign
    assert not quantswap.get_freeze_report(frozen).decoded and "layer1.0.conv1" in quantswap.get_freeze_report(frozen).packed


def test_recu_tau_rises_exponentially_from_tau_min_to_tau_max():
    from quantswap.methods.recu import recu_tau

    a = (0.99 - 0.85) / (math.e - 1)
    assert recu_tau(0.0) == 0.85 and recu_tau(1.0) == 0.99
    assert recu_tau(0.5) == pytest.approx(a * math.exp(0.5) + 0.85 - a, abs=1e-12)
    with pytest.raises(ValueError, match="0 < tau_min <= tau_max < 1"):
        quantswap.config_for("recu", tau_max=1.0)


@pytest.mark.parametrize("progress", [0.0, 1.0])
def test_recu_weight_forward_and_rectified_clamp_gradient(w, progress):
    """Forward: sign of the standardized weight (±1; the scale is the layer's ChannelScale). Backward:
    identity through sign, zero beyond the clamp ±Q_τ, then through the standardization."""
    from quantswap.methods.recu import ReCUWeight

    quantizer = ReCUWeight()
    quantizer.set_progress(progress)
    tau = 0.85 if progress == 0 else 0.99
    g = torch.randn_like(w)
    w = w.clone()
    w[:, 0, 0, 0] = 6.0  # one outlier per filter, beyond the clamp even at tau = 0.99
    q, grad = weight_and_grad(quantizer, w, g)

    def reference(v):  # the formulas of docs/methods.md#recu, written again
        flat = v.flatten(1)
        centred = flat - flat.mean(1, keepdim=True)
        std = torch.sqrt(centred.var(1, unbiased=True, keepdim=True) + 1e-5) / (2 * math.sqrt(2))
        w_std = (centred / std).view(v.shape)
        limit = -w_std.detach().abs().mean() * math.log(2 - 2 * tau)
        return w_std, torch.clamp(w_std, -limit, limit), limit

    v = w.clone().requires_grad_(True)
    w_std, clamped, limit = reference(v)
    (clamped * g).sum().backward()
    assert torch.equal(q, torch.where(w_std.detach() >= 0, 1.0, -1.0))
    assert (w_std.abs() > limit).any()  # the clamp is exercised
    torch.testing.assert_close(grad, v.grad, atol=1e-5, rtol=1e-5)


def test_recu_sign_takes_approxsign_at_the_normalized_input_in_training_only():
    from quantswap.methods.recu import ReCUSign

    sign = ReCUSign()
    x = torch.randn(3, 4, 5, 5) * 2.5
    g = torch.randn_like(x)
    for training in (True, False):
        x1 = x.clone().requires_grad_(True)
        y = sign.train(training)(x1)
        y.backward(g)
        assert torch.equal(y, torch.where(x >= 0, 1.0, -1.0))
        x2 = x.clone().requires_grad_(True)
        at = x2 / torch.sqrt(x2.var(dim=(1, 2, 3), keepdim=True) + 1e-5) if training else x2
        (surrogate_sign(at, lambda t: torch.where(t.abs() < 1, 2 * t - t * t.abs(), t.sign())) * g).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_recu_structure_scales_each_binary_output_and_runs_packed_when_frozen():
    from torchvision.models import resnet18

    from quantswap.nn.blocks import ChannelScale

    fp = resnet18()
    bnn = quantswap.binarize(fp, method="recu")
    report = quantswap.get_swap_report(bnn)
    for name in report.quantized:
        scale = bnn.get_submodule(f"{name}_scale")
        assert isinstance(scale, ChannelScale)
        torch.testing.assert_close(scale.scale.detach(), fp.get_submodule(name).weight.abs().flatten(1).mean(1))
        assert isinstance(bnn.get_submodule(f"{name}_hardtanh"), torch.nn.Hardtanh)
    users = {n.target: [u.target for u in n.users] for n in bnn.graph.nodes}
    assert users["layer1.0.conv1"] == ["layer1.0.conv1_scale"] and users["layer1.0.conv1_scale"] == ["layer1.0.bn1"]
    frozen = quantswap.freeze(bnn.eval())
    assert quantswap.get_freeze_report(frozen).packed == report.quantized  # ReCUSign's forward is a plain sign


def test_linear_layer_keeps_bias_and_quantizes_weight():
    lin = torch.nn.Linear(5, 3)
    layer = QuantLinear.from_float(lin, XnorWeight())
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer(x), F.linear(x, XnorWeight()(lin.weight), lin.bias))
    assert layer.weight is lin.weight and layer.bias is lin.bias


# -- every registered method, through its variants (the ``variant`` fixture of conftest.py) -----------


def test_every_registered_method_has_a_variant():
    """A method without variants would silently skip every test that takes the ``variant`` fixture."""
    covered = {v.method for v in quantswap.list_variants()}
    assert set(quantswap.list_methods()) == covered, f"methods without a variant: {set(quantswap.list_methods()) - covered}"


def test_a_variant_names_itself_consistently(variant):
    config = variant.config()
    assert config.method == variant.method and config.kind in ("binary", "ternary")
    assert config.label.startswith(config.method) and config.paper
    assert quantswap.config_from_dict(config.to_dict()) == config


def test_a_swapped_model_trains(variant):
    """Forward, backward and one SGD step: every quantized layer's latent weight gets a finite, non-zero
    gradient and moves; the quantized weight has at most 2 levels per channel (binary) or 2t+1 (ternary)."""
    from torchvision.models import resnet18

    model = quantswap.swap(resnet18(num_classes=10), variant.config()).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    layer = model.get_submodule(model.meta["quantswap"].quantized[1])
    before = layer.weight.detach().clone()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(layer.weight, before)
    levels = layer.quantized_weight().detach().flatten(1)
    most = 2 if variant.config().kind == "binary" else 2 * layer.codec.branches + 1
    assert max(len(row.unique()) for row in levels) <= most


@pytest.mark.parametrize("progress", [0.0, 0.6])
def test_adabin_weight_forward_codec_and_gradient_through_the_adaptive_set(progress):
    """W_b = α·sign((W − β)/α) + β per output channel (β the filter mean, α its population std); the
    backward is EDE at u = (W − β)/α with the authors' schedule (t = 1e-3·10^(4p), k = max(1/t, 1)),
    chained through α and β (autograd of the same closed form, written again here)."""
    from quantswap.methods.adabin import AdaBinWeight

    torch.manual_seed(0)
    w = (torch.randn(4, 3, 3, 3) * 0.2 + torch.tensor([0.0, 0.3, -0.5, 1.0]).view(-1, 1, 1, 1)).requires_grad_(True)
    q = AdaBinWeight()
    q.set_progress(progress)
    t = 1e-3 * 10 ** (4 * progress)
    k = max(1 / t, 1.0)
    assert (q.k, q.t) == pytest.approx((k, t))
    g = torch.randn_like(w)
    out = q(w)
    out.backward(g)
    flat = w.detach().flatten(1)
    beta = flat.mean(1).view(-1, 1, 1, 1)
    alpha = flat.sub(flat.mean(1, keepdim=True)).square().mean(1).sqrt().view(-1, 1, 1, 1)
    u = (w.detach() - beta) / alpha
    torch.testing.assert_close(out, torch.where(u >= 0, 1.0, -1.0) * alpha + beta, atol=ATOL, rtol=0)
    values = out[0].detach().unique()  # two values, β ± α (summed in double lanes by the native kernel: 1 ulp)
    ends = torch.stack([beta[0] - alpha[0], beta[0] + alpha[0]]).flatten()
    assert len(values) <= 2 and bool(((values[:, None] - ends[None]).abs().amin(1) <= 1e-6).all())

    w2 = w.detach().clone().requires_grad_(True)  # the same function with the EDE's derivative made explicit
    b2 = w2.flatten(1).mean(1).view(-1, 1, 1, 1)
    a2 = (w2.flatten(1) - w2.flatten(1).mean(1, keepdim=True)).square().mean(1).sqrt().view(-1, 1, 1, 1)
    u2 = (w2 - b2) / a2
    ede = k * t * (1 - torch.tanh(t * u2.detach()) ** 2)
    surrogate = (torch.where(u2 >= 0, 1.0, -1.0).detach() + ede * (u2 - u2.detach())) * a2 + b2
    surrogate.backward(g)
    torch.testing.assert_close(w.grad, w2.grad, atol=1e-5, rtol=1e-5)

    codes, scale = q.encode(w.detach())
    assert codes.dtype == torch.int8 and scale.shape == (2, 4)
    assert torch.equal(q.decode(codes, scale), q(w.detach()))
    (term_codes, term_scale), = q.dequantize_terms(codes, scale)
    exported = term_codes.float() * term_scale.view(-1, 1, 1, 1) + q.dequantize_offset(codes, scale).view(-1, 1, 1, 1)
    assert torch.equal(exported, q.decode(codes, scale))
    assert q.scale_problem(scale) is None and "two finite rows" in q.scale_problem(-scale)


def test_adabin_activation_forward_and_approxsign_gradients_to_x_alpha_beta():
    """x_b = α·sign((x − β)/α) + β; with u = (x − β)/α and s' = max(0, 2 − 2|u|): dx = s', dα = sign(u) − s'·u,
    dβ = 1 − s' (summed over the tensor)."""
    from quantswap.methods.adabin import AdaBinSign

    act = AdaBinSign()
    with torch.no_grad():
        act.alpha.fill_(0.8), act.beta.fill_(0.3)
    x = (torch.randn(2, 3, 4, 4) * 1.5).requires_grad_(True)
    g = torch.randn_like(x)
    y = act(x)
    y.backward(g)
    u = (x.detach() - 0.3) / 0.8
    sign, slope = torch.where(u >= 0, 1.0, -1.0), (2 - 2 * u.abs()).clamp_min(0)
    torch.testing.assert_close(y, 0.8 * sign + 0.3, atol=ATOL, rtol=0)
    torch.testing.assert_close(x.grad, g * slope, atol=ATOL, rtol=0)
    torch.testing.assert_close(act.alpha.grad, (g * (sign - slope * u)).sum(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(act.beta.grad, (g * (1 - slope)).sum(), atol=1e-4, rtol=1e-5)


def test_adabin_maxout_and_structure_on_resnet18():
    """Maxout: p·max(x, 0) − n·max(−x, 0) per channel; every binary conv gets AdaBin's quantizers and a
    shortcut whose sum feeds a Maxout; the layers stay decoded in freeze (offset sets)."""
    from torchvision.models import resnet18

    from quantswap.methods.adabin import AdaBinSign, AdaBinWeight
    from quantswap.nn.blocks import Maxout

    act = Maxout(2)
    assert act.positive.tolist() == [1.0, 1.0] and act.negative.tolist() == [0.25, 0.25]
    with torch.no_grad():
        act.positive.copy_(torch.tensor([1.5, 0.5])), act.negative.copy_(torch.tensor([0.1, -0.2]))
    x = torch.randn(3, 2, 4, 4).requires_grad_(True)
    y = act(x)
    y.sum().backward()
    p, n = torch.tensor([1.5, 0.5]).view(1, -1, 1, 1), torch.tensor([0.1, -0.2]).view(1, -1, 1, 1)
    torch.testing.assert_close(y, torch.where(x > 0, p * x, n * x).detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(x.grad, torch.where(x > 0, p, n).expand_as(x), atol=ATOL, rtol=0)

    bnn = quantswap.binarize(resnet18(), method="adabin")
    report = quantswap.get_swap_report(bnn)
    assert len(report.quantized) == 16 and report.shortcuts == report.quantized
    for name in report.quantized:
        layer = bnn.get_submodule(name)
        assert isinstance(layer.weight_quantizer, AdaBinWeight) and isinstance(layer.input_quantizer, AdaBinSign)
        assert bnn.get_submodule(f"{name}_maxout").positive.numel() == layer.out_channels
    report = quantswap.get_freeze_report(quantswap.freeze(bnn))
    assert len(report.packed) == 16 and not report.decoded  # the offset terms run in the packed kernel


# -- what a quantized layer keeps for its backward (issue 14) ----------------------------------------


def _grads_with_and_without_compact_saves(model, x, monkeypatch):
    import contextlib

    from quantswap.nn.layers import _QuantMixin

    plain = copy.deepcopy(model)
    model(x).square().sum().backward()
    with monkeypatch.context() as m:
        m.setattr(_QuantMixin, "_compact_saves", lambda self, *args: contextlib.nullcontext())
        plain(x).square().sum().backward()
    return [(name, p.grad, q.grad) for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True)]


def test_compact_saves_change_no_gradient_bit(variant, monkeypatch):
    """Binary inputs saved as int8 and the weight quantized again in the backward: the same gradients,
    bit for bit, as keeping both as float (every parameter of a small ResNet, one step)."""
    from torchvision.models import resnet18

    model = quantswap.swap(resnet18(num_classes=10), variant.config()).train()
    for name, compact, plain in _grads_with_and_without_compact_saves(model, torch.randn(2, 3, 32, 32), monkeypatch):
        assert (compact is None) == (plain is None), name
        assert compact is None or torch.equal(compact, plain), name


def test_a_binary_conv_keeps_int8_signs_and_no_quantized_weight_for_its_backward():
    layer = quantswap.binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 3)),
                               method="xnor").get_submodule("1").train()
    saved = []

    def pack(tensor):  # what the weight quantizer and the sign save (the conv's own saves are the layer's)
        saved.append((tensor.dtype, tuple(tensor.shape)))
        return tensor

    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    signs, weight = layer._quantize_input(x), layer.quantized_weight()
    packed = [layer._compact_saves(signs, weight).pack_hook(t) for t in (signs, weight)]
    assert packed[0][0] == "signs" and packed[0][1].dtype == torch.int8  # not a float copy of the signs
    kept = [p for p in packed[1] if isinstance(p, torch.Tensor)]
    assert packed[1][0] == "weight" and len(kept) == 1 and kept[0] is layer.weight  # the parameter, no copy
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    assert (torch.float32, (8, 8, 3, 3)) in saved  # the latent weight (a parameter: no copy)


def test_adabin_layers_keep_their_two_valued_inputs_as_one_byte_each(monkeypatch):
    """AdaBin's binary activations are ``β ∓ α``, not ±1: a binary conv keeps a uint8 code per element and
    the two values, and the backward reads back exactly the forward's input (every gradient bit for bit)."""
    from torchvision.models import resnet18

    from quantswap.methods.adabin import AdaBinSign

    torch.manual_seed(0)
    model = quantswap.binarize(resnet18(num_classes=10), method="adabin").train()
    with torch.no_grad():
        for sign in (m for m in model.modules() if isinstance(m, AdaBinSign)):
            sign.alpha.uniform_(0.5, 1.5)
            sign.beta.uniform_(-0.3, 0.3)
    layer = model.layer1[0].conv2
    x = layer._quantize_input(torch.randn(2, 64, 8, 8))
    lo, hi = layer.input_quantizer.levels()
    assert set(x.unique().tolist()) == {lo, hi} and (lo, hi) != (-1.0, 1.0)
    if QF._native(x):
        packed = layer._compact_saves(x, layer.quantized_weight()).pack_hook(x)
        assert packed[0] == "levels" and packed[1].dtype == torch.uint8
        assert torch.equal(layer._compact_saves(x, layer.weight).unpack_hook(packed), x)
    for name, compact, plain in _grads_with_and_without_compact_saves(model, torch.randn(2, 3, 32, 32), monkeypatch):
        assert compact is None or torch.equal(compact, plain), name


@pytest.mark.parametrize("method, options", [("xnor", {}), ("bireal", {}), ("irnet", {}), ("react", {}), ("recu", {}),
                                             ("adabin", {}), ("ternary", {"expansion": 1}), ("ternary", {"expansion": 4})])
def test_the_backward_recomputes_the_weight_from_the_forward_statistics(method, options, monkeypatch):
    """A layer's backward computes its quantized weight again from the forward's per-row numbers (ternary: δ
    and α per branch) in one pass, not by running the quantizer again; the gradients are those of keeping
    the weight, bit for bit (every parameter of a small ResNet, one step)."""
    from torchvision.models import resnet18

    x = torch.randn(2, 3, 32, 32)
    model = quantswap.swap(resnet18(num_classes=10), quantswap.config_for(method, **options)).train()
    quantizer = type(next(m for m in model.modules() if isinstance(m, QuantLayer)).weight_quantizer)
    full_forward = quantizer.forward
    calls = []
    with monkeypatch.context() as m:
        m.setattr(quantizer, "forward", lambda self, w: calls.append(w) or full_forward(self, w))
        grads = _grads_with_and_without_compact_saves(model, x, monkeypatch)
    # the training forward ran quantize(), the backward requantize() from its statistics; without the native
    # kernels there are none, and the backward runs the quantizer again
    assert bool(calls) != QF._native(x)
    for name, compact, plain in grads:
        assert compact is None or torch.equal(compact, plain), name


def test_changing_the_latent_weight_before_backward_is_an_error():
    layer = quantswap.binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 3)),
                               method="xnor").get_submodule("1").train()
    y = layer(torch.randn(2, 8, 6, 6, requires_grad=True))
    with torch.no_grad():
        layer.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="changed between the forward and the backward"):
        y.sum().backward()


def test_the_backward_quantizes_the_weight_the_forward_read_under_functional_call(monkeypatch):
    """torch.func.functional_call swaps parameters in for the forward only: the backward must quantize the
    swapped-in weight, not the module's own."""
    model = quantswap.binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 3)),
                               method="irnet").train()
    layer = model.get_submodule("1")
    other = {"weight": (torch.randn_like(layer.weight) * 0.3).requires_grad_(True), "bias": layer.bias}
    x = torch.randn(2, 8, 6, 6)
    torch.func.functional_call(layer, other, (x,)).square().sum().backward()
    grad = other["weight"].grad.clone()
    other["weight"].grad = None
    with monkeypatch.context() as m:
        m.setattr(type(layer), "_compact_saves", lambda self, *args: __import__("contextlib").nullcontext())
        torch.func.functional_call(layer, other, (x,)).square().sum().backward()
    assert torch.equal(grad, other["weight"].grad)
