"""``quantswap plot``: the training curves of one or more runs (loss per step, validation top-1 per epoch) as a PNG."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from quantswap.train.run_state import STEP_ROW

__all__ = ["add_parser", "read_curves"]

EXAMPLES = """examples:
  quantswap plot runs/fashion-mnist-irnet
  quantswap plot runs/r18-irnet runs/r18-react --output curves.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help=__doc__.split(":", 1)[1].strip().removesuffix("."), epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by quantswap finetune")
    p.add_argument("--output", default="curves.png", help="the PNG to write (default: curves.png)")
    p.set_defaults(run=run)


def read_curves(folder: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(step, loss)`` of the step rows and ``(step, val top-1)`` of the epoch rows of a run's ``metrics.jsonl``;
    the steps of a staged run count on from one stage to the next."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder (no metrics.jsonl): pass a folder written by "
                                "quantswap finetune")
    losses, top1, offset, last = [], [], {}, {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        stage = row.get("stage", 1)
        offset.setdefault(stage, sum(last.get(s, 0) for s in range(1, stage)))
        step = offset[stage] + row.get("step", 0)
        last[stage] = max(last.get(stage, 0), row.get("step", 0))
        if row.get("kind") == STEP_ROW:
            losses.append((step, row["loss"]))
        elif "val_top1" in row:
            top1.append((step, row["val_top1"]))
    return losses, top1


def run(args: argparse.Namespace) -> int:
    curves = {name: read_curves(Path(name)) for name in args.runs}  # every folder checked before drawing
    output = Path(args.output)
    if output.suffix.lower() != ".png" or not output.parent.is_dir():
        raise ValueError(f"--output {output}: name a .png file in an existing folder")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("quantswap plot draws with matplotlib, which is not installed: "
                          "pip install 'quantswap[plot]'") from None
    fig, (loss, top1) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (losses, accuracies) in curves.items():
        if losses:
            loss.plot(*zip(*losses, strict=True), label=name)
        if accuracies:
            top1.plot(*zip(*accuracies, strict=True), marker="o", label=name)
    for ax, title in ((loss, "training loss (mean since the last point)"), (top1, "validation top-1 (%)")):
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = output.with_name(f".{output.name}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, output)
    print(f"wrote {output}")
    return 0
