"""ONNX files with 2-bit weights: their size against the packed checkpoint, and onnxruntime's latency.

For every benchmarked method on ResNet-18 (ImageNet head, 224 px): the packed safetensors checkpoint,
the ONNX file of ``quantswap.export_onnx`` with float32 and with float16 real layers, and their
ratios; then onnxruntime (CPU provider, as many threads as torch uses, default session options) at
batch 1 against the FP32 ResNet-18 exported by ``torch.onnx.export``. Needs ``pip install 'quantswap[onnx]'``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from _common import VARIANTS, arguments, convert, machine, publish, save_summary
from torchvision.models import resnet18

import quantswap


def session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # sessions run in turns: no spinning
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def medians(sessions: dict, iters: int, warmup: int = 3) -> dict[str, float]:
    """Median time per call, the sessions run in turns (so that drift hits them alike)."""
    feed = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)}
    times = {name: [] for name in sessions}
    for i in range(warmup + iters):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feed)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fp_onnx(folder: Path) -> Path:
    path = folder / "fp32.onnx"
    torch.onnx.export(resnet18().eval(), (torch.randn(2, 3, 224, 224),), path, dynamo=True, verbose=False,
                      external_data=False,
                      input_names=["pixel_values"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


def main() -> None:
    args = arguments(__doc__, iters=20)
    lines = [
        f"Measured on {machine()}, onnxruntime {onnxruntime.__version__}; produced by `benchmarks/onnx_export.py`. "
        "ResNet-18 with its 1000-class head, first and last layers real; latency at batch 1, 224 px, each "
        "method's sessions timed in turns with the FP32 model's.", "",
        "| method | checkpoint | ONNX | ONNX / checkpoint | ONNX, float16 real layers | onnxruntime |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp_path = fp_onnx(folder)
        lines.insert(4, f"| FP32 (`torch.onnx.export`) | – | {fp_path.stat().st_size / 1e6:.2f} MB | – | – | "
                        "1.00× |")
        for label, options in VARIANTS.items():
            model = convert(resnet18(), options).eval()
            checkpoint = quantswap.save_pretrained(model, folder / label.replace("/", "-").replace(" ", "_"))
            full = quantswap.export_onnx(model, folder / "q.onnx", check=False)
            half = quantswap.export_onnx(model, folder / "h.onnx", fp_dtype="float16", check=False)
            t = medians({"fp": session(fp_path), "onnx": session(full.path)}, args.iters)
            summary[label] = {"checkpoint_bytes": checkpoint.file_bytes, "onnx_bytes": full.file_bytes,
                              "latency_vs_fp": round(t["onnx"] / t["fp"], 2)}
            lines.append(
                f"| {label} | {checkpoint.file_bytes / 1e6:.2f} MB | {full.file_bytes / 1e6:.2f} MB | "
                f"**{full.file_bytes / checkpoint.file_bytes:.2f}×** | {half.file_bytes / 1e6:.2f} MB | "
                f"{t['onnx'] * 1e3:.1f} ms (**{t['onnx'] / t['fp']:.2f}×** FP) |")
    lines += [
        "", "Goals (issue 16): binary ONNX ≤ 2.1× its packed checkpoint (INT2 spends two bits on a one-bit "
        "code), ternary ≤ 1.05× its `bits2` checkpoint. Issue 28: onnxruntime within 1.1× of the FP32 model "
        "with default options. onnxruntime's CPU provider has no binary or 2-bit convolution: it decodes the "
        "INT2 weights into floats once, when the session loads (`Cast` and `Mul` of constants), and runs the "
        "float model. A W1/A1 model also runs its binary activations (`Where`), its scales after each ±1 "
        "convolution (kept out of the weights so that a tie sums to exactly 0, as in PyTorch and the packed "
        "kernels) and BatchNorms that cannot be folded into a ±1 weight. For speed on the CPU, quantswap's "
        "packed kernels (`quantswap.freeze`) are the path; ONNX is for deployment elsewhere.",
    ]
    publish(lines, "ONNX export: file size and onnxruntime latency", args.output)
    if args.output:
        save_summary("onnx", {"variants": summary})


if __name__ == "__main__":
    main()
