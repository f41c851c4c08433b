"""Two-stage fine-tuning: what share of the steps the first stage should get.

Every W1/A1 method is fine-tuned from the accuracy benchmark's converged FP parent (``benchmarks/accuracy.py``:
the same parent, cached in the same ``--runs`` folder, the same recipe, distilled from the parent) on its
30,000-image budget three ways, once per seed:

* one stage: binary weights and activations for all the steps;
* two stages (binary activations with real weights and weight decay 1e-5, then binary weights from them
  without), the first stage given a half or a quarter of the same steps.

Unlike the accuracy benchmark's two-stage rows, which give each stage one epoch of a 15,000-image subset,
both stages here draw their batches from the one-stage run's 30,000 images (each stage a new shuffle of
them, cut at its share of the steps, its lr schedule fitted to those steps): the same steps and the same
images as the one-stage run. Every run is recorded with the accuracy benchmark's records
(``benchmarks/results/accuracy/``), whose one-stage 30k runs these are, and is not trained again.

Usage: python benchmarks/two_stage_split.py [--seeds 0 1] [--runs runs/accuracy] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from _common import VARIANTS, machine, publish
from accuracy import FULL, RESULTS, SHARED, TWO_STAGES, Bench, Spec, binary, parent_spec, recipe
from records import Records

#: The first stage's share of the steps; None: one stage.
SPLITS = {"one stage": None, "two stages, 1/2 first": 2, "two stages, 1/4 first": 4}


def stages(steps: int, share: int) -> list[dict]:
    """TWO_STAGES over ``steps`` optimizer steps, the first stage taking ``steps // share`` of them."""
    first = steps // share
    return [{**TWO_STAGES[0], "epochs": 1, "max_steps": first}, {**TWO_STAGES[1], "epochs": 1, "max_steps": steps - first}]


def measure(bench: Bench, seeds: list[int]) -> tuple[dict[tuple[str, str, int], float], float]:
    """Top-1 per (method, split, seed), and the minutes all the runs took (the parent's included)."""
    parent = bench.ensure(parent_spec(FULL))
    steps = FULL.secondary // SHARED["batch_size"]
    top1, seconds = {("FP parent", "", 0): parent["top1"]}, parent["wall_seconds"]
    for seed in seeds:
        for name in filter(binary, VARIANTS):
            for split, share in SPLITS.items():
                extra = {} if share is None else {"stages": stages(steps, share)}
                spec = Spec("30k" if share is None else "split", name if share is None else f"{name}, {split}", seed,
                            FULL.secondary, {**recipe(name), **extra})
                result = bench.ensure(spec)
                top1[name, split, seed], seconds = result["top1"], seconds + result["wall_seconds"]
    return top1, seconds / 60


def report(top1: dict, seeds: list[int], minutes: float, scratch: float) -> list[str]:
    methods = [name for name in VARIANTS if binary(name)]
    mean = {(name, split): statistics.mean(top1[name, split, s] for s in seeds) for name in methods for split in SPLITS}
    best = max(SPLITS, key=lambda split: statistics.mean(mean[name, split] for name in methods))
    better = {split: [name for name in methods if mean[name, split] > mean[name, "one stage"]]
              for split, share in SPLITS.items() if share is not None}
    seeds_text = " ".join(str(s) for s in seeds)
    return [
        f"Measured by `python benchmarks/two_stage_split.py --seeds {seeds_text}` on {machine()}: {scratch:.0f} min "
        f"from scratch (the runs' wall times), {minutes:.0f} min this invocation (runs are recorded). FP parent: the "
        f"accuracy benchmark's ({top1['FP parent', '', 0]:.2f} top-1). Every run: {FULL.secondary:,} training images, "
        f"{FULL.secondary // SHARED['batch_size']} "
        "steps of batch 128, distilled from the parent; both stages of a two-stage run draw from the same "
        f"{FULL.secondary:,} images as the one-stage run, and each stage's cosine schedule runs to 0 within its own "
        f"steps. Top-1 on the 10k test images, mean of seeds {seeds_text} "
        "(each seed's value in brackets).",
        "",
        "| method | " + " | ".join(SPLITS) + " |",
        "|---|" + "---|" * len(SPLITS),
        *[f"| {name} | " + " | ".join(
            f"{mean[name, split]:.2f} ({', '.join(f'{top1[name, split, s]:.2f}' for s in seeds)})"
            + ("" if SPLITS[split] is None else f", {mean[name, split] - mean[name, 'one stage']:+.2f}")
            for split in SPLITS) + " |" for name in methods],
        "",
        f"Best on average over the methods: {best}. Better than one stage at the same steps and images (issue 13's "
        "goal for two stages): " + "; ".join(f"{split}: {len(names)} of {len(methods)} methods"
                                              + (f" ({', '.join(names)})" if 0 < len(names) < len(methods) else "")
                                              for split, names in better.items()) + ".",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs", default="runs/accuracy", help="the accuracy benchmark's runs (its parent is reused)")
    parser.add_argument("--output", help="write the section into this Markdown file (BENCHMARKS.md)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    bench = Bench(FULL, Path(args.runs) / FULL.name, Records(RESULTS / "accuracy"))
    top1, scratch = measure(bench, args.seeds)
    minutes = (time.perf_counter() - started) / 60
    publish(report(top1, args.seeds, minutes, scratch), "Two-stage split", args.output)


if __name__ == "__main__":
    main()
