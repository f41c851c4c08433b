"""The fine-tuning engine behind ``quantswap finetune``: :func:`finetune` runs a :class:`FinetuneConfig`.

One run: build the float parent (pretrained weights, or a local file), swap it with the method,
fine-tune with distillation from the frozen parent, checkpoint atomically, and save the packed
model with its measured accuracy. Resuming restores model, optimizer, scheduler, scaler, RNG and
the position in the epoch, so a killed run continues to the same weights as an uninterrupted one.

Each step has its own module: :mod:`~quantswap.train.distributed` (device and process group),
:mod:`~quantswap.train.loaders` (data), :mod:`~quantswap.train.parent` (parent, student, teacher),
:mod:`~quantswap.train.loop` (the :class:`~quantswap.train.loop.Trainer` and validation) and
:mod:`~quantswap.train.run_state` (the run folder). The library logs through :mod:`logging`
(logger ``quantswap``); the CLI decides what to print.
"""

from __future__ import annotations

import logging

import torch

from quantswap.api import quantize_weights
from quantswap.calibration import recalibrate_bn
from quantswap.data import DATASETS, check_image_folder
from quantswap.models import check_model_name
from quantswap.train.config import FinetuneConfig
from quantswap.train.distributed import Dist, resolve_device, setup
from quantswap.train.loaders import build_loaders
from quantswap.train.loop import Trainer, evaluate, planned_steps
from quantswap.train.parent import Parent, build_parent, build_student, build_teacher, weights_file
from quantswap.train.run_state import RunFolder, RunState

__all__ = ["finetune", "check_inputs", "RunResult"]

_logger = logging.getLogger(__name__)


class RunResult(dict):
    """What :func:`finetune` returns: ``parent_top1``, ``top1``, ``top5``, sizes and paths."""


def check_inputs(cfg: FinetuneConfig) -> None:
    """Fail on a bad model, teacher, dataset or weights file before anything is written or trained."""
    check_model_name(cfg.model)
    cfg.check_ends_quantized()
    if cfg.teacher:
        check_model_name(cfg.teacher)
    for name in ("weights", "teacher_weights"):
        value = getattr(cfg, name)
        if value and value.upper() not in ("DEFAULT", "NONE"):
            try:
                weights_file(value)
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"--{name.replace('_', '-')} {value}: {err}; or pass DEFAULT (the builder's pretrained "
                                "weights) or none") from None
    try:
        device = resolve_device(cfg.device)
    except RuntimeError:
        raise ValueError(f"--device {cfg.device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: this machine has no CUDA device; use --device cpu (or auto)")
    source, _, path = cfg.data.partition(":")
    if source == "imagefolder":
        check_image_folder(path)
    elif cfg.data not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.data!r}; use {', '.join(DATASETS)} or imagefolder:PATH")


def _parent(cfg: FinetuneConfig, num_classes: int, dist: Dist) -> Parent:
    """The parent on the run's device; under torchrun rank 0 fetches pretrained weights first."""
    if not dist.main:
        dist.barrier()
    parent = build_parent(cfg, num_classes)
    if dist.main:
        dist.barrier()
    parent.model.to(dist.device)
    return parent


def _trained(cfg: FinetuneConfig, data, dist: Dist) -> tuple[int, int]:
    """The optimizer steps and training images of the whole run, every stage (``max_steps`` included)."""
    per_epoch, size = len(data.train), len(data.train_dataset)
    steps = images = 0
    for stage in cfg.stage_configs():
        n = planned_steps(stage, per_epoch)
        steps += n
        images += min(n * stage.batch_size * dist.world_size, stage.epochs * size)
    return steps, images


def _result_metrics(cfg: FinetuneConfig, final: dict, parent: dict | None, distilled: bool,
                    trained: tuple[int, int], val_images: int) -> dict:
    """The measurements a checkpoint's config and card carry: what was trained, and on how many images the
    top-1 was measured."""
    steps, images = trained
    metrics = {"dataset": cfg.data.partition(":")[0], "top1": round(final["top1"], 2),
               "top5": round(final["top5"], 2), "val_images": val_images,
               "image_size": cfg.input_px,
               "steps": steps, "train_images": images,
               "training": cfg.training_summary() + f"; {steps:,} optimizer steps on {images:,} training images"
               + (", distilled from the teacher" if distilled else "")}
    if parent:
        metrics["fp_top1"] = round(parent["top1"], 2)
    return metrics


def _train_stages(cfg: FinetuneConfig, model: torch.nn.Module, teacher: torch.nn.Module | None, data, dist: Dist,
                  run: RunFolder) -> tuple[Trainer, dict | None]:
    """Train each stage in turn (a run without stages is one), each with its own optimizer and schedule,
    from where the previous left the model. ``--resume`` rebuilds the model of the stage ``last.pt``
    stands in and continues there; a stage's start is saved before its first step."""
    configs, names = cfg.stage_configs(), cfg.stage_names()
    steps_per_epoch = len(data.train)  # now, while the sampler starts at the top of an epoch
    start = run.saved_stage() if cfg.resume else 0
    trainer, final = None, None
    for index, stage_cfg in enumerate(configs):
        if index:
            model = _enter_stage(trainer.model if trainer else model, configs[index - 1], stage_cfg)
        if index < start:
            continue
        label = f"stage {index + 1}/{len(configs)} ({names[index]})" if cfg.stages is not None else ""
        trainer = Trainer(stage_cfg, model, teacher, dist, steps_per_epoch=steps_per_epoch, stage=label)
        if index == start and cfg.resume:
            state = run.restore(trainer)
        else:
            state = RunState(stage=index)
            if index:
                run.save(trainer, state)
        if dist.main and label:
            _logger.info("%s: %s", label, stage_cfg.training_summary())
        final = trainer.fit(data, state, run)
    return trainer, final


def _enter_stage(model: torch.nn.Module, before: FinetuneConfig, after: FinetuneConfig) -> torch.nn.Module:
    """The model as the next stage starts it: with quantized weights where the stage before kept them real."""
    if not before.is_float and not before.quant_config().weights and after.quant_config().weights:
        quantize_weights(model)
    return model


def finetune(cfg: FinetuneConfig) -> RunResult:
    """Run one fine-tuning job as ``cfg`` says; see the module docstring.

    The run folder is locked for the whole run: a second run on the same ``output`` is refused.
    """
    check_inputs(cfg)
    dist = setup(cfg.device)
    run = RunFolder(cfg, writer=dist.main)
    with run.lock():
        run.check()
        return _run(cfg, dist, run)


def _run(cfg: FinetuneConfig, dist: Dist, run: RunFolder) -> RunResult:
    torch.manual_seed(cfg.seed)
    data = build_loaders(cfg, dist)
    parent = _parent(cfg, data.num_classes, dist)
    model = build_student(cfg.stage_configs()[0], parent.model).to(dist.device)
    if cfg.recalibrate_bn and not cfg.resume and not cfg.is_float:
        recalibrate_bn(model, data.train, batches=cfg.recalibrate_bn, device=dist.device)
    teacher = build_teacher(cfg, parent, data.num_classes, dist.device)
    if not cfg.resume:
        run.start()
    parent_metrics = None
    if parent.head and cfg.eval_parent:
        parent_metrics = evaluate(parent.model, data.val, dist.device, desc="parent", disable=dist.quiet)
        if dist.main:
            _logger.info("FP parent %s: top-1 %.2f%%", cfg.model, parent_metrics["top1"])
    trainer, final = _train_stages(cfg, model, teacher, data, dist, run)
    if final is None:  # a run resumed after its end validates once more
        final = evaluate(trainer.model, data.val, dist.device, desc="final", disable=dist.quiet)
    result = RunResult(parent_top1=parent_metrics["top1"] if parent_metrics else None, top1=final["top1"],
                       top5=final["top5"], output=str(run.path))
    if dist.main:
        metrics = _result_metrics(cfg, final, parent_metrics, teacher is not None, _trained(cfg, data, dist),
                                  len(data.val.dataset))
        result.update(run.save_model(trainer.model, metrics))
        if cfg.push_to_hub and not cfg.is_float:
            from quantswap.hub import push_to_hub

            _logger.info("pushed to %s", push_to_hub(run.path / "model", cfg.push_to_hub).commit_url)
    dist.barrier()
    return result

