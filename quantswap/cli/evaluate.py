"""``quantswap eval``: top-1/top-5 of a checkpoint folder, a run folder or a Hub id on a dataset."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]

EXAMPLES = """examples:
  quantswap eval --model runs/r18-irnet --data fashion-mnist
  quantswap eval --model my-org/resnet18-irnet --revision v1 --data imagefolder:/data/imagenet
"""


def _size(text: str) -> int:
    value = int(text)
    if not 8 <= value <= 2048:
        raise argparse.ArgumentTypeError(f"an image size from 8 to 2048, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=__doc__.split(":", 1)[1].strip(), epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a run folder, a checkpoint folder or a Hub id ORG/NAME")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    p.add_argument("--data", default=None, help="fashion-mnist, cifar10, cifar100 or imagefolder:PATH (default: the "
                                                "dataset the checkpoint says it was trained on)")
    p.add_argument("--data-root", default=None, help="where datasets are cached")
    p.add_argument("--image-size", type=_size, default=None, help="input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--subset", type=int, default=None, help="evaluate on the first N test images of a fixed order")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from quantswap.cli._args import load_model
    from quantswap.data import DATASETS, build_datasets
    from quantswap.train import evaluate
    from quantswap.train.distributed import resolve_device

    model = load_model(args.model, args.revision)
    metrics = model.meta["quantswap_checkpoint"].metrics
    trained_size, trained_on = metrics.get("image_size"), metrics.get("dataset")
    if args.image_size is None and trained_size is not None and not (isinstance(trained_size, int) and 8 <= trained_size <= 2048):
        raise ValueError(f"{args.model}: its config.json's metrics claim image_size {trained_size!r}, not a size from 8 "
                         "to 2048; pass --image-size")
    data = args.data or trained_on
    if data is None:
        raise ValueError(f"{args.model} does not say which dataset it was trained on; pass --data")
    if data in DATASETS:  # before any download
        _check_classes(args.model, model, data, DATASETS[data].num_classes, trained_on)
    _, val, num_classes = build_datasets(data, image_size=args.image_size or trained_size, root=args.data_root,
                                         val_subset=args.subset)
    _check_classes(args.model, model, data, num_classes, trained_on)
    device = resolve_device(args.device)
    loader = DataLoader(val, batch_size=args.batch_size, generator=torch.Generator())
    result = evaluate(model.to(device), loader, device)
    print(f"{args.model} on {data} ({len(val)} images): top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%")
    return 0


def _check_classes(name: str, model, data: str, num_classes: int, trained_on: str | None) -> None:
    """The model's outputs (its last Linear layer's) must be the dataset's classes."""
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].out_features != num_classes:
        where = f"; it was trained on {trained_on}: pass --data {trained_on}" if trained_on and trained_on != data else ""
        raise ValueError(f"{name} has {linears[-1].out_features} classes and {data} has {num_classes}{where}")
