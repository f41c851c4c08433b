"""``quantswap export``: a checkpoint as an ONNX file with 2-bit weights, checked in onnxruntime."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  quantswap export --model runs/r18-irnet --output r18-irnet.onnx
  quantswap export --model my-org/resnet18-irnet --revision v1 --output model.onnx --input-size 3 224 224 --fp16
needs the onnx extra: pip install 'quantswap[onnx]'
"""


def add_parser(sub) -> None:
    p = sub.add_parser("export", help=__doc__.split(":", 1)[1].strip(), epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a run folder, a checkpoint folder or a Hub id ORG/NAME")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    p.add_argument("--output", required=True, help="the .onnx file to write (replaced only once complete and checked)")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="one size, H W, C H W or N C H W (default: the checkpoint's image size, else 224)")
    p.add_argument("--fp16", action="store_true", help="store the real layers' weights as float16")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip onnx.checker and the onnxruntime comparison with PyTorch")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from quantswap.cli._args import load_model
    from quantswap.export import export_onnx

    size = tuple(args.input_size) if args.input_size else None
    model = load_model(args.model, args.revision, backend="float")
    done = export_onnx(model, args.output, input_size=size, fp_dtype="float16" if args.fp16 else "float32",
                       check=args.check)
    checked = f"; onnxruntime = PyTorch within {done.max_abs_diff:.2g}" if done.max_abs_diff is not None else ""
    print(f"wrote {done.path} ({done.file_bytes / 1e6:.2f} MB, {done.int2_weights:,} weights as INT2 in "
          f"{done.int2_tensors} tensors{checked})")
    return 0
