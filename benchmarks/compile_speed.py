"""Training-step ratios of every method's swapped ResNet-18 against the float one, eager and under
``torch.compile`` (inductor), measured in one run.

Each model (the float one included) is compiled once, warmed up until compilation is over, then
timed: one SGD step (forward, backward, update), batch 32 at 64 px on the CPU. Each round times the
float step and the method's step back to back, eager and compiled; a ratio is the median over rounds.
Compilation time is reported, not counted in the step. Every model compiles with the options
``quantswap finetune --compile`` uses (``quantswap.train.loop.compile_options``: on the CPU, no layout
optimization). Freed memory stays in the process, as in ``swap_overhead.py``.

Usage: python benchmarks/compile_speed.py [--rounds 8] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import ALL_VARIANTS, arguments, convert, keep_freed_memory, machine, publish
from swap_overhead import trainer
from torchvision.models import resnet18

from quantswap.train.loop import compile_options


def compiled_trainer(model):
    """``(step, seconds the first two steps took)``: the first steps compile forward and backward."""
    step = trainer(torch.compile(model, options=compile_options(torch.device("cpu"))), 64)
    start = time.perf_counter()
    step(), step()
    return step, time.perf_counter() - start


def main():
    args = arguments(__doc__, rounds=8)
    keep_freed_memory()
    base = resnet18()
    fp_eager = trainer(base, 64)
    fp_compiled, fp_compile_s = compiled_trainer(resnet18())
    rows, floats = [], {"eager": [], "compiled": []}
    for name, options in ALL_VARIANTS.items():
        eager = trainer(convert(base, options), 64)
        comp, compile_s = compiled_trainer(convert(base, options))
        fp_eager(), eager()
        pairs = [(fp_eager(), eager(), fp_compiled(), comp()) for _ in range(args.rounds)]
        floats["eager"] += [p[0] for p in pairs]
        floats["compiled"] += [p[2] for p in pairs]
        rows.append((name, statistics.median(e / f for f, e, _, _ in pairs),
                     statistics.median(c / fc for _, _, fc, c in pairs),
                     statistics.median(c / f for f, _, _, c in pairs), compile_s))
    eager_met = [r[0] for r in rows if r[1] <= 1.2]
    met = [r[0] for r in rows if r[2] <= 1.2]
    lines = [
        f"Measured by `python benchmarks/compile_speed.py --rounds {args.rounds}` on {machine()}.",
        "",
        f"ResNet-18, batch 32, 64 px, SGD step; float step {statistics.median(floats['eager']) * 1000:.0f} ms eager, "
        f"{statistics.median(floats['compiled']) * 1000:.0f} ms compiled ({fp_compile_s:.0f} s to compile); each "
        "ratio is the median over rounds of a method's step over the float step timed just before it.",
        "",
        "| method | eager / float eager | compiled / float compiled | compiled / float eager | compile time |",
        "|---|---|---|---|---|",
        *[f"| {n} | {e:.2f} | {c:.2f} | {ce:.2f} | {s:.0f} s |" for n, e, c, ce, s in rows],
        "",
        f"Goal (issue 14): step <= 1.2x the float step, eager: met by {len(eager_met)} of {len(rows)} methods"
        + (f" ({', '.join(eager_met)})" if eager_met else "")
        + f"; compiled against the compiled float step: met by {len(met)} of {len(rows)}"
        + (f" ({', '.join(met)})." if met else ".")
        + " Eager runs quantswap's fused C++ kernels; compiled, the PyTorch formulas that inductor fuses itself.",
        "Compile times are shorter when inductor's cache (in /tmp) holds kernels from an earlier run.",
    ]
    publish(lines, "torch.compile step ratios", args.output)


if __name__ == "__main__":
    main()
