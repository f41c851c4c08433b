"""The `hub/` model zoo: every manifest entry's card renders from its config, its recipe is valid, and its
metrics are the numbers BENCHMARKS.md publishes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from quantswap.card import model_card
from quantswap.checkpoint_config import CheckpointConfig
from quantswap.train import FinetuneConfig, load_recipe

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = yaml.safe_load((ROOT / "hub" / "manifest.yaml").read_text())
ENTRIES = MANIFEST["entries"]


def benchmark_table(section: str, subsection: str | None = None) -> list[dict[str, str]]:
    """The rows of every Markdown table in a BENCHMARKS.md section (or in its ``### subsection``, named by
    the start of its heading), as header -> cell."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    if subsection is not None:
        body = body.split(f"\n### {subsection}", 1)[1].split("\n### ", 1)[0]
    rows, header = [], None
    for line in body.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(cells[0]) <= {"-"}:
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def test_the_manifest_lists_every_folder_and_the_parent_recipe():
    folders = {p.name for p in (ROOT / "hub").iterdir() if p.is_dir()}
    assert folders == {e["name"] for e in ENTRIES} and len(ENTRIES) >= 8
    FinetuneConfig.from_dict(load_recipe(ROOT / MANIFEST["parent_recipe"]))
    assert not list((ROOT / "hub").rglob("*.safetensors"))  # weights are built, not committed


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_a_zoo_entry_is_consistent(entry):
    folder = ROOT / entry["folder"]
    config = CheckpointConfig.read(folder)
    card = model_card(config, name=entry["name"], repo_id=entry["repo_id"])
    assert str(card) == (folder / "README.md").read_text()
    assert json.loads((folder / "config.json").read_text()) == config.to_dict()  # the format is unchanged

    recipe = FinetuneConfig.from_dict(load_recipe(folder / "recipe.yaml"))
    assert recipe.quant_config() == config.quantization
    assert recipe.model == config.base_model.name

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["top1"] == config.metrics["top1"]
    table = entry.get("benchmark_table", MANIFEST.get("benchmark_table"))
    rows = [r for r in benchmark_table(MANIFEST["benchmark_section"], table) if r.get("model") == entry["benchmark_row"]]
    top1 = next(r[entry["benchmark_column"]] for r in rows if entry["benchmark_column"] in r)
    size = next(r["checkpoint"] for r in rows if "checkpoint" in r)
    assert float(top1) == pytest.approx(metrics["top1"], abs=0.005)
    assert size == f"{metrics['file_bytes'] / 1e6:.2f} MB"


def test_the_readme_methods_table_quotes_the_benchmark():
    """Every Fashion-MNIST number in the README's methods table is a mean in the BENCHMARKS.md table the zoo
    was exported from."""
    kd = {r["model"]: r["top-1"].split(" ±")[0]
          for r in benchmark_table(MANIFEST["benchmark_section"], MANIFEST.get("benchmark_table"))
          if "Δ vs FP" in r and "model" in r}
    section = (ROOT / "README.md").read_text().split("## Methods\n\n", 1)[1]
    table = section.split("\n\n", 1)[0].splitlines()[2:]  # below the header and its rule
    quoted = 0
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        call = cells[1]
        method = "ternary" if call.startswith("`ternarize") else call.split('"')[1]
        for number, label in re.findall(r"([\d.]+) \(([^)]+)\)", cells[-1]):
            assert kd[f"{method} {label}"] == number, (method, label)
            quoted += 1
    assert quoted == len([n for n in kd if n != "FP parent" and "BN re-estimated" not in n])  # every method and stage
