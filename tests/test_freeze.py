"""freeze: the quantizers as exact codecs, and the frozen model against the eval-mode swapped model."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import mobilenet_v2, resnet18

import quantswap
from quantswap.methods.ternary import TernaryWeight


@pytest.mark.parametrize("kernels", ["native", "pytorch"])
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (5, 7), (4, 1, 1, 1)])
def test_decode_of_encode_is_the_forward_bit_for_bit(variant, shape, kernels, monkeypatch):
    """With the fused training kernels and without (no compiler): the codec reads the forward's numbers."""
    if kernels == "pytorch":
        monkeypatch.setattr(quantswap.functional, "_native", lambda *tensors: False)
    codec = variant.config().weight_quantizer(nn.Conv2d(3, 8, 3))
    w = torch.randn(shape)
    w.view(-1)[::5] = 0.0  # exact zeros: sign(0) = +1
    codes, scale = codec.encode(w)
    assert codes.dtype == torch.int8
    assert set(codes.unique().tolist()) <= ({-1, 1} if codec.code_levels == 2 else {-1, 0, 1})
    assert torch.equal(codec.decode(codes, scale), codec.eval()(w))


def test_ternary_codes_are_the_branch_codes_of_ternarize():
    codec, w = TernaryWeight((0.05, 0.1, 0.15)), torch.randn(16, 8, 3, 3)
    codes, scale = codec.encode(w)
    for b, (branch_codes, alpha) in enumerate(codec.ternarize(w)):
        assert torch.equal(codes[b].float(), branch_codes) and torch.equal(scale[b], alpha)


def test_frozen_model_equals_eval_model_and_drops_latent_weights(variant):
    bnn = quantswap.swap(resnet18(num_classes=10), variant.config()).train()
    bnn(torch.randn(4, 3, 32, 32))  # move BatchNorm statistics off their initial values
    bnn.eval()
    fast = quantswap.freeze(bnn, backend="float")
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(fast(x), bnn(x))
    assert not fast.training and bnn.layer1[0].conv1.weight.requires_grad  # the input model is untouched
    layer = fast.layer1[0].conv1
    assert isinstance(layer.weight, torch.Tensor) and not isinstance(layer.weight, nn.Parameter)
    assert not any(n.endswith("conv1.weight") and "layer" in n for n, _ in fast.named_parameters())
    assert "layer1.0.conv1.weight" not in fast.state_dict()


@pytest.mark.parametrize("config", [quantswap.config_for("irnet"), quantswap.config_for("ternary", expansion=3)],
                         ids=["irnet", "ternary-t3"])
def test_load_state_dict_decodes_the_weight_again(config):
    source = quantswap.freeze(quantswap.swap(mobilenet_v2(num_classes=10), config))
    target = quantswap.freeze(quantswap.swap(mobilenet_v2(num_classes=10), config))
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(source(x), target(x))
    target.load_state_dict(source.state_dict())
    assert torch.equal(source(x), target(x))


class FunctionalWeightRead(nn.Module):
    """A Linear whose weight is read directly, as Swin's attention does: the graph quantizes it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.proj = nn.Linear(16, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = F.linear(x, self.proj.weight, self.proj.bias)
        return self.head(self.mid(x))


def test_freeze_does_not_quantize_a_directly_read_weight_twice():
    bnn = quantswap.binarize(FunctionalWeightRead(), method="irnet", activations=False).eval()
    assert "proj" in bnn.meta["quantswap"].quantized
    fast = quantswap.freeze(bnn)
    x = torch.randn(5, 6)
    assert torch.equal(fast(x), bnn(x))


def test_freeze_is_idempotent_and_inplace_works():
    bnn = quantswap.binarize(resnet18(num_classes=10), method="xnor").eval()
    x = torch.randn(2, 3, 32, 32)
    expected = bnn(x)
    fast = quantswap.freeze(bnn, backend="float", inplace=True)
    assert fast is bnn and torch.equal(quantswap.freeze(fast, backend="float")(x), expected)


def test_freeze_refuses_a_float_model():
    with pytest.raises(ValueError, match="swapped by quantswap.binarize/ternarize"):
        quantswap.freeze(resnet18())


def test_summary_counts_a_frozen_model_like_the_swapped_one():
    bnn = quantswap.ternarize(resnet18(), expansion=2)
    a, b = quantswap.summary(bnn), quantswap.summary(quantswap.freeze(bnn))
    assert (a.size_bytes, a.params_by_bits, a.buffers, a.scales) == (b.size_bytes, b.params_by_bits, b.buffers, b.scales)


def test_eval_mode_reuses_the_quantized_weight_until_the_latent_weight_changes(variant):
    """Issue 14: an eval-mode forward without autograd quantizes each weight once (what a frozen model
    costs) and quantizes again after an optimizer step, a load or a move; training never reuses it."""
    model = quantswap.swap(resnet18(num_classes=10), variant.config())
    layer = model.get_submodule(model.meta["quantswap"].quantized[0])
    calls = []
    layer.weight_quantizer.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first) and len(calls) == 1
    assert torch.equal(quantswap.freeze(model, backend="float")(x), first)  # the reused weight is the frozen model's
    model(x)  # autograd on: quantized afresh (a saliency map needs the estimator's graph)
    assert len(calls) == 2
    with torch.no_grad():
        layer.weight.add_(0.1)  # what an optimizer step does
        model(x)
        assert len(calls) == 3
        model.load_state_dict(model.state_dict())
        model(x)
        assert len(calls) == 4
    model.train()
    with torch.no_grad():
        model(x)
        model(x)
    assert len(calls) == 6


def test_a_packed_model_refuses_a_backward_warns_in_training_mode_and_runs_in_any_float_dtype():
    """Issue 29's WEAK list: a backward gave no input gradient without a word, ``.train()`` computed a mix of
    modes silently, and ``.half()``/``.double()`` failed with the kernel's internal message."""
    import warnings

    from torchvision.models import resnet18

    torch.manual_seed(0)
    bnn = quantswap.binarize(resnet18(num_classes=10), method="xnor").eval()
    x = torch.randn(2, 3, 32, 32)
    packed = quantswap.freeze(bnn)
    out = packed(x)  # inference needs no torch.no_grad()
    with pytest.raises(RuntimeError, match="has no backward.*backend='float'"):
        out.sum().backward()
    with pytest.warns(UserWarning, match="a packed .frozen. model is for inference"):
        packed.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed.eval()
    torch.testing.assert_close(quantswap.freeze(bnn).double()(x.double()).float(), out, atol=1e-5, rtol=1e-5)
    assert quantswap.freeze(bnn).half()(x.half()).dtype == torch.float16


@pytest.mark.parametrize("backend", ["packed", "float"])
def test_load_state_dict_refuses_codes_outside_the_codecs_levels(backend):
    """Issue 29: ``load_state_dict`` accepted binary codes of 7."""
    from torchvision.models import resnet18

    frozen = quantswap.freeze(quantswap.binarize(resnet18(num_classes=10), method="xnor").eval(), backend=backend)
    state = frozen.state_dict()
    key = "layer1.0.conv1.weight_quantizer.codes"
    state[key] = state[key].clone()
    state[key].view(-1)[0] = 7
    with pytest.raises(RuntimeError, match=r"layer1.0.conv1.weight_quantizer.codes: codes must be in \(-1, 1\), found 7"):
        frozen.load_state_dict(state)
    ternary = quantswap.freeze(quantswap.ternarize(resnet18(num_classes=10), expansion=1).eval())
    ternary.load_state_dict(ternary.state_dict())  # 0 is a ternary level
