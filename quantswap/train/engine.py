"""The fine-tuning engine behind ``quantswap finetune``: :func:`finetune` runs a :class:`FinetuneConfig`.

One run: build the float parent (pretrained weights, or a local file), swap it with the method,
fine-tune with distillation from the frozen parent, checkpoint atomically, and save the packed
model with its measured accuracy. Resuming restores model, optimizer, scheduler, scaler, RNG and
the position in the epoch, so a killed run continues to the same weights as an uninterrupted one.

Example:
    >>> from quantswap.train import distribution_loss
    >>> import torch
    >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    >>> round(distribution_loss(s, t).item(), 4)  # -(0.5 log σ(2) + 0.5 log σ(-2))
    1.1269
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from quantswap.api import binarize, set_progress, ternarize
from quantswap.data import DATASETS, ResumableSampler, build_datasets, check_image_folder, set_epoch
from quantswap.models import build_model, check_model_name
from quantswap.train.config import FinetuneConfig

__all__ = ["finetune", "check_inputs", "evaluate", "distribution_loss", "load_weights", "build_parent", "Parent", "resolve_device", "TrainingDiverged", "RunResult"]

STATE_NAME, BEST_NAME = "last.pt", "best.pt"


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the last good checkpoint is kept."""


def distribution_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """ReActNet's distributional loss: cross-entropy to the teacher's softmax (METHODS.md §6.1),
    ``−mean_batch Σ_c softmax(z_T)_c · log softmax(z_S)_c``."""
    return -(teacher_logits.float().softmax(1) * student_logits.float().log_softmax(1)).sum(1).mean()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a weights-only torch checkpoint ({err}); save a state_dict, or "
                         "use safetensors") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _head_name(model: nn.Module) -> str:
    """The qualified name of the classifier: timm's ``get_classifier``, else the last Linear."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        return next(n for n, m in model.named_modules() if m is head)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def load_weights(model: nn.Module, path: str | os.PathLike, *, new_head_ok: bool = False) -> bool:
    """Load a local safetensors file, or a torch checkpoint with ``weights_only=True`` (never a full unpickle).

    With ``new_head_ok``, a classifier of another class count (ImageNet weights for a 10-class task)
    is skipped and the model's fresh head kept. Returns whether the file's head was loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    state = _read_state_dict(path)
    own = model.state_dict()
    head = _head_name(model)
    skipped = [k for k, v in state.items() if k.startswith(head + ".") and k in own and v.shape != own[k].shape]
    if skipped and new_head_ok:
        state = {k: v for k, v in state.items() if k not in skipped}
    try:
        missing, unexpected = model.load_state_dict(state, strict=not skipped)
        if unexpected or set(missing) - set(skipped):
            raise RuntimeError(f"missing keys {sorted(set(missing) - set(skipped))[:5]}, unexpected {unexpected[:5]}")
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the model: {str(err).splitlines()[0]} ...; check --model and "
                         "--num-classes") from None
    return not skipped


def _replace_head(model: nn.Module, num_classes: int) -> bool:
    """Give ``model`` a fresh ``num_classes`` classifier unless it has one; returns whether it did."""
    if hasattr(model, "reset_classifier"):  # timm
        if model.num_classes == num_classes:
            return False
        model.reset_classifier(num_classes)
        return True
    name = _head_name(model)
    last = model.get_submodule(name)
    if last.out_features == num_classes:
        return False
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Linear(last.in_features, num_classes))
    return True


class Parent(NamedTuple):
    """The float model a run starts from: ``pretrained`` weights, and whether its ``head`` was pretrained
    for this task too (only then can it teach or be compared)."""

    model: nn.Module
    pretrained: bool
    head: bool


def build_parent(cfg: FinetuneConfig, num_classes: int) -> Parent:
    """The float model of ``cfg.model`` with ``cfg.weights``, its classifier sized for ``num_classes``."""
    weights = cfg.weights
    if weights.lower() == "none":
        return Parent(build_model(cfg.model, num_classes=num_classes), False, False)
    if weights.upper() == "DEFAULT":
        try:
            model = build_model(cfg.model, weights="DEFAULT")
        except Exception as err:
            raise ValueError(
                f"the pretrained weights of {cfg.model} could not be fetched ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}). Offline, pass a local file: --weights PATH "
                "(a .safetensors file, or a torch state dict loaded with weights_only=True), or --weights none"
            ) from None
        return Parent(model, True, not _replace_head(model, num_classes))
    model = build_model(cfg.model, num_classes=num_classes)
    return Parent(model, True, load_weights(model, weights, new_head_ok=True))


def _swap(cfg: FinetuneConfig, parent: nn.Module) -> nn.Module:
    if cfg.method == "none":
        return copy.deepcopy(parent)
    options = {"skip_first": cfg.skip_first, "skip_last": cfg.skip_last, "include": cfg.include,
               "exclude": cfg.exclude}
    if cfg.activations is not None:
        options["activations"] = cfg.activations
    if cfg.method == "ternary":
        return ternarize(parent, expansion=cfg.expansion or 1, **options)
    return binarize(parent, method=cfg.method, **options)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, desc: str = "eval",
             disable: bool | None = None) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy of ``model`` on ``loader``."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss = count = 0.0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=disable, dynamic_ncols=True):
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        count += len(y)
    model.train(was_training)
    stats = torch.tensor([correct1, correct5, loss, count], dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    correct1, correct5, loss, count = stats.tolist()
    return {"top1": 100 * correct1 / count, "top5": 100 * correct5 / count, "loss": loss / count}


class RunResult(dict):
    """What :func:`finetune` returns: ``parent_top1``, ``top1``, ``top5``, sizes and paths."""


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(spec: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as ``torch.device`` reads it."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def _check_output(cfg: FinetuneConfig, out: Path) -> None:
    if cfg.resume:
        if not (out / STATE_NAME).is_file():
            raise FileNotFoundError(f"--resume: {out / STATE_NAME} does not exist; start the run without --resume")
    elif (out / "args.yaml").exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} holds another run; pass --resume to continue it, --overwrite to replace it, "
                              "or choose another --output")


def _start_output(cfg: FinetuneConfig, out: Path) -> None:
    """A fresh run's folder: the previous run's state removed, ``args.yaml`` written (rank 0 only)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (STATE_NAME, BEST_NAME, "metrics.jsonl"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "model", ignore_errors=True)
    (out / "model.safetensors").unlink(missing_ok=True)
    (out / "args.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def check_inputs(cfg: FinetuneConfig) -> None:
    """Fail on a bad model, teacher, dataset or weights file before anything is written or trained."""
    check_model_name(cfg.model)
    if cfg.teacher:
        check_model_name(cfg.teacher)
    for name in ("weights", "teacher_weights"):
        value = getattr(cfg, name)
        if value and value.upper() not in ("DEFAULT", "NONE") and not Path(value).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {value}: no such file; pass a .safetensors file or "
                                    "a torch state dict, DEFAULT (the builder's pretrained weights) or none")
    source, _, path = cfg.data.partition(":")
    if source == "imagefolder":
        check_image_folder(path)
    elif cfg.data not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.data!r}; use {', '.join(DATASETS)} or imagefolder:PATH")


def finetune(cfg: FinetuneConfig) -> RunResult:
    """Run one fine-tuning job as ``cfg`` says; see the module docstring."""
    check_inputs(cfg)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(cfg.device)
    distributed = world_size > 1
    if distributed and not torch.distributed.is_initialized():
        if device.type == "cuda":
            local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
            if local_rank >= gpus:
                raise ValueError(f"torchrun started local process {local_rank}, but this machine has {gpus} CUDA "
                                 f"device(s): use --nproc_per_node {gpus} or fewer (or --device cpu for gloo)")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0
    quiet = None if main_process else True  # tqdm: None = only on a terminal

    out = Path(cfg.output)
    _check_output(cfg, out)

    torch.manual_seed(cfg.seed)
    train_ds, val_ds, data_classes = build_datasets(
        cfg.data, image_size=cfg.image_size, root=cfg.data_root, seed=cfg.seed,
        train_subset=cfg.train_subset, val_subset=cfg.val_subset)
    num_classes = cfg.num_classes or data_classes
    sampler = ResumableSampler(len(train_ds), shuffle=True, seed=cfg.seed, rank=rank, world_size=world_size)
    val_sampler = ResumableSampler(len(val_ds), shuffle=False, seed=cfg.seed, rank=rank, world_size=world_size)
    loader_kw = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda"}
    # own generators: the loaders must not draw from the global RNG, whose state a checkpoint restores
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, generator=torch.Generator(),
                              **loader_kw)
    val_loader = DataLoader(val_ds, batch_size=max(cfg.batch_size, 256), sampler=val_sampler,
                            generator=torch.Generator(), **loader_kw)

    if distributed and not main_process:
        torch.distributed.barrier()  # rank 0 downloads the pretrained weights first
    parent, pretrained, head_pretrained = build_parent(cfg, num_classes)
    if pretrained and not head_pretrained and main_process:
        tqdm.write(f"{cfg.model}: pretrained weights with a new {num_classes}-class head (no distillation from it)")
    if distributed and main_process:
        torch.distributed.barrier()
    parent = parent.to(device)
    model = _swap(cfg, parent).to(device)
    distill = cfg.distill if cfg.distill is not None else (head_pretrained and cfg.method != "none")
    teacher = None
    if distill:
        if cfg.teacher:
            teacher = build_model(cfg.teacher, num_classes=num_classes)
            if cfg.teacher_weights:
                load_weights(teacher, cfg.teacher_weights)
            teacher = teacher.to(device)
        elif not head_pretrained:
            raise ValueError("--distill needs a teacher trained for this task: the parent's weights (--weights) "
                             f"have {'a new' if pretrained else 'no pretrained'} {num_classes}-class head. Fine-tune a "
                             "FP parent first (--method none) and pass its model.safetensors, or set --teacher")
        else:
            teacher = parent
        teacher.eval().requires_grad_(False)
    if main_process and not cfg.resume:
        _start_output(cfg, out)

    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    if cfg.sync_bn and distributed:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); drop it on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.schedule, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr * 0.01,
        min_lr=cfg.min_lr, cycle_mul=cfg.cycle_mul, cycle_limit=cfg.cycle_limit, decay_rate=cfg.decay_rate,
        decay_milestones=cfg.decay_milestones or (max(cfg.epochs // 2, 1),), step_on_epochs=False,
        updates_per_epoch=steps_per_epoch)
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_top1": -1.0, "sums": [0.0, 0.0, 0]}
    if cfg.resume:
        try:
            saved = torch.load(out / STATE_NAME, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            state = saved["state"]
            _set_rng_state(saved["rng"])
        except Exception as err:
            raise ValueError(f"cannot resume from {out / STATE_NAME}: the checkpoint is corrupt or from another "
                             f"configuration ({type(err).__name__}: {str(err)[:200]}); start again with --overwrite") from None

    def save_state(path: Path = out / STATE_NAME) -> None:
        if main_process:
            _atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                "state": state, "rng": _rng_state(), "config": cfg.to_dict()}, path)

    parent_metrics = None
    if head_pretrained and cfg.eval_parent:
        parent_metrics = evaluate(parent, val_loader, device, desc="parent", disable=quiet)
    if parent_metrics and main_process:
        tqdm.write(f"FP parent {cfg.model}: top-1 {parent_metrics['top1']:.2f}%")
    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model

    interrupted = False
    metrics = None  # the last validation; a run resumed after its end validates once more

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True

    previous_handler = signal.signal(signal.SIGINT, on_sigint) if main_process else None
    try:
        while state["epoch"] < cfg.epochs and state["global_step"] < total_steps:
            epoch = state["epoch"]
            sampler.set_epoch(epoch, start=state["step_in_epoch"] * cfg.batch_size)
            set_epoch(train_ds, epoch)
            model.train()
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", initial=state["step_in_epoch"],
                       total=steps_per_epoch, disable=quiet, dynamic_ncols=True)
            tick = epoch_start = time.perf_counter()
            seen = 0  # images since this process started the epoch (a resumed epoch counts from the resume)
            for x, y in bar:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                set_progress(model, min(state["global_step"] / max(total_steps - 1, 1), 1.0))
                with torch.autocast(device.type, enabled=amp):
                    logits = train_model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                        kd = distribution_loss(logits, teacher_logits)
                        loss = cfg.distill_alpha * kd + (1 - cfg.distill_alpha) * loss if cfg.distill_alpha < 1 else kd
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {state['global_step']}; the last "
                        f"good checkpoint is {out / STATE_NAME}. Lower --lr, set --clip-grad, or turn off --amp")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                state["global_step"] += 1
                state["step_in_epoch"] += 1
                scheduler.step_update(num_updates=state["global_step"])
                sums = state["sums"]
                sums[0] += loss.item() * len(y)
                sums[1] += (logits.argmax(1) == y).sum().item()
                sums[2] += len(y)
                seen += len(y) * world_size
                now = time.perf_counter()
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{100 * sums[1] / sums[2]:.1f}",
                                img_s=f"{len(y) * world_size / max(now - tick, 1e-9):.0f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                tick = now
                if interrupted or state["global_step"] >= total_steps:
                    break
                if cfg.save_every and state["global_step"] % cfg.save_every == 0:
                    save_state()
            bar.close()
            if interrupted:
                save_state()
                raise KeyboardInterrupt
            train_seconds = time.perf_counter() - epoch_start
            metrics = evaluate(model, val_loader, device, desc="val", disable=quiet)
            sums = state["sums"]
            if distributed:  # the epoch's training loss and accuracy over every rank's samples
                totals = torch.tensor(sums, dtype=torch.float64, device=device)
                torch.distributed.all_reduce(totals)
                sums = totals.tolist()
            row = {"epoch": epoch + 1, "step": state["global_step"], "train_loss": sums[0] / max(sums[2], 1),
                   "train_top1": 100 * sums[1] / max(sums[2], 1), "lr": optimizer.param_groups[0]["lr"],
                   "train_seconds": round(train_seconds, 2), "train_img_s": round(seen / train_seconds, 1),
                   **{f"val_{k}": v for k, v in metrics.items()}}
            state.update(epoch=epoch + 1, step_in_epoch=0, sums=[0.0, 0.0, 0])
            if main_process:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                tqdm.write(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, train top-1 {row['train_top1']:.2f}%,"
                           f" val top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%")
            is_best = metrics["top1"] > state["best_top1"]
            state["best_top1"] = max(metrics["top1"], state["best_top1"])
            save_state()
            if is_best and main_process:
                shutil.copyfile(out / STATE_NAME, out / f".{BEST_NAME}.partial")
                os.replace(out / f".{BEST_NAME}.partial", out / BEST_NAME)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

    final = metrics if metrics is not None else evaluate(model, val_loader, device, desc="final", disable=quiet)
    result = RunResult(parent_top1=parent_metrics["top1"] if parent_metrics else None, top1=final["top1"],
                       top5=final["top5"], output=str(out))
    if main_process:
        result.update(_save_final(cfg, model, out, final, parent_metrics))
        _print_table(cfg, result)
        if cfg.push_to_hub and cfg.method != "none":
            from quantswap.hub import push_to_hub

            info = push_to_hub(out / "model", cfg.push_to_hub)
            tqdm.write(f"pushed to {info.commit_url}")
    if distributed:
        torch.distributed.barrier()
    return result


def _save_final(cfg: FinetuneConfig, model: nn.Module, out: Path, final: dict, parent: dict | None) -> dict:
    model = model.cpu().eval()
    fp32_bytes = 4 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    if cfg.method == "none":
        from safetensors.torch import save_file

        tmp = out / ".model.safetensors.partial"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, out / "model.safetensors")
        return {"file_bytes": (out / "model.safetensors").stat().st_size, "fp32_bytes": fp32_bytes,
                "weights": str(out / "model.safetensors")}
    from quantswap.checkpoint import save_pretrained

    metrics = {"dataset": cfg.data.partition(":")[0], "top1": round(final["top1"], 2), "top5": round(final["top5"], 2),
               "image_size": cfg.image_size or (224 if cfg.data.startswith("imagefolder") else 32)}
    if parent:
        metrics["fp_top1"] = round(parent["top1"], 2)
    size = save_pretrained(model, out / "model", fp_dtype=cfg.fp_dtype, metrics=metrics)
    return {"file_bytes": size.file_bytes, "fp32_bytes": size.fp32_bytes, "checkpoint": str(out / "model")}


def _print_table(cfg: FinetuneConfig, r: RunResult) -> None:
    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}%"

    name = "FP" if cfg.method == "none" else cfg.method
    rows = [("FP parent top-1", pct(r["parent_top1"]))] if r["parent_top1"] is not None else []
    rows += [(f"{name} top-1", pct(r["top1"])), (f"{name} top-5", pct(r["top5"]))]
    if cfg.method == "none":
        rows.append(("FP32 checkpoint", f"{r['file_bytes'] / 1e6:.2f} MB"))
    else:
        ratio = r["fp32_bytes"] / r["file_bytes"]
        rows += [("FP32 size", f"{r['fp32_bytes'] / 1e6:.2f} MB"),
                 (f"{name} checkpoint", f"{r['file_bytes'] / 1e6:.2f} MB ({ratio:.1f}x smaller)")]
    rows.append(("saved to", r.get("checkpoint") or r.get("weights")))
    width = max(len(k) for k, _ in rows)
    tqdm.write("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
