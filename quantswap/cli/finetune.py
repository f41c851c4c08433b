"""``quantswap finetune``: fine-tune a swapped model from its pretrained weights (flags = FinetuneConfig fields)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing

from quantswap._registry import list_methods
from quantswap.cli._args import key_value
from quantswap.cli._logging import console_logging
from quantswap.train.config import FLOAT_METHOD, FinetuneConfig

__all__ = ["add_parser"]

EXAMPLES = """examples:
  quantswap finetune --model resnet18 --method irnet --weights DEFAULT --data imagefolder:/data/imagenet --epochs 20 --output runs/r18-irnet
  quantswap finetune --recipe recipes/resnet18-bireal-imagenet.yaml --data imagefolder:/data/imagenet --push-to-hub my-org/resnet18-bireal
  quantswap finetune --recipe recipes/fashion-mnist-irnet.yaml --weights runs/parent
  quantswap finetune ... --resume          (continue the run in --output exactly where it stopped)
  torchrun --nproc_per_node 8 -m quantswap finetune --recipe ...
"""

HELP = {
    "model": "torchvision:NAME or timm:NAME (a bare name means torchvision)",
    "method": f"{FLOAT_METHOD} (train the float model) or a method: {', '.join(list_methods())}",
    "activations": "binarize activations (default: the method's own)",
    "expansion": "residual-expansion branches of the ternary method (1-4)",
    "method_options": "other options of the method's config as KEY=VALUE, e.g. t_min=0.01 keep_downsample=false",
    "include": "glob patterns of layer names to swap, e.g. 'layer4.*' (default: every eligible layer)",
    "exclude": "glob patterns of layer names kept real, e.g. 'features.*.conv.1.0'",
    "skip_depthwise": "keep depthwise convs real (the default; --no-skip-depthwise quantizes them)",
    "weights": "DEFAULT (the builder's pretrained weights, online), none, a local .safetensors or torch state dict, "
               "a float run's folder or a run's last.pt",
    "data": "fashion-mnist, cifar10, cifar100 or imagefolder:PATH (PATH/train, PATH/val)",
    "optimizer": "any timm optimizer name: adamw, adam, sgd, lamb, ...",
    "schedule": "any timm scheduler: cosine (default), step, multistep, ...",
    "distill": "distill from the frozen float parent (default: on when it has pretrained weights)",
    "teacher": "another teacher model name (default: the parent)",
    "teacher_weights": "the teacher's weights: a local file, or DEFAULT (its builder's pretrained weights and head)",
    "distill_alpha": "weight of the distribution loss; 1 - alpha goes to the label loss",
    "output": "run folder: args.yaml, metrics.jsonl, last.pt, best.pt and the packed model/",
    "recalibrate_bn": "after the swap, re-estimate BatchNorm statistics on N training batches (0: off)",
    "resume": "continue the run in --output from its last checkpoint",
    "overwrite": "replace the run in --output",
    "max_steps": "train this many optimizer steps at most (the lr schedule is fitted to them)",
    "save_every": "steps between mid-epoch checkpoints (0: epoch ends only)",
    "push_to_hub": "ORG/NAME: push the packed model at the end",
    "compile": "torch.compile the training model (inductor; the first steps pay the compilation)",
    "skip_first": "keep the first Conv/Linear layers real (--no-skip-first quantizes them)",
    "skip_last": "keep the last Conv/Linear layers real (--no-skip-last quantizes them)",
    "num_classes": "classifier size (default: the dataset's)",
    "data_root": "where datasets are read and downloaded (default: $QUANTSWAP_DATA, else ~/.cache/quantswap/datasets)",
    "image_size": "input size in px (default: 32 for fashion-mnist and cifar, 224 for an image folder)",
    "train_subset": "train on the first N images of a fixed seeded order (default: all)",
    "val_subset": "validate on the first N test images of a fixed seeded order (default: all)",
    "epochs": "passes over the training images",
    "batch_size": "images per optimizer step (per process under torchrun)",
    "lr": "peak learning rate",
    "momentum": "SGD momentum (optimizers that take one)",
    "weight_decay": "weight decay",
    "warmup_epochs": "epochs of linear warm-up before the schedule",
    "min_lr": "the schedule's lowest learning rate",
    "cycle_mul": "cosine restarts: each cycle this many times longer (> 1 with --cycle-limit > 1: SGDR)",
    "cycle_limit": "cosine restarts: the number of cycles",
    "decay_milestones": "epochs at which a step/multistep schedule decays",
    "decay_rate": "the factor a step schedule decays by",
    "label_smoothing": "label smoothing of the label loss",
    "clip_grad": "clip the gradient norm at this value (default: no clipping)",
    "eval_parent": "validate the float parent too (the table's first row)",
    "seed": "draws the images, their order, the augmentation and any new parameters",
    "device": "auto (CUDA when there is one), cpu, cuda or cuda:N",
    "amp": "mixed precision on CUDA (autocast float16 and a gradient scaler)",
    "sync_bn": "synchronize BatchNorm statistics across processes (torchrun on CUDA)",
    "workers": "data loader processes",
    "fp_dtype": "dtype of the checkpoint's real-valued tensors: float32, float16 or bfloat16",
}


def _help(name: str, default) -> str:
    """An option's help, with its default once: the text's own, else the value (none for an unset option)."""
    text = HELP.get(name, "")
    if "default" in text or default in (None, [], {}):
        return text or " "
    shown = default if not isinstance(default, bool) else ("on" if default else "off")
    return f"{text} (default: {shown})".strip()


#: Options a recipe sets and no flag does: ``stages`` is a list of mappings.
RECIPE_ONLY = frozenset({"stages"})


def _scalar(annotation) -> type:
    """``int | None`` -> int; ``list[int]`` -> int (nargs)."""
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    base = next(h for h in hints if h is not type(None))
    return typing.get_args(base)[0] if typing.get_origin(base) is list else base


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help=__doc__.split(":", 1)[1].strip().split(" (")[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    p.add_argument("--recipe", metavar="FILE.yaml", help="a recipe: YAML whose keys are these options (and `stages`, "
                   "a list of per-stage options, e.g. recipes/fashion-mnist-react-two-stage.yaml); flags override it")
    hints = typing.get_type_hints(FinetuneConfig)
    for field in dataclasses.fields(FinetuneConfig):
        if field.name in RECIPE_ONLY:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        text = _help(field.name, default)
        kind = _scalar(hints[field.name])
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif typing.get_origin(hints[field.name]) is dict:
            p.add_argument(flag, type=key_value, nargs="*", metavar="KEY=VALUE", help=text)
        elif "list[" in str(hints[field.name]):
            p.add_argument(flag, type=kind, nargs="*", help=text)
        else:
            p.add_argument(flag, type=kind, help=text)
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    from quantswap.train.config import load_recipe

    options = load_recipe(args.recipe) if getattr(args, "recipe", None) else {}
    flags = {k: v for k, v in vars(args).items() if k not in ("recipe", "run", "command")}
    if "method_options" in flags:  # merged over the recipe's
        flags["method_options"] = {**(options.get("method_options") or {}), **dict(flags["method_options"])}
    options.update(flags)
    return FinetuneConfig.from_dict(options)


def format_result(cfg: FinetuneConfig, result: dict) -> str:
    """The table printed at the end of a run: accuracies, sizes and where the model went."""

    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}%"

    name = "FP" if cfg.is_float else cfg.method
    rows = [("FP parent top-1", pct(result["parent_top1"]))] if result["parent_top1"] is not None else []
    rows += [(f"{name} top-1", pct(result["top1"])), (f"{name} top-5", pct(result["top5"]))]
    if cfg.is_float:
        rows.append(("FP32 checkpoint", f"{result['file_bytes'] / 1e6:.2f} MB"))
    else:
        ratio = result["fp32_bytes"] / result["file_bytes"]
        rows += [("FP32 size", f"{result['fp32_bytes'] / 1e6:.2f} MB"),
                 (f"{name} checkpoint", f"{result['file_bytes'] / 1e6:.2f} MB ({ratio:.1f}x smaller)")]
    rows.append(("saved to", result.get("checkpoint") or result.get("weights")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    from quantswap.train import TrainingDiverged, finetune

    cfg = config_from_args(args)
    try:
        with console_logging():
            result = finetune(cfg)
    except TrainingDiverged as err:
        print(f"quantswap finetune: stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ninterrupted: the run is saved in {cfg.output}; continue it with --resume", file=sys.stderr)
        return 130
    if "file_bytes" in result:  # the main process
        print(format_result(cfg, result))
    return 0
