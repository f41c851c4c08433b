"""Training-step ratios of every method's swapped ResNet-18 against the float one, eager and under
``torch.compile`` (inductor), measured in one run.

Each model (the float one included) is compiled once, warmed up until compilation is over, then
timed: one SGD step (forward, backward, update), batch 32 at 64 px on the CPU, median of the timed
steps, each method right after the float model (eager and compiled) so that a drift of the
machine's speed affects both. Compilation time is reported, not counted in the step.

Usage: python benchmarks/compile_speed.py [--steps 10] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import VARIANTS, arguments, convert, machine, publish
from swap_overhead import step_seconds
from torchvision.models import resnet18


def compiled(model):
    """``(torch.compile(model), seconds it took)``: one step compiles forward and backward."""
    model = torch.compile(model)
    start = time.perf_counter()
    step_seconds(model, steps=1, warmup=1)
    return model, time.perf_counter() - start


def main():
    args = arguments(__doc__, steps=10)
    base = resnet18()
    fp_compiled, fp_compile_s = compiled(resnet18())
    rows, fp_eagers, fp_compileds = [], [], []
    for name, options in VARIANTS.items():  # each timed right after the float model: drift hits both alike
        fp_eager = step_seconds(base, args.steps)
        eager = step_seconds(convert(base, options), args.steps)
        fp_comp = step_seconds(fp_compiled, args.steps)
        model, compile_s = compiled(convert(base, options))
        comp = step_seconds(model, args.steps)
        rows.append((name, eager / fp_eager, comp / fp_comp, comp / fp_eager, compile_s))
        fp_eagers.append(fp_eager)
        fp_compileds.append(fp_comp)
    fp_eager, fp_compiled_s = statistics.median(fp_eagers), statistics.median(fp_compileds)
    eager_met = [r[0] for r in rows if r[1] <= 1.2]
    met = [r[0] for r in rows if r[2] <= 1.2]
    lines = [
        f"Measured by `python benchmarks/compile_speed.py --steps {args.steps}` on {machine()}.",
        "",
        f"ResNet-18, batch 32, 64 px, SGD step; float step {fp_eager * 1000:.0f} ms eager, "
        f"{fp_compiled_s * 1000:.0f} ms compiled ({fp_compile_s:.0f} s to compile); each method's ratios are "
        "against the float steps timed just before it.",
        "",
        "| method | eager / float eager | compiled / float compiled | compiled / float eager | compile time |",
        "|---|---|---|---|---|",
        *[f"| {n} | {e:.2f} | {c:.2f} | {ce:.2f} | {s:.0f} s |" for n, e, c, ce, s in rows],
        "",
        f"Goal (issue 14): step <= 1.2x the float step, eager: met by {len(eager_met)} of {len(rows)} methods"
        + (f" ({', '.join(eager_met)})" if eager_met else "")
        + f"; compiled against the compiled float step: met by {len(met)} of {len(rows)}"
        + (f" ({', '.join(met)})." if met else "."),
        "Compile times are shorter when inductor's cache (in /tmp) holds kernels from an earlier run; the "
        "ratios are medians of 10 steps on a 2-core machine and move by about 0.1 between runs.",
    ]
    publish(lines, "torch.compile step ratios", args.output)


if __name__ == "__main__":
    main()
