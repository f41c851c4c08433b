"""Inference speed of frozen W1/A1 models on the packed XOR-popcount kernels, against float32.

Per layer: ResNet-18's binary 3x3 convolutions (56/28/14/7 px, batch 1 and 8), the packed op
against ``F.conv2d`` with float32 weights; Linear shapes against ``nn.Linear`` and, when installed,
bnn-lab's packed Linear (``pip install --no-deps bnn-lab``). End to end: frozen ResNet-18s of every
W1/A1 method the packed kernels serve, at 224 px, against the float32 ResNet-18 in both layouts (all
given an NCHW input), batch 1 and 8, 1 and 2 threads, with glibc's default allocator and with freed
memory kept. Then the resident weights of each loaded checkpoint against its file size, a profile of
where the end-to-end time goes, and issue 15's goals judged on these numbers. Every speed-up is the
median over rounds of "float time / packed time", the two timed back to back in each round.

Usage: python benchmarks/inference.py [--iters 20] [--output BENCHMARKS.md]
"""

from __future__ import annotations

import copy
import tempfile
import time
from functools import partial
from pathlib import Path
from statistics import median

import torch
from _common import arguments, keep_freed_memory, publish, save_summary
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet18

import quantswap
from quantswap import kernels
from quantswap.nn.packed import packs

#: every method of quantswap's own whose W1/A1 layers the packed kernels serve
W1A1 = tuple(v.name for v in quantswap.list_variants() if packs(v.config()) and type(v.config()).__module__.startswith("quantswap."))
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
CONVS = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-18's binary 3x3 convs: channels, size
LINEARS = ((1, 4096, 4096), (64, 4096, 4096), (8, 2304, 512), (1, 512, 1000))  # batch, in, out


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    name = fields.get("model name\t", "unknown CPU").strip()
    flags = set(fields.get("flags\t\t", "").split())
    wanted = [f for f in ("popcnt", "avx2", "avx512f", "avx512_vpopcntdq") if f in flags]
    return f"{name} ({', '.join(wanted) or 'none of popcnt/avx2/avx512'})"


@torch.inference_mode()
def rounds(calls: dict, iters: int, warmup: int = 10) -> dict[str, list[float]]:
    """Each call's time in each of ``iters`` rounds, the calls timed in turns within a round."""
    times = {name: [] for name in calls}
    for i in range(warmup + iters):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def speedup(baseline: list[float], packed: list[float]) -> float:
    """The median over rounds of baseline / packed, each round's pair timed back to back: steadier than
    a ratio of medians when the machine's speed drifts during the run."""
    return median(b / p for b, p in zip(baseline, packed, strict=True))


def codes(*shape: int) -> torch.Tensor:
    return torch.randint(0, 2, shape, dtype=torch.int8) * 2 - 1


def per_conv(iters: int) -> tuple[list[str], dict]:
    """Each conv in both layouts, packed op and float conv given the same input; returns the table and
    the speed-ups by (channels, batch, layout)."""
    lines = ["| conv (C→C, 3×3) | batch | layout | packed op | FP32 `F.conv2d` | speed-up |",
             "|---|---|---|---|---|---|"]
    speedups = {}
    for channels, size in CONVS:
        c = codes(channels, channels, 3, 3)
        words, alpha = kernels.pack_weight(c), torch.rand(channels)
        for batch in (1, 8):
            for layout, fmt in LAYOUTS.items():
                x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt)
                weight = c.float().contiguous(memory_format=fmt)
                packed = partial(torch.ops.quantswap.bconv2d, x, words, alpha, None, channels, [1, 1], [1, 1], [1, 1])
                t = rounds({"packed": packed, "float": partial(F.conv2d, x, weight, None, 1, 1)}, iters)
                speedups[channels, batch, layout] = speedup(t["float"], t["packed"])
                lines.append(f"| {channels}, {size}×{size} px | {batch} | {layout} | {median(t['packed']) * 1e3:.3f} ms | "
                             f"{median(t['float']) * 1e3:.3f} ms | **{speedups[channels, batch, layout]:.1f}×** |")
    return lines, speedups


def bnn_lab_linear(weight: torch.Tensor, bias: torch.Tensor):
    try:
        from bnn.wrap.packed_linear import PackedBinaryXNORLinear
    except ImportError:
        return None
    return PackedBinaryXNORLinear(weight, bias).eval()


def per_linear(iters: int) -> tuple[list[str], dict]:
    """Returns the table and, per shape, the speed-up over FP32 and over bnn-lab (None if not installed)."""
    ratios = {}
    lines = ["| Linear (in→out) | batch | packed op | FP32 `nn.Linear` | speed-up | bnn-lab packed | quantswap / bnn-lab |",
             "|---|---|---|---|---|---|---|"]
    for batch, cin, cout in LINEARS:
        c = codes(cout, cin)
        words, alpha, bias = kernels.pack_weight(c), torch.rand(cout), torch.randn(cout)
        linear = nn.Linear(cin, cout).eval()
        x = torch.randn(batch, cin)
        calls = {"packed": partial(torch.ops.quantswap.blinear, x, words, alpha, bias), "float": partial(linear, x)}
        peer = bnn_lab_linear(c.float() * alpha[:, None], bias)
        if peer is not None:
            calls["bnn-lab"] = partial(peer, x)
        t = rounds(calls, iters)
        fp, bnn = speedup(t["float"], t["packed"]), speedup(t["bnn-lab"], t["packed"]) if peer is not None else None
        ratios[batch, cin, cout] = fp, bnn
        peer_cols = f"{median(t['bnn-lab']) * 1e3:.3f} ms | **{bnn:.1f}×**" if peer is not None else "not installed | –"
        lines.append(f"| {cin}→{cout} | {batch} | {median(t['packed']) * 1e3:.3f} ms | {median(t['float']) * 1e3:.3f} ms | "
                     f"**{fp:.1f}×** | {peer_cols} |")
    return lines, ratios


def trained(model: nn.Module) -> nn.Module:
    """Random but non-degenerate BatchNorm statistics (as after training), in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.running_mean, m.weight, m.bias):
                t.data.uniform_(-1, 1)
            m.running_var.data.uniform_(0.5, 2)
    return model.eval()


def end_to_end(iters: int) -> tuple[list[str], dict, dict]:
    """Frozen W1/A1 ResNet-18s (channels_last, as freeze makes them) against the float model in both
    layouts, all given the same NCHW input; the speed-up is against the faster float layout. Timed with
    glibc's default allocator, then again keeping freed memory in the process (see keep_freed_memory)."""
    fp32 = resnet18().eval()
    models = {"FP32 NCHW": fp32, "FP32 channels_last": copy.deepcopy(fp32).to(memory_format=torch.channels_last)}
    models |= {m: quantswap.freeze(trained(quantswap.binarize(resnet18(), method=m))) for m in W1A1}
    header = " | ".join(f"{m} packed" for m in W1A1)
    lines = [f"| allocator | threads | batch | FP32 NCHW | FP32 channels_last | {header} |",
             "|---|---|---|---|---|" + "---|" * len(W1A1)]
    speedups = {}
    for allocator in ("default", "kept"):
        if allocator == "kept" and not keep_freed_memory():
            break
        lines += e2e_rows(models, iters, allocator, speedups)
    return lines, models, speedups


def e2e_rows(models: dict, iters: int, allocator: str, speedups: dict) -> list[str]:
    lines, threads = [], torch.get_num_threads()
    for n_threads in sorted({1, threads}, reverse=True):
        torch.set_num_threads(n_threads)
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            t = rounds({k: partial(m, x) for k, m in models.items()}, iters)
            fp = [min(pair) for pair in zip(t["FP32 NCHW"], t["FP32 channels_last"], strict=True)]
            speedups |= {(m, allocator, n_threads, batch): speedup(fp, t[m]) for m in W1A1}
            cells = " | ".join(f"{median(t[m]) * 1e3:.1f} ms (**{speedups[m, allocator, n_threads, batch]:.2f}×**)"
                               for m in W1A1)
            lines.append(f"| {allocator} | {n_threads} | {batch} | {median(t['FP32 NCHW']) * 1e3:.1f} ms | "
                         f"{median(t['FP32 channels_last']) * 1e3:.1f} ms | {cells} |")
    torch.set_num_threads(threads)
    return lines


def resident(models: dict) -> tuple[list[str], dict]:
    ratios = {}
    lines = ["| model | checkpoint file | weights held after `from_pretrained` | ratio |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for method in W1A1:
            size = quantswap.save_pretrained(models[method], Path(tmp) / method)
            loaded = quantswap.from_pretrained(Path(tmp) / method)
            held = sum(t.numel() * t.element_size() for t in [*loaded.parameters(), *loaded.buffers()])
            ratios[method] = held / size.file_bytes
            lines.append(f"| {method} ResNet-18 | {size.file_bytes / 1e6:.2f} MB | {held / 1e6:.2f} MB | "
                         f"{held / size.file_bytes:.2f}× |")
    return lines, ratios


@torch.inference_mode()
def profile(model: nn.Module, rows: int = 8) -> list[str]:
    x = torch.randn(1, 3, 224, 224)
    for _ in range(3):
        model(x)
    with torch.profiler.profile() as prof:
        for _ in range(10):
            model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = ["| op | share of the time | calls per forward |", "|---|---|---|"]
    lines += [f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f} % | {e.count // 10} |" for e in events[:rows]]
    return lines


def judged(met: bool, what: str) -> str:
    return f"{what}: {'met' if met else 'missed'}"


def goals(convs: dict, linears: dict, e2e: dict, held: dict) -> str:
    """Issue 15's goals, judged on this run's numbers."""
    batch1 = {k: v for k, v in convs.items() if k[1] == 1}
    worst = min(batch1, key=batch1.get)
    peers = [bnn for _, bnn in linears.values() if bnn is not None]
    fp_linear = min(fp for fp, _ in linears.values())
    xnor = {k[2]: v for k, v in e2e.items() if k[:2] == ("xnor", "default") and k[3] == 1}
    parts = [
        judged(batch1[worst] >= 8, f"≥ 8× per binary 3×3 conv at batch 1 (lowest: {batch1[worst]:.1f}× at "
               f"{worst[0]} channels, {worst[2]})"),
        judged(fp_linear >= 1 and (not peers or min(peers) >= 1),
               f"`blinear` never slower than FP32 (lowest {fp_linear:.1f}×)"
               + (f" and at least as fast as bnn-lab (lowest {min(peers):.1f}×)" if peers else
                  "; bnn-lab not installed, not compared")),
        judged(min(xnor.values()) >= 3, "≥ 3× end to end for frozen xnor ResNet-18 at 224 px, batch 1 ("
               + ", ".join(f"{v:.2f}× on {n} thread{'s' * (n > 1)}" for n, v in sorted(xnor.items())) + ")"),
        judged(max(held.values()) <= 1.1, f"resident weights ≤ 1.1× the checkpoint (at most {max(held.values()):.2f}×)"),
    ]
    adabin = {k[2]: v for k, v in e2e.items() if k[:2] == ("adabin", "default") and k[3] == 1}
    issue28 = judged(min(adabin.values()) >= 3, "AdaBin packed ≥ 3× end to end at 224 px, batch 1 ("
                     + ", ".join(f"{v:.2f}× on {n} thread{'s' * (n > 1)}" for n, v in sorted(adabin.items())) + ")")
    return "Goals (issue 15): " + "; ".join(parts) + ". Issue 28: " + issue28 + "."


def main() -> None:
    args = arguments(__doc__, iters=20)
    info = kernels.load()
    (convs, conv_speedups), (linears, linear_ratios) = per_conv(10 * args.iters), per_linear(10 * args.iters)
    e2e, models, e2e_speedups = end_to_end(args.iters)
    held, held_ratios = resident(models)
    lines = [
        f"Measured on {cpu()}, {torch.get_num_threads()} threads, torch {torch.__version__}; kernels: {info}. "
        "Produced by `benchmarks/inference.py` (in `make bench`). Times are medians over the rounds of one run; "
        "a speed-up is the median over rounds of float time / packed time, the two timed back to back.",
        "", "Per binary 3×3 convolution (stride 1, padding 1), the packed op against a float32 convolution "
        "on the same input, in either layout:", "", *convs, "",
        "Linear layers (bnn-lab 1.0.0's `PackedBinaryXNORLinear` side by side when installed):", "", *linears, "",
        "End to end, frozen W1/A1 ResNet-18 at 224 px, every model given the same NCHW input. `freeze` makes a "
        "model with packed layers channels_last and folds each BatchNorm after a packed conv into it; the "
        "speed-up is against the float model in its faster layout. The first conv, the downsample convs where "
        "the method keeps them real, the other BatchNorms, pooling and the classifier stay float32. Allocator "
        "`default`: glibc as it comes, which hands big freed tensors back to the OS, so each forward faults in "
        "fresh pages; `kept`: the same process after `mallopt` raised the mmap and trim thresholds to 1 GiB "
        "(as `MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824` would; jemalloc or tcmalloc "
        "do likewise). The goals are judged on `default`:", "", *e2e, "",
        "Resident weights (parameters and buffers) of a loaded checkpoint, against its file:", "", *held, "",
        "Where the time of a frozen xnor ResNet-18 forward goes (batch 1, 224 px):", "", *profile(models["xnor"]),
        "", goals(conv_speedups, linear_ratios, e2e_speedups, held_ratios),
    ]
    publish(lines, "Packed W1/A1 inference on the CPU", args.output)
    if args.output:  # the end-to-end speed-ups docs/choosing.md quotes: default allocator, batch 1
        threads = torch.get_num_threads()
        save_summary("inference", {"threads": threads, "speedup": {
            m: {str(n): round(e2e_speedups[m, "default", n, 1], 2) for n in sorted({1, threads})} for m in W1A1}})


if __name__ == "__main__":
    main()
