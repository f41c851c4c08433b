"""The models a run starts from: the float parent (pretrained weights, a local file or none, with its
classifier sized for the task), the swapped student made from it, and the teacher it distils from."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from quantswap.api import swap
from quantswap.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config
from quantswap.models import build_model
from quantswap.train.config import FinetuneConfig

__all__ = ["Parent", "build_parent", "build_student", "build_teacher", "load_weights"]

_logger = logging.getLogger(__name__)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as err:
            raise ValueError(f"{path} is not a readable safetensors file ({err}); pass a file written by "
                             "safetensors.torch.save_file, or --weights none") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a weights-only torch checkpoint ({reason[:200]}); save a state_dict, or "
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


def weights_file(path: str | os.PathLike) -> Path:
    """The weights file ``path`` names: a file; a float checkpoint folder, or a float run's folder (its
    ``model/``; a run of quantswap 0.1 kept ``model.safetensors`` beside ``last.pt``).

    Example:
        >>> weights_file("runs/nowhere")
        Traceback (most recent call last):
        ...
        FileNotFoundError: weights file runs/nowhere does not exist
    """
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        return path
    for folder in (path, path / "model"):
        if (folder / CONFIG_NAME).is_file():
            if read_config(folder).quantization is not None:
                raise ValueError(f"{folder} is a quantized checkpoint, whose file holds packed codes, not float "
                                 "weights: continue its run with --resume, or start from the float weights it was "
                                 "made from")
            return folder / WEIGHTS_NAME  # a float checkpoint (quantswap finetune --method none)
    if (path / WEIGHTS_NAME).is_file():
        return path / WEIGHTS_NAME
    raise FileNotFoundError(f"{path} is a folder without weights: pass a .safetensors file, a torch state dict, "
                            "a float run's folder or a run's last.pt")


def load_weights(model: nn.Module, path: str | os.PathLike, *, new_head_ok: bool = False) -> bool:
    """Load a local safetensors file, a torch checkpoint with ``weights_only=True`` (never a full unpickle; a run's
    ``last.pt`` gives its model), or a float run's folder (:func:`weights_file`).

    With ``new_head_ok``, a classifier of another class count (ImageNet weights for a 10-class task)
    is skipped and the model's fresh head kept. Returns whether the file's head was loaded.
    """
    path = weights_file(path)
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
        parent = Parent(model, True, not _replace_head(model, num_classes))
    else:
        model = build_model(cfg.model, num_classes=num_classes)
        parent = Parent(model, True, load_weights(model, weights, new_head_ok=True))
    if not parent.head:
        _logger.info("%s: pretrained weights with a new %d-class head (no distillation from it)", cfg.model, num_classes)
    return parent


def build_student(cfg: FinetuneConfig, parent: nn.Module) -> nn.Module:
    """The model the run trains: a copy of the parent swapped with the run's method (or the parent
    itself, copied, for ``method="none"``)."""
    return copy.deepcopy(parent) if cfg.is_float else swap(parent, cfg.quant_config())


def _pretrained_teacher(cfg: FinetuneConfig) -> nn.Module:
    """``cfg.teacher`` with its builder's pretrained weights and head (ReActNet's ImageNet ResNet-34)."""
    try:
        return build_model(cfg.teacher, weights="DEFAULT")
    except Exception as err:
        raise ValueError(f"the pretrained weights of the teacher {cfg.teacher} could not be fetched ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); offline, pass a local file: --teacher-weights PATH") from None


def build_teacher(cfg: FinetuneConfig, parent: Parent, num_classes: int, device: torch.device) -> nn.Module | None:
    """The frozen model the run distils from, or ``None`` without distillation.

    Distillation is on by default when the parent's head was pretrained for this task (a quantized
    run); ``cfg.teacher`` names another model (with ``cfg.teacher_weights``).
    """
    distill = cfg.distill if cfg.distill is not None else (parent.head and not cfg.is_float)
    if not distill:
        return None
    if cfg.teacher:
        teacher = _pretrained_teacher(cfg) if (cfg.teacher_weights or "").upper() == "DEFAULT" else (
            build_model(cfg.teacher, num_classes=num_classes))
        if cfg.teacher_weights and cfg.teacher_weights.upper() not in ("DEFAULT", "NONE"):
            load_weights(teacher, cfg.teacher_weights)
        teacher = teacher.to(device)
    elif not parent.head:
        raise ValueError("--distill needs a teacher trained for this task: the parent's weights (--weights) "
                         f"have {'a new' if parent.pretrained else 'no pretrained'} {num_classes}-class head. Fine-tune "
                         "a FP parent first (--method none) and pass its model.safetensors, or set --teacher")
    else:
        teacher = parent.model
    return teacher.eval().requires_grad_(False)
