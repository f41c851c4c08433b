"""The typed options of a fine-tuning run; the CLI's flags and a recipe's keys are exactly these fields.

Example:
    >>> from quantswap.train.config import FinetuneConfig
    >>> cfg = FinetuneConfig.from_dict({"model": "resnet18", "method": "irnet", "epochs": 2})
    >>> cfg.epochs, cfg.optimizer
    (2, 'adamw')
    >>> FinetuneConfig.from_dict({"epoch": 2})
    Traceback (most recent call last):
    ...
    ValueError: unknown option(s) ['epoch'] (did you mean 'epochs'?); the options are the flags of `quantswap finetune --help`
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any

import yaml

from quantswap._registry import is_method, list_methods
from quantswap.config import QuantConfig, config_for

__all__ = ["FinetuneConfig", "load_recipe", "FLOAT_METHOD", "STAGE_OPTIONS"]

FLOAT_METHOD = "none"  # ``--method none``: train the float model itself (a parent)
#: The schedules of timm's ``create_scheduler_v2``.
SCHEDULES = ("constant", "cosine", "multistep", "plateau", "poly", "rsqrt", "step", "tanh")
_INF = math.inf
#: Numeric options: (kind, lowest, highest) — checked before anything runs or is written.
_RANGES: dict[str, tuple[type, float, float]] = {
    "epochs": (int, 1, _INF), "batch_size": (int, 1, _INF), "num_classes": (int, 1, 100_000),
    "image_size": (int, 8, 2048), "train_subset": (int, 1, _INF), "val_subset": (int, 1, _INF),
    "max_steps": (int, 1, _INF), "save_every": (int, 0, _INF), "workers": (int, 0, 256), "seed": (int, 0, 2**63 - 1),
    "cycle_limit": (int, 1, _INF), "lr": (float, 0, _INF), "min_lr": (float, 0, _INF), "momentum": (float, 0, 1),
    "weight_decay": (float, 0, _INF), "warmup_epochs": (float, 0, _INF), "cycle_mul": (float, 0, _INF),
    "decay_rate": (float, 0, _INF), "label_smoothing": (float, 0, 1), "distill_alpha": (float, 0, 1),
    "clip_grad": (float, 0, _INF), "recalibrate_bn": (int, 0, _INF),
}


#: What a stage may set (see ``FinetuneConfig.stages``): how it trains, not what or where.
STAGE_OPTIONS = frozenset({
    "name", "epochs", "max_steps", "lr", "min_lr", "optimizer", "momentum", "weight_decay", "schedule", "warmup_epochs",
    "cycle_mul", "cycle_limit", "decay_milestones", "decay_rate", "label_smoothing", "clip_grad", "distill_alpha",
    "method_options",
})


def _check_number(name: str, value: Any) -> None:
    """``value`` is a finite number of the option's kind within its range (``None`` is the default)."""
    if value is None and _DEFAULTS[name] is None:  # an option whose default is None may stay unset
        return
    kind, low, high = _RANGES[name]
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (kind is int and not isinstance(value, int)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a finite number'}, got {value!r}")
    if not low <= value <= high or (name == "lr" and value == 0):
        raise ValueError(f"{name} must be {'positive' if name == 'lr' else f'in [{low:g}, {high:g}]'}, got {value!r}")


@dataclasses.dataclass
class FinetuneConfig:
    """Everything a run needs. ``method="none"`` trains the float model itself (a parent)."""

    model: str = "resnet18"
    method: str = "irnet"
    activations: bool | None = None
    expansion: int | None = None
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the method config's own fields
    skip_first: bool = True
    skip_last: bool = True
    skip_depthwise: bool = True  # keep depthwise convs real (QuantConfig.skip_depthwise)
    include: list[str] | None = None  # glob patterns of layer names to swap (default: every eligible layer)
    exclude: list[str] = dataclasses.field(default_factory=list)  # glob patterns of layer names kept real
    weights: str = "DEFAULT"  # DEFAULT (the builder's pretrained weights), none, or a local file
    num_classes: int | None = None  # default: the dataset's
    data: str = "fashion-mnist"
    data_root: str | None = None
    image_size: int | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # any timm scheduler: cosine, step, multistep, plateau, ...
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    cycle_mul: float = 1.0  # > 1 with cycle_limit > 1: SGDR warm restarts (McDonnell)
    cycle_limit: int = 1
    decay_milestones: list[int] = dataclasses.field(default_factory=list)
    decay_rate: float = 0.1
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    distill: bool | None = None  # default: on when the parent has pretrained weights
    teacher: str | None = None  # default: the parent itself; or a model name / local weights via teacher_weights
    teacher_weights: str | None = None
    distill_alpha: float = 1.0  # weight of the distribution loss; 1 - alpha goes to the labels
    eval_parent: bool = True  # validate the float parent too (the table's first row)
    recalibrate_bn: int = 0  # re-estimate BatchNorm statistics on this many training batches after the swap (0: off)
    output: str = "runs/finetune"
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    compile: bool = False  # torch.compile the training model (the first steps pay the compilation)
    sync_bn: bool = False
    workers: int = 0
    max_steps: int | None = None
    save_every: int = 200  # steps between mid-epoch checkpoints (0: only at epoch ends)
    fp_dtype: str = "float32"  # real-valued layers of the final packed checkpoint
    push_to_hub: str | None = None
    #: Train in stages, one after another in one run folder: each a mapping of STAGE_OPTIONS over the
    #: options above (``method_options`` merged), e.g. W32/A1 first (``method_options: {weights: false}``),
    #: then W1/A1 from it. The final model is the last stage's. Recipes only (no flag).
    stages: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.method != FLOAT_METHOD and not is_method(self.method):
            raise ValueError(f"unknown method {self.method!r}; choose {FLOAT_METHOD} (the float model) or one of "
                             f"{', '.join(list_methods())}")
        if not isinstance(self.method_options, dict):
            raise TypeError(f"method_options is a mapping of the method config's options, got {self.method_options!r}")
        for name in _RANGES:
            _check_number(name, getattr(self, name))
        self._check_names()
        self._check_lists()
        from quantswap.checkpoint_config import FP_DTYPES

        if self.fp_dtype not in FP_DTYPES:  # checked now, not when the finished run saves
            raise ValueError(f"fp_dtype {self.fp_dtype!r} is not a dtype of the checkpoint's real-valued tensors; "
                             f"choose one of {', '.join(FP_DTYPES)}")
        if self.stages is not None:
            self._check_stages()
        elif not self.is_float:
            self.quant_config()  # the method's own checks, before anything runs

    def _check_lists(self) -> None:
        milestones = self.decay_milestones
        if not isinstance(milestones, list) or not all(
                isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones):
            raise ValueError(f"decay_milestones is a list of epochs (whole numbers from 0), got {milestones!r}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --output and --overwrite replaces it: pass one of them")

    def check_ends_quantized(self) -> None:
        """A run must end with quantized weights (a W32/A1 model has no compressed checkpoint to save)."""
        if not self.is_float and not self.stage_configs()[-1].quant_config().weights:
            raise ValueError("weights=False (W32/A1) is a first stage: list it in `stages` before a stage with binary "
                             "weights, e.g. stages: [{epochs: 2, method_options: {weights: false}}, {epochs: 2}]")

    def _check_stages(self) -> None:
        """Each stage's options are known and valid; the stages train one swapped model, whose weights may
        only go from real (W32/A1) to quantized, and the last stage's are quantized."""
        if not isinstance(self.stages, list) or not self.stages or not all(isinstance(s, dict) for s in self.stages):
            raise ValueError(f"stages is a non-empty list of mappings of per-stage options, got {self.stages!r}")
        for index, stage in enumerate(self.stages):
            unknown = sorted(set(stage) - STAGE_OPTIONS)
            if unknown:
                hints = [difflib.get_close_matches(k, sorted(STAGE_OPTIONS), n=1) for k in unknown]
                hint = "".join(f" (did you mean {h[0]!r}?)" for h in hints if h)
                raise ValueError(f"stage {index + 1}: unknown or run-wide option(s) {unknown}{hint}; a stage sets "
                                 f"{', '.join(sorted(STAGE_OPTIONS))}")
        for index, stage in enumerate(self.stages):
            if "name" in stage and not isinstance(stage["name"], str):
                raise ValueError(f"stage {index + 1}: name is a text, got {stage['name']!r}")
        configs = []
        for index, stage in enumerate(self.stages):  # each checked like a run of its own
            try:
                configs.append(self._stage_config(stage))
            except (ValueError, TypeError) as err:
                raise type(err)(f"stage {index + 1}: {err}") from None
        if self.is_float:
            return
        quant = [c.quant_config() for c in configs]
        for index, (before, after) in enumerate(zip(quant, quant[1:], strict=False)):
            if dataclasses.replace(before, weights=True) != dataclasses.replace(after, weights=True) or (
                    before.weights and not after.weights):
                differ = ", ".join(f"{f.name}: {getattr(before, f.name)!r} -> {getattr(after, f.name)!r}"
                                   for f in dataclasses.fields(before) if f.name != "weights"
                                   and getattr(before, f.name) != getattr(after, f.name))
                raise ValueError(f"stages {index + 1} and {index + 2} swap the model differently ({before.label} -> "
                                 f"{after.label}{'; ' + differ if differ else ''}): stages train one model, whose "
                                 "weights may only go from real (weights: false) to quantized")
        if not quant[-1].weights:
            raise ValueError("the last stage keeps the weights real (W32/A1); add a stage with binary weights after it")

    def stage_configs(self) -> list[FinetuneConfig]:
        """One config per stage: the run's options with the stage's over them (the run itself if it has no
        stages).

        Example:
            >>> cfg = FinetuneConfig(method="react", lr=1e-3, stages=[
            ...     {"name": "activations", "epochs": 2, "weight_decay": 1e-5, "method_options": {"weights": False}},
            ...     {"epochs": 3}])
            >>> [(c.epochs, c.lr, c.weight_decay, c.quant_config().label) for c in cfg.stage_configs()]
            [(2, 0.001, 1e-05, 'react W32/A1'), (3, 0.001, 0.0, 'react W1/A1')]
        """
        return [self] if self.stages is None else [self._stage_config(stage) for stage in self.stages]

    def _stage_config(self, stage: dict[str, Any]) -> FinetuneConfig:
        options = {k: v for k, v in stage.items() if k != "name"}
        options["method_options"] = {**self.method_options, **(options.get("method_options") or {})}
        return dataclasses.replace(self, stages=None, **options)

    def stage_names(self) -> list[str]:
        """The stages' names (``name``, else ``stage N``); one empty name for a run without stages."""
        if self.stages is None:
            return [""]
        return [str(stage.get("name") or f"stage {i + 1}") for i, stage in enumerate(self.stages)]

    def training_summary(self) -> str:
        """How the run trains, in words (a model card's "training" row).

        Example:
            >>> FinetuneConfig(method="irnet", epochs=2).training_summary()
            'irnet W1/A1: 2 epochs, adamw, lr 0.001, weight decay 0, cosine schedule'
        """
        parts = []
        for name, cfg in zip(self.stage_names(), self.stage_configs(), strict=True):
            what = "FP" if cfg.is_float else cfg.quant_config().label
            cut = f" (max_steps {cfg.max_steps})" if cfg.max_steps is not None else ""
            parts.append(f"{name + ': ' if name else ''}{what}: {cfg.epochs} epoch{'s' * (cfg.epochs != 1)}{cut}, "
                         f"{cfg.optimizer}, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, {cfg.schedule} schedule")
        return "; then ".join(parts)

    def _check_names(self) -> None:
        from timm.optim import list_optimizers

        from quantswap.hub import check_repo_id

        if self.optimizer not in list_optimizers():
            close = difflib.get_close_matches(str(self.optimizer), list_optimizers(), n=1)
            raise ValueError(f"unknown optimizer {self.optimizer!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                             "see timm.optim.list_optimizers()")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.push_to_hub is not None:
            check_repo_id(self.push_to_hub)
        if Path(self.output).is_file():
            raise ValueError(f"--output {self.output} is a file; the run needs a folder")

    @property
    def input_px(self) -> int:
        """The input size trained at: ``image_size``, else the dataset's (32; an image folder: 224)."""
        return self.image_size or (224 if self.data.startswith("imagefolder") else 32)

    @property
    def is_float(self) -> bool:
        """Whether the run trains the float model itself (``method="none"``)."""
        return self.method == FLOAT_METHOD

    def quant_config(self) -> QuantConfig:
        """The swap's config, built and checked by :func:`quantswap.config_for`.

        Example:
            >>> FinetuneConfig(method="ternary", expansion=2).quant_config().label
            'ternary t=2'
        """
        options = {"skip_first": self.skip_first, "skip_last": self.skip_last, "skip_depthwise": self.skip_depthwise,
                   "include": self.include,
                   "exclude": self.exclude, **self.method_options}
        for name in ("activations", "expansion"):  # None: the method's default (and no such option needed)
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        return config_for(self.method, **options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            hints = [difflib.get_close_matches(k, known, n=1) for k in unknown]
            hint = "".join(f" (did you mean {h[0]!r}?)" for h in hints if h)
            raise ValueError(f"unknown option(s) {unknown}{hint}; the options are the flags of "
                             "`quantswap finetune --help`")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe's options (YAML mapping; keys use ``_`` or ``-``), checked against :class:`FinetuneConfig`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"recipe {path} is a folder; pass a recipe file (.yaml), e.g. one of recipes/")
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist; see recipes/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a mapping of option: value")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    try:
        FinetuneConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"recipe {path}: {err}") from None
    return data
