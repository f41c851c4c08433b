"""Training-step ratios of every method's swapped ResNet-18 against the float one, eager and under
``torch.compile`` (inductor), at 64 px and at 224 px, measured in one run.

Each model (the float one included) is compiled once per image size, warmed up until compilation is
over, then timed: one SGD step (forward, backward, update), batch 32 on the CPU. Each round times the
float step and the method's step back to back, eager and compiled; a ratio is the median over rounds.
Compilation time is reported, not counted in the step. Every model compiles with the options
``quantswap finetune --compile`` uses (``quantswap.train.loop.compile_options``: on the CPU, no layout
optimization); dynamo's caches are cleared between the two sizes, so each size gets static-shape
graphs. Freed memory stays in the process, as in ``swap_overhead.py``.

Usage: python benchmarks/compile_speed.py [--rounds 8] [--rounds_224 3] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import ALL_VARIANTS, arguments, convert, keep_freed_memory, machine, meets, publish
from swap_overhead import GOALS, trainer
from torchvision.models import resnet18

from quantswap.train.loop import compile_options


def compiled_trainer(model, size):
    """``(step, seconds the first two steps took)``: the first steps compile forward and backward."""
    step = trainer(torch.compile(model, options=compile_options(torch.device("cpu"))), size)
    start = time.perf_counter()
    step(), step()
    return step, time.perf_counter() - start


def sweep(size, rounds):
    """Every method at ``size`` px: ``(rows, float eager seconds, float compiled seconds, float compile seconds)``,
    a row being ``(method, eager / float eager, compiled / float compiled, compiled / float eager, compile s)``."""
    torch._dynamo.reset()
    base = resnet18()
    fp_eager = trainer(base, size)
    fp_compiled, fp_compile_s = compiled_trainer(resnet18(), size)
    rows, floats = [], {"eager": [], "compiled": []}
    for name, options in ALL_VARIANTS.items():
        eager = trainer(convert(base, options), size)
        comp, compile_s = compiled_trainer(convert(base, options), size)
        fp_eager(), eager()
        pairs = [(fp_eager(), eager(), fp_compiled(), comp()) for _ in range(rounds)]
        floats["eager"] += [p[0] for p in pairs]
        floats["compiled"] += [p[2] for p in pairs]
        rows.append((name, statistics.median(e / f for f, e, _, _ in pairs),
                     statistics.median(c / fc for _, _, fc, c in pairs),
                     statistics.median(c / f for f, _, _, c in pairs), compile_s))
    return rows, statistics.median(floats["eager"]), statistics.median(floats["compiled"]), fp_compile_s


def section(size, rows, float_eager, float_compiled, fp_compile_s):
    """BENCHMARKS.md lines for one size: :func:`sweep`'s table and which methods meet the goal."""
    goal = GOALS[size]
    eager_met = [r[0] for r in rows if meets(r[1], goal)]
    met = [r[0] for r in rows if meets(r[2], goal)]
    return [
        f"ResNet-18, batch 32, {size} px, SGD step; float step {float_eager * 1000:.0f} ms eager, "
        f"{float_compiled * 1000:.0f} ms compiled ({fp_compile_s:.0f} s to compile); each ratio is the median over "
        "rounds of a method's step over the float step timed just before it.",
        "",
        "| method | eager / float eager | compiled / float compiled | compiled / float eager | compile time |",
        "|---|---|---|---|---|",
        *[f"| {n} | {e:.2f} | {c:.2f} | {ce:.2f} | {s:.0f} s |" for n, e, c, ce, s in rows],
        "",
        f"Goal (issue 14) at {size} px: step <= {goal}x the float step, eager: met by {len(eager_met)} of {len(rows)} "
        "methods" + (f" ({', '.join(eager_met)})" if eager_met else "")
        + f"; compiled against the compiled float step: met by {len(met)} of {len(rows)}"
        + (f" ({', '.join(met)})." if met else "."),
        "",
    ]


def main():
    args = arguments(__doc__, rounds=8, rounds_224=3)
    keep_freed_memory()
    sizes = {64: sweep(64, args.rounds), 224: sweep(224, args.rounds_224)}
    lines = [
        f"Measured by `python benchmarks/compile_speed.py --rounds {args.rounds} --rounds_224 {args.rounds_224}` "
        f"on {machine()}.",
        "",
        *[line for size, result in sizes.items() for line in section(size, *result)],
        "Eager runs quantswap's fused C++ kernels; compiled, the PyTorch formulas that inductor fuses itself. "
        "Compile times are shorter when inductor's cache (in /tmp) holds kernels from an earlier run.",
    ]
    publish(lines, "torch.compile step ratios", args.output)


if __name__ == "__main__":
    main()
