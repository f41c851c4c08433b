"""Checkpoint size on disk against the theoretical minimum and FP32, for every method.

Rows: ResNet-18 with every method (binary, ternary t = 1, 2, 4 in both packings), MobileNetV2 and
ResNet-50 (ImageNet heads), real-valued layers stored in float32 and in float16. "theoretical" is
``quantswap.summary``'s count at the stored bit widths; "file" is ``model.safetensors`` as written by
``quantswap.save_pretrained`` (header included). Sizes depend only on the architecture and method,
not on the weights' values, so randomly initialized models give the same numbers as trained ones.

Usage: python benchmarks/checkpoint_size.py [--output BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import VARIANTS, convert, machine, publish
from torchvision.models import mobilenet_v2, resnet18, resnet50

import quantswap

RESNET18_VARIANTS = {
    **VARIANTS,
    "ternary t=1, base 3": dict(method="ternary", expansion=1, packing="base3"),
    "ternary t=2, base 3": dict(method="ternary", expansion=2, packing="base3"),
}
OTHER_MODELS = {
    "mobilenet_v2": (mobilenet_v2, {"irnet W1/A32": dict(method="irnet", activations=False),
                                    "ternary t=2": dict(method="ternary", expansion=2)}),
    "resnet50": (resnet50, {"irnet W1/A1": dict(method="irnet"), "ternary t=2": dict(method="ternary", expansion=2)}),
}


def measure(build, options: dict, fp_dtype: str, folder: Path) -> quantswap.CheckpointSize:
    options = dict(options)
    packing = options.pop("packing", "bits2")
    model = convert(build(), options)
    return quantswap.save_pretrained(model, folder / "ckpt", fp_dtype=fp_dtype, ternary_packing=packing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="write the section into this markdown file")
    args = parser.parse_args()

    rows = []
    cases = [("resnet18", resnet18, RESNET18_VARIANTS)] + [(n, b, v) for n, (b, v) in OTHER_MODELS.items()]
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, variants in cases:
            for label, options in variants.items():
                for fp_dtype in ("float32", "float16"):
                    size = measure(build, options, fp_dtype, Path(tmp))
                    rows.append((name, label, fp_dtype, size))
                    print(f"{name:13s} {label:22s} {fp_dtype:8s} {size.file_bytes / 1e6:7.3f} MB "
                          f"(x{size.ratio:.4f} of theory, {size.compression:.1f}x smaller than FP32)", flush=True)

    r18_binary = [(label, fp, s) for n, label, fp, s in rows if n == "resnet18" and not label.startswith("ternary")]
    worst = max(r18_binary, key=lambda r: r[2].ratio)
    fp16 = {label: s for label, fp, s in r18_binary if fp == "float16"}
    under = [label for label, s in fp16.items() if s.file_bytes <= 2.6e6]
    over = {label: s for label, s in fp16.items() if s.file_bytes > 2.6e6}
    lines = [
        f"Measured by `python benchmarks/checkpoint_size.py` on {machine()}. ImageNet heads (1000 classes); "
        "first and last layers real; irnet and bireal also keep their 1x1 stride-2 downsample convs real "
        "(`keep_downsample=True`, as the papers do).",
        "",
        "| model | method | real layers | file | theoretical | file / theoretical | FP32 | smaller than FP32 |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {n} | {label} | {fp} | {s.file_bytes / 1e6:.3f} MB | {s.theoretical_bytes / 1e6:.3f} MB | "
          f"{s.ratio:.4f} | {s.fp32_bytes / 1e6:.1f} MB | {s.compression:.1f}x |" for n, label, fp, s in rows],
        "",
        "Goals for binary ResNet-18: file <= 1.02x the theoretical minimum, and <= 2.6 MB with float16 real layers.",
        "",
        f"- file / theoretical: {'met' if worst[2].ratio <= 1.02 else 'missed'}, worst {worst[2].ratio:.4f} "
        f"({worst[0]}, {worst[1]}); the overhead is the safetensors JSON header and byte padding per layer.",
        f"- <= 2.6 MB in float16: met by {', '.join(under) or 'none'}"
        + (f"; not by {', '.join(f'{k} ({s.file_bytes / 1e6:.2f} MB)' for k, s in over.items())}, which keep "
           "172k downsample weights real: binarize them too with `keep_downsample=False`." if over else "."),
    ]
    publish(lines, "Checkpoint size", args.output)


if __name__ == "__main__":
    main()
