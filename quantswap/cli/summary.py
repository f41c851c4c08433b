"""``quantswap summary``: print the bit-aware table of a model swapped with a method."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  quantswap summary --model resnet18 --method irnet
  quantswap summary --model timm:resnet18d --method ternary --expansion 2 --input-size 1 3 160 160
  quantswap summary --model mobilenet_v2 --method xnor --no-activations --fp-bits 16
"""


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help=__doc__.split(":", 1)[1].strip(), epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="NAME",
                   help="torchvision:NAME or timm:NAME (a bare name means torchvision)")
    p.add_argument("--method", default="irnet", help="quantization method (default: irnet)")
    p.add_argument("--activations", action=argparse.BooleanOptionalAction, default=None,
                   help="binarize activations (default: the method's own)")
    p.add_argument("--expansion", type=int, default=None, help="ternary branches (method ternary only)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the builder's)")
    p.add_argument("--input-size", type=int, nargs="+", default=[1, 3, 224, 224], metavar="N",
                   help="input shape for counting operations (default: 1 3 224 224)")
    p.add_argument("--fp-bits", type=int, default=32, choices=(16, 32), help="bits of real tensors (default: 32)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import quantswap
    from quantswap.models import build_model

    model = build_model(args.model, **({"num_classes": args.num_classes} if args.num_classes else {}))
    options = {} if args.activations is None else {"activations": args.activations}
    if args.method == "ternary":
        swapped = quantswap.ternarize(model, expansion=args.expansion or 1, **options)
    elif args.expansion is not None:
        raise ValueError("--expansion applies to --method ternary only")
    else:
        swapped = quantswap.binarize(model, method=args.method, **options)
    print(quantswap.summary(swapped, input_size=tuple(args.input_size), fp_bits=args.fp_bits))
    return 0
