"""Every torchvision classification model times every method, and a set of timm families.

For each: it converts, the output shape is unchanged, backward gives a finite gradient to every
latent weight, and no float Conv2d/Linear remains except those kept real on purpose.

The 17 models of 100M parameters or more (VGG, ViT-L/H, RegNet-Y-128GF, ...) are marked
``giant``: on the 2-core CI machine their five conversions cost ~2 minutes each, so they run with
``make test-giants`` rather than in the default suite. Of the other models, the default suite
converts each with one seed method, in turn (so every method meets every kind of layout), the later
methods on five layouts, and the timm families each with the methods in turn; the rest of the product
is marked ``sweep`` and runs with ``make test-sweep``.
"""

import functools

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

import quantswap

#: quantswap's own methods, each with its default options (a method registered by the tests is covered by
#: the ``variant`` tests; the sweep's cost grows with every method, so it stays with the library's).
METHODS = [m for m in quantswap.list_methods() if quantswap.config_for(m).__module__.startswith("quantswap.")]
#: The seed methods, whose rewrites (layer swap, activation replacement, Bi-Real shortcuts, BN freezing)
#: every later method reuses, sweep every model; a later method (ReActNet: Bi-Real's shortcuts plus
#: per-channel RSign/RPReLU) runs on one model of each layout, which is what its own parts depend on.
SEED_METHODS = ("xnor", "irnet", "bireal", "mcdonnell", "ternary")
LATER_METHODS = [m for m in METHODS if m not in SEED_METHODS]
LAYOUTS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "googlenet", "regnet_x_400mf", "densenet121",
           "squeezenet1_0", "shufflenet_v2_x0_5", "convnext_tiny", "swin_t", "vit_b_16", "maxvit_t"]
#: The layouts the default suite runs the later methods on (the rest with ``make test-sweep``): a residual
#: CNN, inverted residuals with depthwise convs, squeeze-excitation, a ConvNeXt and a transformer.
LATER_DEFAULT = ("resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_b_16")
TORCHVISION_MODELS = list_models(module=torchvision.models)
GIANT = 100e6
# builder arguments and input sizes that keep each model small enough for a CPU test
BUILD_ARGS = {name: {"image_size": 32} for name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")}
BUILD_ARGS["vit_h_14"] = {"image_size": 28}
INPUT_SIZE = {"alexnet": 64, "inception_v3": 299, "maxvit_t": 224, "vit_h_14": 28}


def _params(name):
    return get_model_weights(name).DEFAULT.meta["num_params"]


@functools.lru_cache(maxsize=1)
def _float_model(name):
    return get_model(name, weights=None, num_classes=10, **BUILD_ARGS.get(name, {})).train()


def _swap(model, method):
    return quantswap.swap(model, quantswap.config_for(method))


def _outputs(output):
    """All output tensors: GoogLeNet and Inception return (logits, aux logits...) in train mode."""
    return [output] if isinstance(output, torch.Tensor) else [o for o in output if o is not None]


def check_swap(model, method, x):
    reference = _outputs(model(x))
    swapped = _swap(model, method)
    outs = _outputs(swapped(x))
    assert [o.shape for o in outs] == [o.shape for o in reference]
    assert all(torch.isfinite(o).all() for o in outs), "non-finite output"
    # Backward is linear in the upstream gradient. Deep, randomly initialized binary nets explode:
    # EfficientNet-V2-M with Bi-Real reaches weight gradients of 1e53 (measured in float64), past
    # float32's 3e38, and inf·0 in a clipped estimator then gives NaN. An upstream gradient of
    # 2^-90 (exact) keeps every model of the sweep inside float32's range.
    (sum(o.float().sum() for o in outs) * 2.0**-90).backward()
    report = quantswap.get_swap_report(swapped)
    if not all(torch.isfinite(swapped.get_submodule(n).weight.grad).all() for n in report.quantized):
        # EfficientNet-V2-M with IR-Net's early EDE (gradient ~1 everywhere) overflows even then:
        # check the same backward in float64, whose range holds it.
        swapped.zero_grad(set_to_none=True)
        swapped.double()
        outs = _outputs(swapped(x.double()))
        (sum(o.sum() for o in outs) * 2.0**-90).backward()
    assert report.quantized
    for name in report.quantized:
        layer = swapped.get_submodule(name)
        assert layer.weight.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(layer.weight.grad).all(), f"{name}: non-finite gradient"
    leftover = [n for n, m in swapped.named_modules() if type(m) in (nn.Conv2d, nn.Linear)
                and n not in report.kept_real and "_shortcut." not in n]  # Bi-Real shortcuts are real by design
    assert not leftover, f"float layers left that nobody chose to keep: {leftover}"
    return swapped


#: The seed method each model below 100M parameters is converted with in the default suite, in turn.
IN_TURN = {name: SEED_METHODS[i % len(SEED_METHODS)]
           for i, name in enumerate(n for n in TORCHVISION_MODELS if _params(n) < GIANT)}


#: Above this, a model's turn runs with the sweep too (the default suite keeps one of each family below it,
#: and the layouts above): a conversion of 30-100M parameters costs several seconds on the CI machine.
LARGE = 30e6


def _marks(name: str, method: str) -> list:
    if name not in IN_TURN:
        return [pytest.mark.zoo, pytest.mark.giant]
    default = IN_TURN[name] == method and (_params(name) < LARGE or name in LAYOUTS)
    return [pytest.mark.zoo] + ([] if default else [pytest.mark.sweep])


CASES = [
    pytest.param(name, method, marks=_marks(name, method), id=f"{name}-{method}")
    for name in TORCHVISION_MODELS for method in SEED_METHODS
] + [pytest.param(name, method, marks=[pytest.mark.zoo] + ([] if name in LATER_DEFAULT else [pytest.mark.sweep]),
                  id=f"{name}-{method}") for name in LAYOUTS for method in LATER_METHODS]


@pytest.mark.parametrize("name, method", CASES)
def test_torchvision_model_converts(name, method):
    model = _float_model(name)
    size = INPUT_SIZE.get(name, 32)
    check_swap(model, method, torch.randn(2, 3, size, size))


def test_the_sweep_covers_every_torchvision_classification_model():
    assert len(TORCHVISION_MODELS) >= 80
    assert {c.values[0] for c in CASES} == set(TORCHVISION_MODELS)
    assert len(CASES) == len(TORCHVISION_MODELS) * len(SEED_METHODS) + len(LAYOUTS) * len(LATER_METHODS)
    assert set(SEED_METHODS) <= set(METHODS) and set(LAYOUTS) <= set(TORCHVISION_MODELS)
    default = [c.values for c in CASES if not {m.name for m in c.marks} & {"giant", "sweep"}]
    assert all(sum(method == m for _, m in default) >= 8 for method in SEED_METHODS)  # each method, many layouts


TIMM_MODELS = {
    "resnet18d": 32,
    "efficientnet_b0": 32,
    "mobilenetv3_small_100": 32,
    "regnetx_002": 32,
    "convnext_atto": 32,
    "vit_tiny_patch16_224": 224,
}


def _timm_marks(name: str, method: str) -> list:
    """Every method on ``resnet18d``; on each other family, the methods in turn (each method meets one)."""
    others = [n for n in TIMM_MODELS if n != "resnet18d"]
    default = name == "resnet18d" or others[METHODS.index(method) % len(others)] == name
    return [] if default else [pytest.mark.sweep]


@pytest.mark.parametrize("name, method", [pytest.param(name, method, marks=_timm_marks(name, method),
                                                       id=f"{method}-{name}")
                                          for method in METHODS for name in TIMM_MODELS])
def test_timm_family_converts(name, method):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=10)
    size = TIMM_MODELS[name]
    swapped = check_swap(model, method, torch.randn(2, 3, size, size))
    swapped.eval()
    assert swapped(torch.randn(1, 3, size, size)).shape == (1, 10)
