"""The training loop: :class:`Trainer` owns the model, its optimizer, scheduler and scaler and runs
training steps and epochs; :func:`evaluate` validates; :func:`distribution_loss` is the
distillation loss.

Example:
    >>> from quantswap.train import distribution_loss
    >>> import torch
    >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    >>> round(distribution_loss(s, t).item(), 4)  # -(0.5 log σ(2) + 0.5 log σ(-2))
    1.1269
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from quantswap.api import set_progress
from quantswap.data import set_epoch
from quantswap.train.config import FinetuneConfig
from quantswap.train.distributed import Dist
from quantswap.train.loaders import Loaders
from quantswap.train.run_state import STATE_NAME, RunFolder, RunState

__all__ = ["Trainer", "TrainingDiverged", "compile_options", "distribution_loss", "evaluate"]

_logger = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    """``75`` -> ``'1 min 15 s'``."""
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the last good checkpoint is kept."""


def distribution_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """ReActNet's distributional loss: cross-entropy to the teacher's softmax (docs/methods.md#distillation),
    ``−mean_batch Σ_c softmax(z_T)_c · log softmax(z_S)_c``."""
    return -(teacher_logits.float().softmax(1) * student_logits.float().log_softmax(1)).sum(1).mean()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, desc: str = "eval",
             disable: bool | None = None) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy of ``model`` on ``loader`` (summed over processes)."""
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
    correct1, correct5, loss, count = Dist(device).all_reduce([correct1, correct5, loss, count])
    return {"top1": 100 * correct1 / count, "top5": 100 * correct5 / count, "loss": loss / count}


def compile_options(device: torch.device) -> dict[str, Any] | None:
    """inductor's options for ``torch.compile`` of a swapped model on ``device`` (what ``--compile`` uses).

    On the CPU, no layout optimization: with it, inductor keeps each convolution's weight channels_last
    and computes the weight quantizers' per-filter statistics in that order, one element at a time
    (ResNet-18, batch 32, 64 px: ReCU's compiled step 2.3x the compiled float step, IR-Net's 1.7x; 1.3x
    and 1.2x without, and the float step itself is faster). On CUDA, inductor's defaults.

    Example:
        >>> compile_options(torch.device("cpu"))
        {'layout_optimization': False}
    """
    return {"layout_optimization": False} if device.type == "cpu" else None


@contextlib.contextmanager
def _sigint_flag(enabled: bool) -> Iterator[list[bool]]:
    """Within the block, Ctrl-C sets ``flag[0]`` instead of raising, so a step is never cut in half."""
    flag = [False]
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.__setitem__(0, True)) if enabled else None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def planned_steps(cfg: FinetuneConfig, steps_per_epoch: int) -> int:
    """The optimizer steps a run (or stage) takes: its epochs, cut at ``max_steps`` when that is fewer.

    Example:
        >>> from quantswap import FinetuneConfig
        >>> planned_steps(FinetuneConfig(epochs=2, max_steps=50), steps_per_epoch=78)
        50
    """
    total = cfg.epochs * steps_per_epoch
    return total if cfg.max_steps is None else min(cfg.max_steps, total)


def _scheduler(cfg: FinetuneConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """timm's scheduler, stepped per update over the steps the run takes: a run cut short by ``max_steps``
    gets the whole schedule (its warmup, decay and end) fitted into those steps, not its first part."""
    from timm.scheduler import create_scheduler_v2

    planned = planned_steps(cfg, steps_per_epoch)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.schedule, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr * 0.01,
        min_lr=cfg.min_lr, cycle_mul=cfg.cycle_mul, cycle_limit=cfg.cycle_limit, decay_rate=cfg.decay_rate,
        decay_milestones=cfg.decay_milestones or (max(cfg.epochs // 2, 1),), step_on_epochs=False,
        updates_per_epoch=steps_per_epoch if planned == cfg.epochs * steps_per_epoch else planned / cfg.epochs)
    return scheduler


@dataclasses.dataclass
class Trainer:
    """Fine-tunes ``model`` (distilling from ``teacher`` when given) as ``cfg`` says, on ``dist``'s device."""

    cfg: FinetuneConfig
    model: nn.Module
    teacher: nn.Module | None
    dist: Dist
    steps_per_epoch: int
    stage: str = ""  # "stage 1/2 (activations)" in a staged run: progress bars, logs and metrics rows say it

    def __post_init__(self) -> None:
        from timm.optim import create_optimizer_v2

        cfg, device = self.cfg, self.dist.device
        if cfg.sync_bn and self.dist.distributed:
            if device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); drop it on CPU")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizer = create_optimizer_v2(self.model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             momentum=cfg.momentum)
        self.scheduler = _scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.amp = cfg.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.total_steps = planned_steps(cfg, self.steps_per_epoch)
        self.train_model = nn.parallel.DistributedDataParallel(self.model) if self.dist.distributed else self.model
        if cfg.compile:  # the training forward only; validation and checkpoints use the module itself
            self.train_model = torch.compile(self.train_model, options=compile_options(device))

    # -- what last.pt holds of the trainer ----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    # -- training -----------------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits)`` of a batch: label cross-entropy, the distribution loss, or their mix."""
        cfg = self.cfg
        with torch.autocast(self.dist.device.type, enabled=self.amp):
            logits = self.train_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                kd = distribution_loss(logits, teacher_logits)
                loss = cfg.distill_alpha * kd + (1 - cfg.distill_alpha) * loss if cfg.distill_alpha < 1 else kd
        return loss, logits

    def step(self, x: torch.Tensor, y: torch.Tensor, state: RunState) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch; ``TrainingDiverged`` when the loss is not finite."""
        set_progress(self.model, min(state.global_step / max(self.total_steps - 1, 1), 1.0))
        loss, logits = self.loss(x, y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss.item()} at epoch {state.epoch + 1}, step {state.global_step}; the last good "
                f"checkpoint is {self.cfg.output}/{STATE_NAME}. Lower --lr, set --clip-grad, or turn off --amp")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        state.global_step += 1
        state.step_in_epoch += 1
        self.scheduler.step_update(num_updates=state.global_step)
        return loss, logits

    def train_epoch(self, data: Loaders, state: RunState, run: RunFolder, interrupted: list[bool]) -> dict[str, float]:
        """Train from where ``state`` stands to the end of its epoch (or of training, or a Ctrl-C);
        checkpoints every ``save_every`` steps. Returns the epoch's timing."""
        epoch, device = state.epoch, self.dist.device
        data.sampler.set_epoch(epoch, start=state.step_in_epoch * self.cfg.batch_size)
        set_epoch(data.train_dataset, epoch)
        self.model.train()
        desc = f"{self.stage + ', ' if self.stage else ''}epoch {epoch + 1}/{self.cfg.epochs}"
        bar = tqdm(data.train, desc=desc, initial=state.step_in_epoch, total=self.steps_per_epoch,
                   disable=self.dist.quiet, dynamic_ncols=True)
        tick = start = time.perf_counter()
        seen = 0  # images since this process started the epoch (a resumed epoch counts from the resume)
        every = max(10, self.steps_per_epoch // 10)  # a step row in metrics.jsonl (and, off a terminal, a line)
        since = [0.0, 0, start]  # loss sum, steps and time since the last step row
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, logits = self.step(x, y, state)
            value = loss.item()
            state.add_batch(value, (logits.argmax(1) == y).sum().item(), len(y))
            seen += len(y) * self.dist.world_size
            now = time.perf_counter()
            bar.set_postfix(loss=f"{state.train_loss:.3f}", acc=f"{state.train_top1:.1f}",
                            img_s=f"{len(y) * self.dist.world_size / max(now - tick, 1e-9):.0f}",
                            lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            tick = now
            since[0], since[1] = since[0] + value, since[1] + 1
            if state.step_in_epoch % every == 0:
                self._step_row(run, state, since, now, bar.disable, desc, seen / max(now - start, 1e-9))
            if interrupted[0] or state.global_step >= self.total_steps:
                break
            if self.cfg.save_every and state.global_step % self.cfg.save_every == 0:
                run.save(self, state)
        bar.close()
        seconds = time.perf_counter() - start
        return {"train_seconds": round(seconds, 2), "train_img_s": round(seen / seconds, 1)}

    def _step_row(self, run: RunFolder, state: RunState, since: list, now: float, log: bool, desc: str,
                  rate: float) -> None:
        """A step row of the training curve (mean loss since the last one, lr, images per second) and, where no
        progress bar shows, a log line with when the epoch ends."""
        loss, steps, then = since
        images = steps * self.cfg.batch_size * self.dist.world_size
        run.log_step({**({"stage": state.stage + 1} if self.stage else {}), "epoch": state.epoch + 1,
                      "step": state.global_step, "loss": loss / max(steps, 1),
                      "lr": self.optimizer.param_groups[0]["lr"], "img_s": round(images / max(now - then, 1e-9), 1)})
        since[:] = [0.0, 0, now]
        if log and self.dist.main:
            left = (self.steps_per_epoch - state.step_in_epoch) * self.cfg.batch_size * self.dist.world_size / rate
            _logger.info("%s, step %d/%d: loss %.4f, %.0f img/s, epoch ends in %s", desc, state.step_in_epoch,
                         self.steps_per_epoch, state.train_loss, rate, _duration(left))

    def fit(self, data: Loaders, state: RunState, run: RunFolder) -> dict[str, float] | None:
        """Train every remaining epoch, validating and recording each; returns the last validation
        (``None`` when nothing was left to train). Ctrl-C saves ``last.pt`` and raises ``KeyboardInterrupt``."""
        metrics = None
        with _sigint_flag(enabled=self.dist.main) as interrupted:
            while state.epoch < self.cfg.epochs and state.global_step < self.total_steps:
                timing = self.train_epoch(data, state, run, interrupted)
                if interrupted[0]:
                    run.save(self, state)
                    raise KeyboardInterrupt
                metrics = evaluate(self.model, data.val, self.dist.device, desc="val", disable=self.dist.quiet)
                loss_sum, correct, count = self.dist.all_reduce(list(state.sums))
                row = {**({"stage": state.stage + 1} if self.stage else {}), "epoch": state.epoch + 1,
                       "step": state.global_step, "train_loss": loss_sum / max(count, 1),
                       "train_top1": 100 * correct / max(count, 1), "lr": self.optimizer.param_groups[0]["lr"],
                       **timing, **{f"val_{k}": v for k, v in metrics.items()}}
                if self.dist.main:
                    _logger.info("%sepoch %d: train loss %.4f, train top-1 %.2f%%, val top-1 %.2f%%, top-5 %.2f%%",
                                 self.stage + ", " if self.stage else "", row["epoch"], row["train_loss"],
                                 row["train_top1"], metrics["top1"], metrics["top5"])
                run.end_epoch(self, state, row, metrics["top1"])
        return metrics
