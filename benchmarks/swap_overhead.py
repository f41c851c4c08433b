"""Swap time and training-step overhead of every method, measured in one run.

* swap time: ``quantswap.binarize`` (irnet) on resnet18, resnet50 and mobilenet_v3_large, best of 3.
* step ratio: one SGD training step (forward, backward, update) of each swapped ResNet-18 over the
  float ResNet-18's, batch 32, at 64 px and at 224 px, on the CPU. Each round times a float step and the
  method's step back to back; the ratio is the median over rounds of the per-round ratios, so a slow
  spell of the machine hits both alike.
* where the time goes: each W1/A1 method's model again at 64 px with its quantizers taken out (real
  weights, real activations), which is what the method's structure alone costs (Bi-Real's shortcuts,
  ReActNet's RPReLUs, ...), and for each method that misses the 64 px goal, a profile of its step against
  the float step's: the operators whose time differs most.

Freed memory stays in the process (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
would): with glibc's defaults every step faults in fresh pages for its big tensors, which on a 2-core
machine moves a ratio by +-0.3 from one run to the next.

Usage: python benchmarks/swap_overhead.py [--rounds 20] [--rounds_224 5] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import ALL_VARIANTS, arguments, convert, keep_freed_memory, machine, meets, publish
from torchvision.models import mobilenet_v3_large, resnet18, resnet50

import quantswap
from quantswap.nn.layers import is_quantized_layer
from quantswap.nn.quantizers import RealWeight

GOALS = {64: 1.2, 224: 1.1}


def swap_seconds(build):
    model = build()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        quantswap.binarize(model, method="irnet")
        times.append(time.perf_counter() - start)
    return min(times)


def trainer(model, size):
    """A function that runs one timed SGD step of ``model`` on a fixed batch of 32 images of ``size`` px."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(32, 3, size, size), torch.randint(0, 1000, (32,))

    def step():
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - start

    return step


def structure_only(model):
    """``model`` with its quantizers taken out: each quantized layer computes with its real weight and input."""
    for layer in filter(is_quantized_layer, model.modules()):
        layer.weight_quantizer, layer.input_quantizer = RealWeight(), None
    return model


def step_ratios(size, rounds, variants=ALL_VARIANTS, transform=lambda model: model, warmup=2):
    """``(float step seconds, {variant: median ratio})`` at ``size`` px, each swapped model passed through
    ``transform`` first."""
    base = resnet18()
    float_step = trainer(base, size)
    floats, ratios = [], {}
    for name, options in variants.items():
        step = trainer(transform(convert(base, options)), size)
        for _ in range(warmup):
            float_step(), step()
        pairs = [(float_step(), step()) for _ in range(rounds)]
        floats += [f for f, _ in pairs]
        ratios[name] = statistics.median(q / f for f, q in pairs)
    return statistics.median(floats), ratios


def op_times(model, size=64, steps=5):
    """Self CPU milliseconds per training step of ``model``, by operator (torch.profiler over ``steps`` steps)."""
    step = trainer(model, size)
    step(), step()
    with torch.profiler.profile() as prof:
        for _ in range(steps):
            step()
    return {e.key: e.self_cpu_time_total / steps / 1000 for e in prof.key_averages()}


def profile_rows(variants, size=64, rows=8):
    """Per method, its step's extra milliseconds over the float step, in total and by operator (largest first)."""
    floats = op_times(resnet18(), size)
    lines = []
    for name, options in variants.items():
        ms = op_times(convert(resnet18(), options), size)
        extra = {op: ms.get(op, 0.0) - floats.get(op, 0.0) for op in ms.keys() | floats.keys()}
        top = sorted(extra.items(), key=lambda item: -item[1])[:rows]
        lines.append(f"| {name} | {sum(ms.values()):.0f} | {sum(extra.values()):+.1f} | "
                     + ", ".join(f"`{op}` {delta:+.1f}" for op, delta in top) + " |")
    return lines, sum(floats.values())


def main():
    args = arguments(__doc__, rounds=20, rounds_224=5)
    kept = keep_freed_memory()
    swaps = {name: swap_seconds(build) for name, build in
             [("resnet18", resnet18), ("resnet50", resnet50), ("mobilenet_v3_large", mobilenet_v3_large)]}
    runs = {64: step_ratios(64, args.rounds), 224: step_ratios(224, args.rounds_224)}
    w1a1 = {name: options for name, options in ALL_VARIANTS.items() if quantswap.config_for(**options).activations}
    _, structure = step_ratios(64, args.rounds, w1a1, structure_only)
    missed = {size: {n: r for n, r in ratios.items() if not meets(r, GOALS[size])} for size, (_, ratios) in runs.items()}
    slow = {name: ALL_VARIANTS[name] for name in missed[64]}
    profile, float_ms = profile_rows(slow) if slow else ([], 0.0)
    lines = [
        f"Measured by `python benchmarks/swap_overhead.py --rounds {args.rounds} --rounds_224 {args.rounds_224}` "
        f"on {machine()}; freed memory {'kept in the process (mallopt)' if kept else 'returned to the OS (not glibc)'}.",
        "",
        "| model | swap time (irnet) |",
        "|---|---|",
        *[f"| {name} | {sec:.3f} s |" for name, sec in swaps.items()],
        "",
        f"ResNet-18, batch 32, SGD step, eager; float step {runs[64][0] * 1000:.0f} ms at 64 px, "
        f"{runs[224][0] * 1000:.0f} ms at 224 px. Median over rounds of (method step / float step timed just before).",
        "",
        "| method | step / float step, 64 px | step / float step, 224 px |",
        "|---|---|---|",
        *[f"| {name} | {runs[64][1][name]:.2f} | {runs[224][1][name]:.2f} |" for name in ALL_VARIANTS],
        "",
        "Goals (issue 14): step ratio <= 1.2 at 64 px and <= 1.1 at 224 px for every method; resnet50 swap <= 1 s.",
        "",
        f"Swap time: {'met' if swaps['resnet50'] <= 1 else 'missed'} (resnet50 {swaps['resnet50']:.2f} s). "
        + " ".join(f"{size} px: " + (f"missed by {', '.join(f'{n} {r:.2f}' for n, r in m.items())}." if m else "met.")
        for size, m in missed.items()),
        "",
        "Where the time goes, first by part: each W1/A1 method's model with its quantizers taken out (real "
        "weights and activations, the method's structure kept: shortcuts, activation modules), step / float "
        "step at 64 px, against the whole method's:",
        "",
        "| method | structure alone | with its quantizers |",
        "|---|---|---|",
        *[f"| {name} | {ratio:.2f} | {runs[64][1][name]:.2f} |" for name, ratio in structure.items()],
        "",
        *([
            f"Then by operator, for each method that misses the 64 px goal: self CPU milliseconds per step under "
            f"torch.profiler (which adds its own overhead: the float step reads {float_ms:.0f} ms there), the step's "
            "total, its difference from the float step's, and the operators that differ most:",
            "",
            "| method | step, ms | over float, ms | largest differences, ms |",
            "|---|---|---|---|",
            *profile,
            "",
        ] if profile else []),
        "The structure's cost is the Bi-Real layout's extra shortcut convolutions (1x1 after an average pool: "
        "`convolution_backward`, `avg_pool2d`), BatchNorms and additions, and the per-channel activation modules "
        "after each sum (`channel_piecewise`: RPReLU, Maxout); the quantizers' cost is elementwise passes over the "
        "44 MB of latent weights (the forward, the backward's re-quantization `row_sign_apply`, the gradient) and "
        "over the activations (the signs, their backward, and `copy_`: binary inputs kept as one byte each and "
        "turned back into floats for the backward).",
    ]
    publish(lines, "Swap time and training-step overhead", args.output)


if __name__ == "__main__":
    main()
