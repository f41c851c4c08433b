"""Training-step ratios of every method's swapped ResNet-18 against the float one, eager and under
``torch.compile`` (inductor), measured in one run.

Each model (the float one included) is compiled once, warmed up until compilation is over, then
timed: one SGD step (forward, backward, update), batch 32 at 64 px on the CPU, median of the timed
steps. Compilation time is reported, not counted in the step.

Usage: python benchmarks/compile_speed.py [--steps 10] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import VARIANTS, convert, machine, publish
from swap_overhead import step_seconds
from torchvision.models import resnet18


def compiled_step(model, steps):
    """(median step seconds, seconds spent compiling) of ``torch.compile(model)``."""
    compiled = torch.compile(model)
    start = time.perf_counter()
    step_seconds(compiled, steps=1, warmup=1)  # compiles forward and backward
    compile_seconds = time.perf_counter() - start
    return step_seconds(compiled, steps), compile_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output", default=None, help="write the markdown section to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = resnet18()
    fp_eager = step_seconds(base, args.steps)
    fp_compiled, fp_compile_s = compiled_step(resnet18(), args.steps)
    rows = []
    for name, options in VARIANTS.items():
        eager = step_seconds(convert(base, options), args.steps)
        compiled, compile_s = compiled_step(convert(base, options), args.steps)
        rows.append((name, eager / fp_eager, compiled / fp_compiled, compiled / fp_eager, compile_s))
    met = [r[0] for r in rows if r[2] <= 1.2]
    lines = [
        f"Measured by `python benchmarks/compile_speed.py --steps {args.steps}` on {machine()}.",
        "",
        f"ResNet-18, batch 32, 64 px, SGD step; float step {fp_eager * 1000:.0f} ms eager, "
        f"{fp_compiled * 1000:.0f} ms compiled ({fp_compile_s:.0f} s to compile).",
        "",
        "| method | eager / float eager | compiled / float compiled | compiled / float eager | compile time |",
        "|---|---|---|---|---|",
        *[f"| {n} | {e:.2f} | {c:.2f} | {ce:.2f} | {s:.0f} s |" for n, e, c, ce, s in rows],
        "",
        f"Goal (issue 14, step <= 1.2x float): met compiled by {len(met)} of {len(rows)} methods"
        + (f" ({', '.join(met)})." if met else "."),
    ]
    publish(lines, "torch.compile step ratios", args.output)


if __name__ == "__main__":
    main()
