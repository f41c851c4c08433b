"""Activation memory of a training step: the bytes autograd saves for the backward pass, of every
method's swapped ResNet-18 against the float one (batch 32, 64 px).

Counted exactly, not sampled: ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor saved
during the forward, and each storage is counted once (a tensor saved by two ops, or a parameter, is
one storage). This is the part of peak training memory that a method changes; parameters, gradients
and optimizer state are the float model's (the latent weights are float).

Usage: python benchmarks/saved_memory.py [--output BENCHMARKS.md]
"""

from __future__ import annotations

import torch
from _common import VARIANTS, arguments, convert, machine, publish
from torchvision.models import resnet18


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return sum(storages.values())


def main():
    args = arguments(__doc__)
    x = torch.randn(32, 3, 64, 64)
    base = resnet18()
    fp = saved_bytes(base, x)
    rows = [(name, saved_bytes(convert(base, options), x) / fp) for name, options in VARIANTS.items()]
    met = [name for name, ratio in rows if ratio <= 1.3]
    lines = [
        f"Measured by `python benchmarks/saved_memory.py` on {machine()}.",
        "",
        f"ResNet-18, batch 32, 64 px, one training forward; the float model saves {fp / 1e6:.1f} MB for its backward.",
        "",
        "| method | saved for backward / float |",
        "|---|---|",
        *[f"| {name} | {ratio:.2f} |" for name, ratio in rows],
        "",
        f"Goal (issue 14, peak training memory <= 1.3x float): the bytes saved for backward meet it for {len(met)} "
        f"of {len(rows)} methods" + (f" ({', '.join(met)})." if met else ".")
        + " Where they go: a binary activation saves its input for the estimator (float) and the convolution "
        "saves sign(input) (float again), where one bit would do; every quantized convolution also saves its "
        "quantized weight (a float copy of the weight: ternary's 1.43 is that alone). A fused quantized-conv "
        "autograd function that saves bits and re-derives the weight in the backward is the fix.",
    ]
    publish(lines, "Activation memory of a training step", args.output)


if __name__ == "__main__":
    main()
