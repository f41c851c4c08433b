"""BENCHMARKS.md's accuracy section is what ``benchmarks/accuracy.py`` makes of its own measurements
(``benchmarks/accuracy.json``): no table cell and no met/missed goal is written by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402


def test_benchmarks_md_is_the_report_of_accuracy_json():
    saved = json.loads((ROOT / "benchmarks" / "accuracy.json").read_text())
    budget = accuracy.Budget(**saved["budget"])
    options = SimpleNamespace(**saved["options"])
    lines = accuracy.report(saved["results"], options.seeds, budget, minutes=0.0, args=options)
    section = (ROOT / "BENCHMARKS.md").read_text().split("## Accuracy on Fashion-MNIST\n", 1)[1].split("\n## ")[0]
    published = section.strip().splitlines()
    # The first line says how long this invocation ran; everything after it must match exactly.
    assert published[1:] == lines[1:]
    assert any(line.startswith("- Missed:") for line in published)


def test_goals_are_judged_from_the_numbers():
    def result(top1: float) -> dict:
        return {"top1": top1, "train_img_s": 50.0, "file_bytes": 2e6, "wall_seconds": 1}

    budget = accuracy.Budget("test", parent_images=None, parent_epochs=2, images=100, val_images=None, curve=(50, 200),
                             goal_curve=(200,))
    results = {"FP parent": {**result(85.0), "train_img_s": 100.0, "epoch_top1": [84.5, 85.0]}}
    for name in accuracy.VARIANTS:
        results[f"{name}|0"] = result(84.9)  # 0.1 below FP
        results[f"{name}, two-stage|0"] = result(84.8 if name == "bireal W1/A1" else 84.95)
    best = accuracy.best_binary(results, [0])
    results[f"{best}, BN re-estimated|0"] = result(85.0)
    results[f"{best}, start|0"] = {"top1": 10.0, "recalibrated_top1": 40.0, "wall_seconds": 1}
    results[f"{best}|images=50"] = result(80.0)
    results[f"{best}|images=200"] = result(84.0)
    for name in accuracy.goal_rows():
        results[f"{name}|images=200"] = result(84.7 if name == "ternary t=2" else 84.6)  # 0.3 / 0.4 below FP
    results[f"{best}, two-stage|images=200"] = result(84.1)  # +0.1 over one stage at 200 images
    options = SimpleNamespace(quick=False, seeds=[0], plot=None)
    lines = accuracy.report(results, [0], budget, minutes=0.0, args=options)
    met = next(line for line in lines if line.startswith("- Met:"))
    missed = next(line for line in lines if line.startswith("- Missed:"))
    assert "ternary t=2 0.10 points below FP (goal: within 0.3)" in met
    assert "irnet W1/A32 0.10 points below FP (goal: within 0.5)" in met
    assert "xnor W1/A1, two-stage +0.05 points over one stage (goal: better)" in met
    assert "bireal W1/A1, two-stage -0.10 points over one stage (goal: better)" in missed
    assert "best W1/A1 (xnor W1/A1, two-stage) 0.05 points below FP (goal: within 3; stretch 2: met)" in met
    assert "| xnor W1/A1 | 84.90 | -0.10 | 84.90 | 2.00 MB | 2.00 |" in lines
    assert "The FP parent, top-1 after each epoch: 84.50, 85.00 (the last epoch +0.50 over the one before)." in lines
    recalibration = next(line for line in lines if line.startswith("BN re-estimated"))
    assert f"{best} with `--recalibrate-bn 100`" in recalibration
    assert "top-1 goes from 10.00 to 40.00; at the end of the run it is +0.10 points" in recalibration
    assert lines[lines.index("| training images | top-1 | Δ vs FP |") + 2:][:2] == ["| 50 | 80.00 | -5.00 |",
                                                                                        "| 100 | 84.90 | -0.10 |"]
    assert f"{best} within 3 points of FP on the budget curve: from 100 training images (-0.10)" in met
    assert "| ternary t=2 | FP | 84.90 (-0.10) | 84.70 (-0.30) | within 0.3 of FP |" in lines
    assert "ternary t=2 within 0.3 of FP on more images: from 100 training images (-0.10)" in met
    assert f"{best}, two-stage better than one stage on more images: from 100 training images (+0.05)" in met
    assert "MobileNetV2" not in missed  # no transfer runs, no transfer goals judged


def test_goals_on_more_images_say_how_far_they_are_when_missed():
    def result(top1: float) -> dict:
        return {"top1": top1, "train_img_s": 50.0, "file_bytes": 2e6, "wall_seconds": 1}

    budget = accuracy.Budget("test", parent_images=None, parent_epochs=2, images=100, val_images=None,
                             goal_curve=(200, 400))
    results = {"FP parent": result(90.0)}
    best = "react W1/A1"
    for images, delta in ((100, -2.0), (200, -1.0), (400, -0.6)):
        for name in accuracy.goal_rows():
            results[f"{name}|0" if images == 100 else f"{name}|images={images}"] = result(90.0 + delta)
        for key, top1 in ((best, 80.0), (f"{best}, two-stage", 79.5)):
            results[f"{key}|0" if images == 100 else f"{key}|images={images}"] = result(top1)
        for name, top1 in (("FP", 88.0), ("ternary t=2", 87.5 + images / 1000), ("irnet W1/A32", 80.0)):
            results[f"mobilenet_v2 {name}" if images == 100 else f"mobilenet_v2 {name}|images={images}"] = result(top1)
    lines, met, missed = accuracy.goal_curve(results, best, budget, 0)
    assert "irnet W1/A32 within 0.5 of FP on more images: not by 400 images (-0.60)" in missed
    assert f"{best}, two-stage better than one stage on more images: not by 400 images (-0.50)" in missed
    assert "MobileNetV2 ternary t=2 within 1 of the FP transfer on more images: from 100 training images (-0.40)" in met
    assert "| MobileNetV2 irnet W1/A32 | the FP transfer | 80.00 (-8.00) | 80.00 (-8.00) | 80.00 (-8.00) | " \
           "within 1 of the FP transfer |" in lines


def test_zoo_rebuild_verdict_allows_the_stated_tolerance_and_prints_the_difference():
    import zoo

    assert zoo.verdict(74.30, 74.30) == (True, "reproduced exactly")
    assert zoo.verdict(74.36, 74.30) == (True, "reproduced within 0.5 points (+0.06)")  # another machine's Bi-Real
    assert zoo.verdict(73.79, 74.30) == (False, "DIFFERS by -0.51 points (tolerance 0.5)")
    assert zoo.verdict(73.79, 74.30, tolerance=1.0)[0]
