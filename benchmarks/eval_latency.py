"""Eval-mode latency of every method's swapped ResNet-18, against the frozen model and the float one.

A swapped model in eval mode without autograd reuses each layer's quantized weight until the latent
weight changes; "re-quantizing" forces the old behaviour (every latent weight touched in place before
each forward, as an optimizer step would). Batch 1 at 224 px on the CPU, median of the timed
forwards after warm-up, the four models timed in turns, all in one run.

Usage: python benchmarks/eval_latency.py [--iters 20] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import ALL_VARIANTS, arguments, convert, machine, meets, publish
from torchvision.models import resnet18

import quantswap


@torch.no_grad()
def latencies(models: dict, x: torch.Tensor, iters: int, before: dict, warmup: int = 2) -> dict[str, float]:
    """Median forward time of each model, timed in turns (one forward of each per round) so that a drift
    of the machine's speed during the run affects every model alike."""
    times = {name: [] for name in models}
    for i in range(warmup + iters):
        for name, model in models.items():
            if name in before:
                before[name]()
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def touch(model):
    """Bump every quantized layer's latent weight version, as an optimizer step would."""
    layers = [model.get_submodule(n) for n in model.meta["quantswap"].quantized]
    return lambda: [layer.weight.mul_(1.0) for layer in layers]


def main():
    args = arguments(__doc__, iters=20)
    x = torch.randn(1, 3, 224, 224)
    base = resnet18().eval()
    rows, fps = [], []
    for name, options in ALL_VARIANTS.items():
        model = convert(base, options).eval()
        fresh = convert(base, options).eval()
        t = latencies({"float": base, "frozen": quantswap.freeze(model, backend="float"), "swapped": model, "fresh": fresh}, x,
                      args.iters, before={"fresh": touch(fresh)})
        fps.append(t["float"])
        rows.append((name, t["swapped"] / t["frozen"], t["fresh"] / t["frozen"], t["swapped"] / t["float"],
                     t["frozen"] / t["float"]))
    fp = statistics.median(fps)
    worst = max(r[1] for r in rows)
    lines = [
        f"Measured by `python benchmarks/eval_latency.py --iters {args.iters}` on {machine()}.",
        "",
        f"ResNet-18, batch 1, 224 px, `torch.no_grad()`; float forward: {fp * 1000:.1f} ms.",
        "",
        "| method | swapped / frozen | re-quantizing / frozen | swapped / float | frozen / float |",
        "|---|---|---|---|---|",
        *[f"| {n} | {c:.2f} | {f:.2f} | {cf:.2f} | {zf:.2f} |" for n, c, f, cf, zf in rows],
        "",
        "Goal (issue 14): swapped eval-mode forward <= 1.1x the frozen model's: "
        + (f"met (worst {worst:.2f})." if meets(worst, 1.1) else f"missed (worst {worst:.2f})."),
        "Frozen here is `freeze(model, backend=\"float\")`: the same float convolutions as the swapped model, "
        "so the ratio is what re-quantizing costs. W1/A1 models frozen with the packed kernels: see "
        "\"Packed W1/A1 inference on the CPU\".",
    ]
    publish(lines, "Eval-mode latency", args.output)


if __name__ == "__main__":
    main()
