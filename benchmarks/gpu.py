"""CUDA and mixed precision: the accuracy benchmark's runs on a GPU, in float32 and with ``--amp``.

Needs a CUDA device and Fashion-MNIST. The FP parent is trained with the accuracy benchmark's recipe
(float32); IR-Net W1/A1, Bi-Real W1/A1, IR-Net W1/A32 and ternary t=2 are fine-tuned from it with
distillation on that benchmark's 30k-image budget (seed 0), once in float32 and once with ``--amp``
(autocast float16 and a GradScaler); each run is recorded under ``--runs``. Reported: top-1 on the 10k test images
and training images per second. Then two checks of the GPU-only paths: an ``--amp`` run killed
(SIGKILL) after its first checkpoint and continued with ``--resume`` ends within 0.5 points of the
uninterrupted run (CUDA kernels are not bit-reproducible, so not bit-identical as on the CPU), and a
run under ``torchrun`` with NCCL on every GPU of the machine.

Usage: python benchmarks/gpu.py [--runs runs/gpu] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from _common import machine, publish
from accuracy import FULL, RESULTS, SHARED, Bench, Spec, parent_spec, recipe
from records import Records

NAMES = ["irnet W1/A1", "bireal W1/A1", "irnet W1/A32", "ternary t=2"]
#: Loader processes: the augmentation is a function of (seed, epoch, sample), so results do not depend on it.
WORKERS = 6


def finetune_command(folder: Path, options: dict) -> list[str]:
    """``quantswap finetune`` for ``options``, passed as a recipe file written next to ``folder``."""
    recipe_file = folder.with_suffix(".yaml")
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(yaml.safe_dump({**options, "output": str(folder)}))
    return ["-m", "quantswap", "finetune", "--recipe", str(recipe_file)]


def top1(folder: Path) -> float:
    return json.loads((folder / "model" / "config.json").read_text())["metrics"]["top1"]


def killed_and_resumed(folder: Path, options: dict) -> dict:
    """Run ``options`` through the CLI, SIGKILL it once its first mid-epoch checkpoint exists, resume it."""
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, *finetune_command(folder, options)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (folder / "last.pt").exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = torch.load(folder / "last.pt", map_location="cpu", weights_only=True)["state"]["global_step"]
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"--resume failed:\n{done.stderr[-2000:]}")
    return {"killed_at_step": step, "top1": top1(folder)}


def under_torchrun(folder: Path, options: dict) -> dict:
    gpus = torch.cuda.device_count()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
               *finetune_command(folder, {**options, "overwrite": True})]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"torchrun failed:\n{done.stderr[-2000:]}")
    return {"gpus": gpus, "top1": top1(folder)}


def cell(record: dict | None) -> str:
    return "not measured" if record is None else f"{record['top1']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/gpu", help="where the runs go (cached per run; delete to redo)")
    parser.add_argument("--output", help="write the section into this Markdown file (BENCHMARKS.md)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device; this machine has none")
    root = Path(args.runs)
    bench = Bench(FULL, root, Records(root / "results"), device="cuda", workers=WORKERS)
    parent = bench.ensure(parent_spec(FULL))
    results = {name: {amp: bench.ensure(Spec("gpu", f"{name}{', amp' if amp else ''}", 0, FULL.secondary,
                                             {**recipe(name), "amp": amp})) for amp in (False, True)} for name in NAMES}
    common = dict(model="torchvision:resnet18", weights=str(bench.parent_weights()), distill=True, epochs=1,
                  train_subset=FULL.secondary, seed=0, device="cuda", workers=WORKERS, val_subset=None)
    resumable = {**SHARED, **common, **recipe("irnet W1/A1"), "amp": True, "save_every": 20}
    resumed = killed_and_resumed(root / "resume-check", resumable)
    ddp = under_torchrun(root / "torchrun-check", {**resumable, "save_every": 0})

    on_cpu = Bench(FULL, root / "cpu", Records(RESULTS / "accuracy"))
    cpu = {name: on_cpu.find(Spec("30k", name, 0, FULL.secondary, recipe(name))) for name in ["FP parent", *NAMES]}
    cpu["FP parent"] = on_cpu.find(parent_spec(FULL))
    lines = [f"Measured by `python benchmarks/gpu.py` on {machine(cuda=True)}. The accuracy benchmark's recipe "
             f"and budget (the others: {FULL.secondary:,} images, distilled, seed 0), "
             f"with {WORKERS} loader processes; float32 against `--amp` (autocast float16 + GradScaler). The CPU "
             "column is the same run's seed-0 result on the CPU (section above): CUDA and CPU kernels round "
             "differently, so the numbers agree only within run-to-run spread.", "",
             "| model | top-1 fp32 | top-1 AMP | top-1 CPU (fp32) | img/s fp32 | img/s AMP | AMP speed-up |",
             "|---|---|---|---|---|---|---|",
             f"| FP parent | {parent['top1']:.2f} | | {cell(cpu['FP parent'])} | {parent['train_img_s']:.0f} | | |"]
    for name, by_amp in results.items():
        fp32, amp = by_amp[False], by_amp[True]
        lines.append(f"| {name} | {fp32['top1']:.2f} | {amp['top1']:.2f} | {cell(cpu[name])} | "
                     f"{fp32['train_img_s']:.0f} | {amp['train_img_s']:.0f} | "
                     f"{amp['train_img_s'] / fp32['train_img_s']:.2f}x |")
    reference = results["irnet W1/A1"][True]["top1"]
    lines += ["", f"- Resume with `--amp` on CUDA: irnet W1/A1 killed (SIGKILL) at step {resumed['killed_at_step']} "
              f"and resumed: top-1 {resumed['top1']:.2f} against {reference:.2f} uninterrupted "
              f"({'within' if abs(resumed['top1'] - reference) <= 0.5 else 'NOT within'} 0.5 points).",
              f"- `torchrun --nproc_per_node {ddp['gpus']}` (NCCL, DDP): the same `--amp` run, top-1 {ddp['top1']:.2f}."]
    publish(lines, "CUDA and mixed precision", args.output)


if __name__ == "__main__":
    main()
