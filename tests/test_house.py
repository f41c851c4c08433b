"""House rules the read-back issue (#11) set, checked on the tree so they stay true: short functions,
a library that logs instead of printing, and a repository that refers to nothing outside itself."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "quantswap"
MAX_FUNCTION_LINES = 60  # the whole definition, docstring included


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def test_no_function_in_the_package_is_longer_than_60_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these into pieces with one job each:\n" + "\n".join(long)


def test_the_library_logs_and_only_the_cli_prints():
    printing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr == "write" and getattr(node.value, "id", "") == "tqdm":
                printing.append(f"{path.relative_to(ROOT)}:{node.lineno} (tqdm.write)")
    assert not printing, f"use logging.getLogger(__name__) instead: {printing}"


def _tracked_text_files() -> list[Path]:
    """The repository's files: git's list, or (outside a checkout, e.g. an unpacked sdist) the tree
    less the folders a checkout ignores."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        paths = [ROOT / n for n in names.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        ignored = {".git", ".venv", ".data", "runs", "build", "__pycache__"}
        paths = [p for p in ROOT.rglob("*") if not ignored & set(p.relative_to(ROOT).parts)]
    return [p for p in paths if not p.name.endswith((".png", ".json")) and p.is_file()]


def test_nothing_in_the_repository_points_outside_it():
    outside = re.compile(r"\.\./" + "shared|METHODS" + r"\.md")  # split so this file does not match itself
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _tracked_text_files()
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if outside.search(line)]
    assert not hits, f"a user's clone has no such file; say it in docs/ instead: {hits}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, re.M)}


def test_every_docs_link_in_the_code_and_recipes_resolves():
    links = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "recipes").glob("*.yaml"), ROOT / "README.md"]:
        links |= set(re.findall(r"docs/([\w\-]+\.md)(?:#([\w\-]+))?", path.read_text()))
    assert links, "the package should point at its docs"
    for page, anchor in sorted(links):
        text = (ROOT / "docs" / page).read_text()
        assert not anchor or anchor in _anchors(text), f"docs/{page}#{anchor} has no such heading"
