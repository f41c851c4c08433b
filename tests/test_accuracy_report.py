"""BENCHMARKS.md's accuracy section is what ``benchmarks/accuracy.py`` makes of its committed records
(``benchmarks/results/accuracy/``): no table cell and no met/missed goal is written by hand; records are
found by their options, so a table fills over sessions and machines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
from records import Records, same  # noqa: E402


def test_benchmarks_md_is_the_report_of_the_records(tmp_path):
    bench = accuracy.Bench(accuracy.FULL, tmp_path, Records(accuracy.RESULTS / "accuracy"))
    lines = accuracy.report(accuracy.collect(bench), "benchmarks/accuracy.png")
    section = (ROOT / "BENCHMARKS.md").read_text().split("## Accuracy on Fashion-MNIST\n", 1)[1].split("\n## ")[0]
    assert section.strip().splitlines() == "\n".join(lines).strip().splitlines()


def test_every_record_is_a_run_of_the_plan_or_says_where_it_came_from():
    records = Records(accuracy.RESULTS / "accuracy").all()
    assert records, "the accuracy benchmark has no records"
    for record in records:
        assert {"row", "options", "top1", "machine", "commit", "date", "seed", "images"} <= set(record)
        assert isinstance(record["top1"], float) and 0 <= record["top1"] <= 100


def _record(top1: float, parent: float = 90.0, **extra) -> dict:
    return {"top1": top1, "file_bytes": 2e6, "train_img_s": 50.0, "wall_seconds": 60.0, "machine": "test CPU",
            "date": "2026-12-07T00:00:00+00:00", "images": 240_000, "options": {"x": top1},
            "parent": {"top1": parent, "sha256": "p", "machine": "test CPU"}, **extra}


def _table(found: dict, pending=()) -> accuracy.Table:
    parent = {**_record(90.0), "epoch_top1": [89.5, 90.0], "train_img_s": 100.0}
    return accuracy.Table(accuracy.FULL, "records/", {("parent", "FP parent", 0): parent, **found}, list(pending), {})


def test_goals_are_judged_from_the_numbers_against_each_runs_own_parent():
    found = {}
    for name in accuracy.headline_rows():
        top1 = 89.0 if "W1/A1" in name else 89.85  # W1/A1 1 below FP; W1/A32 and ternary 0.15 below
        if name == "bireal W1/A1, two-stage":
            top1 = 88.5  # worse than one stage
        if name == "mcdonnell W1/A32":
            top1 = 89.5  # 0.5 below its parent: misses 0.3
        found["headline", name, 0] = _record(top1)
    found["headline", "ternary t=2", 1] = _record(89.65, parent=89.7)  # another parent: 0.05 below it
    met, missed, pending = accuracy.headline_goals(_table(found))
    assert "bireal W1/A1, two-stage -0.50 points over one stage (goal: better)" in missed
    assert "ternary t=2 0.10 points below FP (goal: within 0.2)" in met  # mean of 0.15 and 0.05
    assert "mcdonnell W1/A32 0.50 points below FP (goal: within 0.3)" in missed
    assert any(line.startswith("best W1/A1 (xnor W1/A1) 1.00 points below FP (goal: within 2; stretch 1.5: met)")
               for line in met)
    assert pending == []
    lines = accuracy.report(_table(found))
    assert "| ternary t=2 | 89.75 ± 0.14 | -0.10 | 89.85 | 89.65 | 2.00 MB | 2.00 |" in lines


def test_a_table_with_runs_missing_says_what_is_pending():
    found = {("headline", "irnet W1/A32", 0): _record(89.9)}
    spec = accuracy.Spec("headline", "react W1/A1", 0, 240_000, {})
    table = _table(found, [spec])
    met, missed, pending = accuracy.headline_goals(table)
    assert met == ["irnet W1/A32 0.10 points below FP (goal: within 0.3)"] and missed == []
    assert pending[0].startswith("the W1/A1 goals")
    lines = accuracy.report(table)
    assert "| react W1/A1 | pending | | pending | pending | | |" in lines
    assert lines[-1] == "Pending (1 runs, in the order `python benchmarks/accuracy.py` runs them): react W1/A1 " \
                        "(headline, seed 0, 240,000 images)."


def test_the_plan_runs_the_structure_comparison_first_and_ranks_before_it_adds_seeds():
    specs = accuracy.plan(accuracy.FULL, lambda spec: None)
    tables = [s.table for s in specs]
    assert tables[:17] == ["parent"] + ["structure"] * 16 and tables[17] == "headline"
    assert not any(s.table == "headline" and s.seed == 1 for s in specs)  # nothing ranked yet
    assert not any(s.table == "curve" for s in specs)
    structure = [s for s in specs if s.table == "structure"]
    kept = [s.options["method_options"]["block_residual"] for s in structure]
    assert kept == [False, True] * 8 and {s.images for s in structure} == {60_000}
    two_stage = next(s for s in specs if s.row == "react W1/A1, two-stage" and s.table == "headline")
    first, second = two_stage.options["stages"]
    assert first["max_steps"] == 1875 // 4 and first["max_steps"] + second["max_steps"] == 240_000 // 128

    scores = {name: 80.0 + i for i, name in enumerate(accuracy.headline_rows())}
    specs = accuracy.plan(accuracy.FULL, lambda spec: scores.get(spec.row) if spec.table == "headline" else None)
    seed1 = {s.row for s in specs if s.table == "headline" and s.seed == 1}
    assert seed1 == {"irnet W1/A32", "mcdonnell W1/A32", "ternary t=2", "adabin W1/A1, two-stage",
                     "recu W1/A1, two-stage"}
    specs = accuracy.plan(accuracy.FULL, lambda spec: scores.get(spec.row) if spec.table == "30k" else None)
    curve = [s for s in specs if s.table == "curve"]
    assert {s.row for s in curve} == {"adabin W1/A1"}  # the 30k table's best one-stage W1/A1
    assert curve[0].options["method_options"] == {"block_residual": True}  # as the table was measured


def test_records_match_by_options_and_a_new_option_at_its_default(tmp_path):
    store = Records(tmp_path)
    options = {"lr": 0.001, "swap.0.block_residual": False}
    store.write("react W1/A1", options, {"top1": 88.0})
    assert store.find(options)["top1"] == 88.0
    assert store.find({**options, "new": 3}, {"new": 3})["top1"] == 88.0  # added later, left at its default
    assert store.find({**options, "new": 4}, {"new": 3}) is None
    assert store.find({**options, "swap.0.block_residual": True}) is None  # another network
    assert not same({"lr": 0.001, "gone": 1}, {"lr": 0.001}, {})  # an option the run no longer has
    written = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {"machine", "commit", "date", "quantswap_version"} <= set(written)
    assert not list(tmp_path.glob(".*.tmp"))  # written through a renamed temporary file


def test_a_run_is_identified_by_its_resolved_swap_not_by_where_its_files_are(tmp_path):
    bench = accuracy.Bench(accuracy.FULL, tmp_path, Records(tmp_path / "records"))
    spec = accuracy.Spec("structure", "react W1/A1, authors", 0, 60_000, {"method": "react"})
    options, defaults = bench.identity(spec)
    assert options["swap.0.block_residual"] is True and options["start"] == "parent"  # the default, resolved
    assert "output" not in options and "weights" not in options
    elsewhere = accuracy.Bench(accuracy.FULL, tmp_path / "other", Records(tmp_path / "records"))
    assert elsewhere.identity(spec)[0] == options
    authors = accuracy.Spec("structure", "x", 0, 60_000, {"method": "react", "method_options": {"block_residual": False}})
    assert bench.identity(authors)[0]["swap.0.block_residual"] is False


def test_rerun_names_the_rows_it_knows_when_asked_for_one_without_records(tmp_path):
    bench = accuracy.Bench(accuracy.FULL, tmp_path, Records(tmp_path / "records"))
    with pytest.raises(SystemExit, match="no record of row 'nonexistent'"):
        accuracy.rerun(bench, "nonexistent", [0])


def test_zoo_rebuild_verdict_allows_the_stated_tolerance_and_prints_the_difference():
    import zoo

    assert zoo.verdict(74.30, 74.30) == (True, "reproduced exactly")
    assert zoo.verdict(74.36, 74.30) == (True, "reproduced within 0.5 points (+0.06)")  # another machine's Bi-Real
    assert zoo.verdict(73.79, 74.30) == (False, "DIFFERS by -0.51 points (tolerance 0.5)")
    assert zoo.verdict(73.79, 74.30, tolerance=1.0)[0]


def test_choosing_md_is_what_the_committed_results_make():
    """docs/choosing.md (issue 27, deliverable 6) is rendered by benchmarks/choosing.py from the records and the
    inference and ONNX summaries: no number in it is written by hand."""
    import choosing

    assert (ROOT / "docs" / "choosing.md").read_text() == choosing.build()
    text = choosing.build()
    for variant in accuracy.VARIANTS:
        assert f"| {variant} |" in text
    assert "choosing.md" in (ROOT / "README.md").read_text().split("## Set up")[0]  # linked from the top
