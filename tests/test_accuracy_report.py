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
    results = {"FP parent": {"top1": 85.0, "train_img_s": 100.0, "file_bytes": 4e7, "wall_seconds": 1}}
    for name in accuracy.VARIANTS:
        for distill, top1 in ((True, 84.9), (False, 85.0)):  # 0.1 below FP; distillation 0.1 worse
            results[f"{name}|{distill}|0"] = {"top1": top1, "train_img_s": 50.0, "file_bytes": 2e6,
                                               "wall_seconds": 1}
    options = SimpleNamespace(quick=False, seeds=[0], longer=None, plot=None)
    lines = accuracy.report(results, [0], accuracy.FULL, minutes=0.0, args=options)
    met = next(line for line in lines if line.startswith("- Met:"))
    missed = next(line for line in lines if line.startswith("- Missed:"))
    assert "ternary t=2 0.10 points below FP (goal: within 0.3)" in met
    assert "irnet W1/A32 0.10 points below FP (goal: within 0.5)" in met
    assert "bireal W1/A1 distillation -0.10 points over labels only (goal: better)" in missed
    assert "| xnor W1/A1 | 84.90 | 85.00 | -0.10 | -0.10 | 2.00 MB | 2.00 / 2.00 |" in lines


def test_zoo_rebuild_verdict_allows_the_stated_tolerance_and_prints_the_difference():
    import zoo

    assert zoo.verdict(74.30, 74.30) == (True, "reproduced exactly")
    assert zoo.verdict(74.36, 74.30) == (True, "reproduced within 0.5 points (+0.06)")  # another machine's Bi-Real
    assert zoo.verdict(73.79, 74.30) == (False, "DIFFERS by -0.51 points (tolerance 0.5)")
    assert zoo.verdict(73.79, 74.30, tolerance=1.0)[0]
