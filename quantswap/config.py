"""Typed configuration of a swap, and everything quantswap knows about a method.

Every method has one ``@dataclass`` config, a subclass of :class:`QuantConfig`, registered under
its method name (see :mod:`quantswap._registry`). The class is the one place a method's facts live:
its name, paper, citation and authors' code, its kind (binary or ternary), its default activations,
the graph passes it adds to a swap, and the variants that tests and benchmarks cover. An instance
holds everything needed to redo a swap on a freshly built base model, so it is what a checkpoint's
``config.json`` stores: ``to_dict`` and :func:`config_from_dict` round-trip it, resolving the type
only through the method registry. :func:`config_for` is the one factory, with the one check of
unknown options, that the API, the CLI, checkpoints and benchmarks build configs with.

Example:
    >>> from quantswap.config import config_for, config_from_dict
    >>> cfg = config_for("irnet", activations=False, exclude=["layer4.*"])
    >>> cfg.to_dict()["method"], cfg.label, cfg.paper
    ('irnet', 'irnet W1/A32', 'IR-Net (Qin et al., CVPR 2020)')
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
    >>> config_for("irnet", t_mn=0.2)
    Traceback (most recent call last):
    ...
    TypeError: unknown option(s) ['t_mn'] for method 'irnet' (did you mean 't_min'?); its options are ['activations', 'exclude', 'include', 'keep_downsample', 'skip_depthwise', 'skip_first', 'skip_last', 't_max', 't_min', 'weights']
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from quantswap.nn.quantizers import RealWeight

if TYPE_CHECKING:
    from quantswap.fx.pipeline import SwapContext

__all__ = ["QuantConfig", "Variant", "config_for", "config_from_dict", "CONFIG_VERSION", "KINDS"]

#: 2: skip_depthwise (version 1 configs quantized depthwise convs); 3: block_residual (the Bi-Real layout's
#: methods kept a ResNet block's own residual before it, as they do by default)
CONFIG_VERSION = 3
KINDS = ("binary", "ternary")

#: A step of a swap: reads and edits the :class:`~quantswap.fx.pipeline.SwapContext` in place.
GraphPass = Callable[["SwapContext"], None]


def _as_patterns(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    try:
        patterns = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of fnmatch patterns such as ['layer4.*'], got {value!r}") from None
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{name} must hold strings (fnmatch patterns on qualified names), got {value!r}")
    return patterns


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named set of a method's options that the tests (and, with ``benchmark``, the benchmarks) cover.

    Example:
        >>> from quantswap.config import Variant
        >>> Variant("irnet-w1a32", "irnet", {"activations": False}).config().label
        'irnet W1/A32'
    """

    name: str
    method: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    benchmark: bool = True  # a row of the accuracy benchmark

    def config(self) -> QuantConfig:
        return config_for(self.method, **self.options)


@dataclasses.dataclass
class QuantConfig(abc.ABC):
    """Options shared by every method. Subclasses add the method's own options and facts.

    Args:
        activations: quantize the inputs of swapped layers to ±1 (W1/A1). ``None`` takes the
            method's default; weight-only methods refuse ``True``.
        weights: quantize the weights (the default). ``False`` keeps them real with binary
            activations (W32/A1): the first stage of two-step training, which
            :func:`quantswap.quantize_weights` ends.
        skip_first: keep the first Conv/Linear layers (those with no Conv/Linear upstream) real.
        skip_last: keep the last Conv/Linear layers (those with no Conv/Linear downstream) real.
        skip_depthwise: keep depthwise convs (one input channel per filter, as in MobileNet and
            EfficientNet) real: quantizing their 9 weights per filter cost a MobileNetV2 transfer 2.3
            (ternary) to 14.5 (W1/A32) top-1 points for 0.22 MB (docs/methods.md#depthwise-convolutions).
            ``False`` quantizes them.
        include: if given, only layers whose qualified name matches one of these fnmatch patterns
            are candidates.
        exclude: layers whose qualified name matches one of these patterns stay real.
    """

    # -- the method's facts (class attributes; a subclass sets them) ------------------------------
    method: ClassVar[str] = ""
    kind: ClassVar[str] = "binary"  # "binary" or "ternary": which public verb makes it
    paper: ClassVar[str] = ""  # "IR-Net (Qin et al., CVPR 2020)": cards, docs, the CLI
    citation: ClassVar[str] = ""  # authors, title, venue
    code: ClassVar[str] = ""  # the authors' reference implementation
    default_activations: ClassVar[bool] = False
    supports_binary_activations: ClassVar[bool] = False
    #: the option sets tests and benchmarks cover; every registered method needs at least one
    variants: ClassVar[tuple[Variant, ...]] = ()

    activations: bool | None = None
    weights: bool = True
    skip_first: bool = True
    skip_last: bool = True
    skip_depthwise: bool = True
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.include = _as_patterns(self.include, "include")
        self.exclude = _as_patterns(self.exclude, "exclude") or ()
        if self.activations is None:
            self.activations = self.default_activations
        if not isinstance(self.activations, bool):
            raise TypeError(f"activations must be True, False or None, got {self.activations!r}")
        if self.activations and not self.supports_binary_activations:
            from quantswap._registry import methods_with_binary_activations

            raise ValueError(
                f"method {self.method!r} quantizes weights only; drop activations=True "
                f"or pick a W1/A1 method ({', '.join(methods_with_binary_activations())})"
            )

        for name in ("weights", "skip_first", "skip_last", "skip_depthwise"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not self.weights and not self.activations:
            raise ValueError("weights=False keeps the weights real, so it needs binary activations (W32/A1): pass "
                             "activations=True with a W1/A1 method, or drop weights=False")

    # -- hooks each method implements -------------------------------------------------------------

    @abc.abstractmethod
    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        """A fresh module mapping the layer's latent weight to its quantized weight."""

    def input_quantizer(self, layer: nn.Module) -> nn.Module | None:
        """A fresh module quantizing ``layer``'s input, or ``None`` for real activations."""
        return None

    def layer_weight_quantizer(self, layer: nn.Module) -> nn.Module:
        """What the swap gives ``layer``: :meth:`weight_quantizer`, or a :class:`~quantswap.nn.quantizers.RealWeight`
        when ``weights=False``."""
        return self.weight_quantizer(layer) if self.weights else RealWeight()

    def activation_replacement(self) -> Callable[[], nn.Module] | None:
        """Factory for the module that replaces each ReLU feeding a quantized layer, or ``None``."""
        return None

    def keep_real(self, layer: nn.Module) -> bool:
        """Layers the method keeps real by design (e.g. Bi-Real's downsample convs)."""
        return False

    def graph_passes(self) -> Sequence[GraphPass]:
        """The method's own structural passes, run after the layers are swapped (Bi-Real's shortcuts)."""
        return ()

    # -- how the method is named --------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """``"W1/A1"``, ``"W1/A32"``, ``"W32/A1"``; a ternary config says ``"t=2"``."""
        return f"W{1 if self.weights else 32}/A{1 if self.activations else 32}"

    @property
    def label(self) -> str:
        """Method and precision, as benchmark tables name a variant: ``"irnet W1/A1"``."""
        return f"{self.method} {self.precision}"

    @property
    def tag(self) -> str:
        """The precision as a Hub tag: ``"W1/A1"``; a ternary config says ``"ternary-t2"``."""
        return self.precision

    @property
    def description(self) -> str:
        """The precision spelled out for a model card: ``"W1/A1"``, ``"ternary t=2 (W2x2/A32)"``."""
        return self.precision

    # -- serialization ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: ``{"method": ..., "version": ..., <fields>}`` (``weights`` only when False, so
        every quantized checkpoint's config reads as it did before the option existed)."""
        data: dict[str, Any] = {"method": self.method, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "weights" or not value:
                data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


def config_for(method: str, **options: Any) -> QuantConfig:
    """The config of a registered ``method`` with ``options``: the one place options are checked.

    Unknown options raise ``TypeError`` naming the method's options (with a did-you-mean hint);
    values are checked by the config's own ``__post_init__``.
    """
    from quantswap._registry import get_config_class

    cls = get_config_class(method)
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(options) - set(known))
    if unknown:
        hints = [difflib.get_close_matches(k, known, n=1) for k in unknown]
        hint = "".join(f" (did you mean {h[0]!r}?)" for h in hints if h)
        raise TypeError(f"unknown option(s) {unknown} for method {method!r}{hint}; its options are {known}")
    for f in dataclasses.fields(cls):  # a number or a switch given as something else: say which, before the checks
        value = options.get(f.name)
        if f.name in options and value is not None and isinstance(f.default, (bool, int, float)):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (isinstance(f.default, bool) and not isinstance(value, bool)) or (
                    not isinstance(f.default, bool) and not number):
                kind = "True or False" if isinstance(f.default, bool) else "a number"
                raise TypeError(f"{f.name} must be {kind} (method {method!r}), got {value!r}")
    return cls(**options)


def _field_names(method: str) -> set[str]:
    from quantswap._registry import get_config_class

    return {f.name for f in dataclasses.fields(get_config_class(method))}


def config_from_dict(data: dict[str, Any]) -> QuantConfig:
    """Rebuild a config written by :meth:`QuantConfig.to_dict`; types resolve only through the registry."""
    if not isinstance(data, dict) or "method" not in data:
        raise ValueError(f"a quantswap config needs a 'method' key, got {data!r}")
    data = dict(data)
    version = data.pop("version", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ValueError(
            f"config version {version!r} is newer than this quantswap understands ({CONFIG_VERSION}); "
            "upgrade quantswap (pip install -U quantswap)"
        )
    method = data.pop("method")
    if version < 2:
        data.setdefault("skip_depthwise", False)  # what a version 1 config's swap did
    if version < 3 and "block_residual" in _field_names(method):
        data.setdefault("block_residual", True)  # what a version 1 or 2 config's swap built
    return config_for(method, **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
