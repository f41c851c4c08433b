"""torch.compile on swapped models (issue 14): every method compiles as one graph (``fullgraph=True``: no
graph break in quantswap's code) in train and eval mode, gives the eager outputs and gradients, and
moving IR-Net's schedule does not recompile. ``aot_eager`` traces forward and backward exactly as
inductor does, without generating kernels, so the check stays fast; ``--compile`` runs inductor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quantswap


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.variants_sample("xnor", "irnet", "react", "adabin", "irnet-w1a32", "mcdonnell", "ternary-t2", "throwaway",
                              "throwaway-a1")
def test_every_variant_compiles_to_one_graph_with_the_eager_numbers(variant):
    torch._dynamo.reset()
    eager = quantswap.swap(_net(), variant.config()).train()
    compiled_model = quantswap.swap(_net(), variant.config()).train()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 3, 8, 8)
    for module in (eager, compiled):
        module(x).square().sum().backward()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)
    # eager runs the native kernels (EDE through a polynomial exp), the graph the PyTorch formulas: float32
    # rounding apart, and a bias before a BatchNorm has a true gradient of 0 made of that rounding (1.4e-6)
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5, msg=name)
    eager.eval(), compiled_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)


def test_moving_the_schedule_does_not_recompile():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = torch.compile(quantswap.swap(_net(), quantswap.config_for("irnet")).train(), backend="aot_eager")
    x = torch.randn(4, 3, 8, 8)
    for step in range(4):
        quantswap.set_progress(model, step / 3)
        model(x).sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    assert model.get_submodule("3").input_quantizer.t == 10.0  # the schedule did move


def test_inductor_with_finetunes_options_gives_the_eager_numbers():
    """``--compile``'s inductor options (no layout optimization on the CPU) on ReCU, whose per-filter weight
    statistics that optimization slowed down: the same outputs and gradients as eager."""
    from quantswap.train.loop import compile_options

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = quantswap.swap(_net(), quantswap.config_for("recu")).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, options=compile_options(torch.device("cpu")))
    x = torch.randn(4, 3, 12, 12)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    compiled(x).square().sum().backward()
    eager(x).square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
