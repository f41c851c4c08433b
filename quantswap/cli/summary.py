"""``quantswap summary``: print the bit-aware table of a model swapped with a method."""

from __future__ import annotations

import argparse
import os

from quantswap._registry import list_methods
from quantswap.cli._args import key_value

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
    p.add_argument("--method", default="irnet", choices=list_methods(), help="quantization method (default: irnet)")
    p.add_argument("--activations", action=argparse.BooleanOptionalAction, default=None,
                   help="binarize activations (default: the method's own)")
    p.add_argument("--expansion", type=int, default=None, help="residual-expansion branches (the ternary method)")
    p.add_argument("--method-options", type=key_value, nargs="*", default=[], metavar="KEY=VALUE",
                   help="other options of the method's config, e.g. keep_downsample=false")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the builder's)")
    p.add_argument("--input-size", type=int, nargs="+", default=[224], metavar="N",
                   help="input for counting operations: one size, H W, C H W or N C H W (default: 224)")
    p.add_argument("--fp-bits", type=int, default=32, choices=(16, 32), help="bits of real tensors (default: 32)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import quantswap
    from quantswap.models import build_model

    options = {name: getattr(args, name) for name in ("activations", "expansion") if getattr(args, name) is not None}
    config = quantswap.config_for(args.method, **options, **dict(args.method_options))  # checks the options before the model is built
    model = build_model(args.model, **({"num_classes": args.num_classes} if args.num_classes else {}))
    swapped = quantswap.swap(model, config)
    print(quantswap.summary(swapped, input_size=tuple(args.input_size), fp_bits=args.fp_bits))
    if any(getattr(m, "input_quantizer", None) is not None for m in swapped.modules()):  # packs when frozen
        from quantswap import kernels

        if kernels.native.built() or os.environ.get("QUANTSWAP_KERNELS") == "reference":
            print(f"packed kernels: {kernels.load()}")
        else:  # not built on this install yet: say so rather than spend 30 s building them for a summary
            print("packed kernels: native, not built yet (quantswap kernels builds them, about 30 s, once)")
    return 0
