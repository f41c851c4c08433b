"""The run folder and the run's position in it: the only code that writes ``last.pt``, ``best.pt``,
``metrics.jsonl``, ``args.yaml`` and the final model.

A run folder holds ``args.yaml`` (the configuration), ``metrics.jsonl`` (a row per epoch, and step rows
between them: ``"kind": "step"``),
``last.pt`` (everything needed to continue: model, optimizer, scheduler, scaler, RNG and
:class:`RunState`), ``best.pt`` (a copy of the ``last.pt`` of the best epoch) and the packed model
(``model/``, a checkpoint folder; a float run's unquantized). Every file is written to a temporary name and
moved into place, so a killed run leaves the previous complete file.

Example:
    >>> import tempfile
    >>> from quantswap.train.run_state import RunState
    >>> state = RunState()
    >>> state.add_batch(loss=0.5, correct=3, count=4)
    >>> state.train_loss, state.train_top1
    (0.5, 75.0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch import nn

from quantswap.train.config import FinetuneConfig

__all__ = ["RunState", "RunFolder", "RunInUseError", "STATE_NAME", "BEST_NAME", "METRICS_NAME", "ARGS_NAME", "STEP_ROW"]

STATE_NAME, BEST_NAME, METRICS_NAME, ARGS_NAME, LOCK_NAME = "last.pt", "best.pt", "metrics.jsonl", "args.yaml", ".lock"
#: ``metrics.jsonl`` holds a row per epoch (validation included) and, between them, rows of this kind every
#: tenth of an epoch (at least every 10 steps): the training curve.
STEP_ROW = "step"
#: What a run writes besides ``args.yaml`` (and so what starting a run over an earlier one deletes).
RUN_FILES = (STATE_NAME, BEST_NAME, METRICS_NAME, "model.safetensors", "model")
#: Options a ``--resume`` may change: where and how it runs and how it saves, not what it trains.
RESUMABLE = frozenset({"resume", "overwrite", "device", "workers", "save_every", "push_to_hub", "data_root", "compile",
                       "eval_parent", "output", "fp_dtype"})


def training_data_config(cfg: FinetuneConfig, model: nn.Module) -> dict[str, Any]:
    """How the run fed the model, as a timm data config (a timm base's own, with what training used over it):
    input size, channels, mean and std. A deployed model needs it; ``config.json``, the card and the ONNX file
    carry it."""
    from quantswap.data import DATASETS, IMAGENET_MEAN, IMAGENET_STD

    spec = DATASETS.get(cfg.data)
    mean, std = (spec.mean, spec.std) if spec else (IMAGENET_MEAN, IMAGENET_STD)
    size = cfg.input_px
    channels = 3  # grayscale is repeated to three channels, each normalized alike
    return {**(getattr(model, "pretrained_cfg", None) or {}), "input_size": (channels, size, size),
            "mean": tuple(mean) * (channels // len(mean)), "std": tuple(std) * (channels // len(std)),
            "interpolation": "bilinear"}


def _difference(name: str, before: Any, after: Any) -> str:
    """The first place two option values differ, as ``name.path: before -> after`` (a stage's field, not
    two whole stage lists).

    Example:
        >>> _difference("stages", [{"epochs": 2}, {"lr": 0.1}], [{"epochs": 2}, {"lr": 0.2}])
        'stages[1].lr: 0.1 -> 0.2'
    """
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            if before.get(key) != after.get(key):
                return _difference(f"{name}.{key}", before.get(key), after.get(key))
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (a, b) in enumerate(zip(before, after, strict=True)):
            if a != b:
                return _difference(f"{name}[{index}]", a, b)
    return f"{name}: {before!r} -> {after!r}"


class RunInUseError(FileExistsError):
    """Another process is running in the run folder."""


class _Checkpointable(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class RunState:
    """Where the run stands: saved in ``last.pt`` and restored on ``--resume``."""

    stage: int = 0  # the stage training (0 for a run without stages)
    epoch: int = 0  # epochs of this stage completed
    step_in_epoch: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    sums: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0])  # this epoch: loss·n, correct, n

    def add_batch(self, loss: float, correct: int, count: int) -> None:
        self.sums[0] += loss * count
        self.sums[1] += correct
        self.sums[2] += count

    @property
    def train_loss(self) -> float:
        return self.sums[0] / max(self.sums[2], 1)

    @property
    def train_top1(self) -> float:
        return 100 * self.sums[1] / max(self.sums[2], 1)

    def end_epoch(self, top1: float) -> bool:
        """Move to the next epoch; returns whether ``top1`` is the best so far."""
        is_best = top1 > self.best_top1
        self.best_top1 = max(top1, self.best_top1)
        self.epoch, self.step_in_epoch, self.sums = self.epoch + 1, 0, [0.0, 0.0, 0]
        return is_best


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunFolder:
    """A run's folder (see the module docstring). Only the main process (``writer=True``) writes."""

    def __init__(self, cfg: FinetuneConfig, *, writer: bool = True):
        self.cfg, self.path, self.writer = cfg, Path(cfg.output), writer

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for the whole run (an exclusive ``flock`` on ``.lock``, which records the pid)."""
        if not self.writer:
            yield
            return
        try:
            import fcntl  # noqa: F401  (only to know the platform has it; _locked uses it)
        except ImportError:  # not POSIX: no lock, as before
            yield
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            with self._locked():
                yield
        except BaseException:
            if created and {p.name for p in self.path.iterdir()} <= {LOCK_NAME}:  # failed before writing anything
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        with open(self.path / LOCK_NAME, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                raise RunInUseError(f"{self.path} is in use by another quantswap finetune (pid {holder}); wait for it "
                                    "to end, or choose another --output") from None
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def check(self) -> None:
        """Refuse to start over another run, or to resume nothing or another configuration, before anything
        is written."""
        if self.cfg.resume:
            if not (self.path / STATE_NAME).is_file():
                raise FileNotFoundError(f"--resume: {self.path / STATE_NAME} does not exist; start the run without "
                                        "--resume")
            self._check_same_configuration()
        elif (self.path / ARGS_NAME).exists():
            if not self.cfg.overwrite:
                raise FileExistsError(f"{self.path} holds another run; pass --resume to continue it, --overwrite to "
                                      "replace it, or choose another --output")
        else:
            self._check_foreign_files()

    def _check_foreign_files(self) -> None:
        """A folder quantswap did not create as a run: refused unless ``--overwrite``, and even then when the run
        would replace files of the same names (quantswap deletes only what a run of its own wrote)."""
        present = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME and not p.name.endswith(".partial")) \
            if self.path.is_dir() else []
        if not present:
            return
        clash = [name for name in RUN_FILES if (self.path / name).exists()]
        if clash:
            raise FileExistsError(f"{self.path} is not a quantswap run folder (no {ARGS_NAME}) and holds "
                                  f"{', '.join(clash)}, which a run would replace; move them away or choose another "
                                  "--output")
        if not self.cfg.overwrite:
            shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
            raise FileExistsError(f"{self.path} is not a quantswap run folder (no {ARGS_NAME}) and holds {shown}; "
                                  "choose a new or empty --output, or pass --overwrite to write the run beside them "
                                  "(nothing of theirs is deleted)")

    def _check_same_configuration(self) -> None:
        try:
            saved = yaml.safe_load((self.path / ARGS_NAME).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"--resume: {self.path / ARGS_NAME} cannot be read ({err}); start again with --overwrite") from None
        asked = self.cfg.to_dict()
        changed = [_difference(k, saved[k], asked[k]) for k in sorted(set(saved) & set(asked) - RESUMABLE)
                   if saved[k] != asked[k]]
        if changed:
            raise ValueError(
                f"--resume continues the run in {self.path} as it was configured, but these options differ: "
                f"{'; '.join(changed)}. Resume with the run's own options (its {ARGS_NAME} is a recipe: --recipe "
                f"{self.path / ARGS_NAME} --resume), or start a new run: another --output, or --overwrite. To train "
                "a finished run longer, start a new run from its weights")

    def start(self) -> None:
        """A fresh run: the previous run's files removed, ``args.yaml`` written."""
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / ARGS_NAME).exists():  # a run of quantswap's: its files go (check() refused any other's)
            for name in RUN_FILES:
                if (self.path / name).is_dir():
                    shutil.rmtree(self.path / name, ignore_errors=True)
                else:
                    (self.path / name).unlink(missing_ok=True)
        self._write_text(ARGS_NAME, yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def _write_text(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.partial"
        tmp.write_text(text)
        os.replace(tmp, self.path / name)

    def save(self, trainer: _Checkpointable, state: RunState) -> None:
        """Write ``last.pt`` atomically: the trainer's state, the run's position and the RNG."""
        if not self.writer:
            return
        tmp = self.path / f".{STATE_NAME}.partial"
        torch.save({**trainer.state_dict(), "state": dataclasses.asdict(state), "rng": _rng_state(),
                    "config": self.cfg.to_dict()}, tmp)
        os.replace(tmp, self.path / STATE_NAME)

    def _saved(self) -> dict[str, Any]:
        """``last.pt``, loaded once (safely: tensors and plain data only)."""
        if not hasattr(self, "_last"):
            path = self.path / STATE_NAME
            try:
                self._last = torch.load(path, map_location="cpu", weights_only=True)
                RunState(**self._last["state"])
            except Exception as err:
                raise self._corrupt(err) from None
        return self._last

    def _corrupt(self, err: Exception) -> ValueError:
        return ValueError(f"cannot resume from {self.path / STATE_NAME}: the checkpoint is corrupt or from another "
                          f"configuration ({type(err).__name__}: {str(err)[:200]}); start again with --overwrite")

    def saved_stage(self) -> int:
        """The stage ``last.pt`` stands in (to rebuild that stage's model before :meth:`restore`)."""
        return RunState(**self._saved()["state"]).stage

    def restore(self, trainer: _Checkpointable) -> RunState:
        """Load ``last.pt`` into ``trainer`` and the RNG; returns where the run stood."""
        saved = self._saved()
        try:
            trainer.load_state_dict(saved)
            state = RunState(**saved["state"])
            _set_rng_state(saved["rng"])
        except Exception as err:
            raise self._corrupt(err) from None
        self._forget_rows_after(state)
        return state

    def _forget_rows_after(self, state: RunState) -> None:
        """Drop the metrics rows ``last.pt`` does not hold (a kill between a row and its ``last.pt``): epochs after
        its epoch, steps after its step."""
        path = self.path / METRICS_NAME
        if not self.writer or not path.is_file():
            return

        def held(row: dict) -> bool:
            stage = row.get("stage", 1) - 1
            if row.get("kind") == STEP_ROW:
                return (stage, row["step"]) <= (state.stage, state.global_step)
            return (stage, row.get("epoch", 0)) <= (state.stage, state.epoch)

        rows = path.read_text().splitlines()
        kept = [row for row in rows if row.strip() and held(json.loads(row))]
        if len(kept) != len(rows):
            self._write_text(METRICS_NAME, "".join(row + "\n" for row in kept))

    def log_step(self, row: dict[str, Any]) -> None:
        """Append a step row (``"kind": "step"``: loss, lr, images per second) to ``metrics.jsonl``."""
        if self.writer:
            with open(self.path / METRICS_NAME, "a") as f:
                f.write(json.dumps({"kind": STEP_ROW, **row}) + "\n")

    def end_epoch(self, trainer: _Checkpointable, state: RunState, row: dict[str, Any], top1: float) -> None:
        """Record an epoch: its metrics row, ``last.pt``, and ``best.pt`` when ``top1`` is the best yet."""
        is_best = state.end_epoch(top1)
        if not self.writer:
            return
        with open(self.path / METRICS_NAME, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.save(trainer, state)
        if is_best:
            shutil.copyfile(self.path / STATE_NAME, self.path / f".{BEST_NAME}.partial")
            os.replace(self.path / f".{BEST_NAME}.partial", self.path / BEST_NAME)

    def save_model(self, model: nn.Module, metrics: dict[str, Any]) -> dict[str, Any]:
        """The run's result on disk: the checkpoint folder ``model/`` (a float run's unquantized)."""
        from quantswap.checkpoint import save_pretrained

        model = model.cpu().eval()
        size = save_pretrained(model, self.path / "model", fp_dtype=self.cfg.fp_dtype, metrics=metrics,
                               pretrained_cfg=training_data_config(self.cfg, model))
        return {"file_bytes": size.file_bytes, "fp32_bytes": size.fp32_bytes, "checkpoint": str(self.path / "model")}
