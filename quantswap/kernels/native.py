"""Building and loading the native CPU kernels, once, at first use: the packed W1/A1 ops
(``binary.cpp``) and the fused passes of the quantizers' training forward and backward
(``training.cpp``, used by :mod:`quantswap.functional`).

The C++ source is compiled by ``torch.utils.cpp_extension`` (with ninja and the system's C++
compiler) into PyTorch's extension cache (``$TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``), in a folder keyed by the sources, flags, PyTorch and the compiler
(:func:`library_name`), so it is built once per install and one log line says so while it builds. Where it cannot
be built (no compiler, no ninja, another CPU architecture) or ``QUANTSWAP_KERNELS=reference`` is
set, the ops keep their pure-PyTorch reference kernels and one warning says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import subprocess
import threading
import warnings
from pathlib import Path

import torch

import quantswap.kernels.ops  # noqa: F401 - the op schemas must exist before the library registers kernels

__all__ = ["KernelInfo", "info", "load", "ensure_loaded", "set_isa", "ISAS", "loaded", "built", "library_name"]

logger = logging.getLogger("quantswap")

SOURCES = [Path(__file__).with_name(name) for name in ("binary.cpp", "training.cpp")]
HEADERS = [Path(__file__).with_name("binary_kernels.h")]  # part of the build's key, not compiled alone
ISAS = ("portable", "avx2", "avx512-vpopcntdq", "neon")  # index = the native library's ISA level
_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]  # no FMA: bit-equal to the reference; no FP traps: selects vectorize


@dataclasses.dataclass(frozen=True)
class KernelInfo:
    """Which kernels the packed ops run on the CPU, and why.

    ``backend`` is ``"native"`` (the compiled C++ kernels) or ``"reference"`` (pure PyTorch);
    ``isa`` the instruction set the native kernels use; ``threads`` what ``torch.get_num_threads()``
    gives them; ``reason`` why the reference is used, if it is.
    """

    backend: str
    isa: str | None
    threads: int
    reason: str = ""
    library: str | None = None

    def __str__(self) -> str:
        if self.backend == "native":
            return f"native ({self.isa}, {self.threads} threads): {self.library}"
        return f"reference (pure PyTorch): {self.reason}"


_lock = threading.Lock()
_state: dict = {}


@contextlib.contextmanager
def _ninja_on_path():
    """cpp_extension runs ``ninja`` from PATH; the pip package's binary is not on it outside a venv's shell."""
    try:
        import ninja

        extra = ninja.BIN_DIR
    except (ImportError, AttributeError):
        extra = None
    old = os.environ.get("PATH", "")
    if extra:
        os.environ["PATH"] = os.pathsep.join([extra, old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


@contextlib.contextmanager
def _quiet_cpp_extension():
    """cpp_extension logs a warning about CUDA_HOME at import on CPU-only machines: not ours to show."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _compiler() -> str:
    """The C++ compiler cpp_extension will run (``$CXX``, else ``c++``), as its ``--version`` first line."""
    try:
        done = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "no compiler"
    return (done.stdout.splitlines() or ["unknown compiler"])[0]


def library_name() -> str:
    """``quantswap_kernels_<key>``: the build folder and library, keyed by the sources, the flags, torch and the
    compiler, so that two installs (or two versions) on one machine never rebuild each other's kernels."""
    key = hashlib.sha256()
    for part in (*(s.read_bytes() for s in (*SOURCES, *HEADERS)), " ".join(_FLAGS).encode(), torch.__version__.encode(),
                 _compiler().encode()):
        key.update(part)
    return f"quantswap_kernels_{key.hexdigest()[:12]}"


def _library_path() -> Path:
    with _quiet_cpp_extension():
        from torch.utils import cpp_extension

    name = library_name()
    return Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so"


def built() -> bool:
    """Whether the native kernels are loaded or built for this install already (a load is then fast)."""
    return "library" in _state or (os.environ.get("QUANTSWAP_KERNELS", "auto") != "reference"
                                   and _library_path().is_file())


def _build() -> str:
    with _quiet_cpp_extension():
        from torch.utils import cpp_extension

    name = library_name()
    library = _library_path()
    if not library.is_file():
        logger.warning("quantswap: building the native kernels (about 30 s, once per install) into %s", library.parent)
    with _ninja_on_path(), _quiet_cpp_extension():
        cpp_extension.load(name=name, sources=[str(s) for s in SOURCES], extra_cflags=_FLAGS,
                           extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    return str(library)


def load() -> KernelInfo:
    """Build (first time) and load the native kernels; never raises. Returns :func:`info`."""
    ensure_loaded()
    return info()


def ensure_loaded() -> None:
    """:func:`load` without building the report: cheap after the first call (the ops call it)."""
    if _state:
        return
    with _lock:
        if "library" not in _state and "reason" not in _state:
            if os.environ.get("QUANTSWAP_KERNELS", "auto") == "reference":
                _state["reason"] = "QUANTSWAP_KERNELS=reference is set"
            else:
                try:
                    _state["library"] = _build()
                except Exception as err:  # noqa: BLE001 - any build failure means: use the reference
                    _state["reason"] = f"the native kernels could not be built ({type(err).__name__}: {err})".strip()
            if "reason" in _state:
                warnings.warn(f"quantswap uses its pure-PyTorch reference kernels (packed layers about as fast as "
                              f"float layers, training a little slower): {_state['reason'][:600]}. Install a C++ "
                              f"compiler (g++) and ninja for the fast kernels", RuntimeWarning, stacklevel=4)


def loaded() -> bool:
    """Whether the native kernels are in use (building them at the first call)."""
    if not _state:
        ensure_loaded()
    return "library" in _state


def info() -> KernelInfo:
    """Which kernels the packed ops use now (does not build anything; see :func:`load`).

    Example:
        >>> from quantswap import kernels
        >>> kernels.info().backend in ("native", "reference")
        True
    """
    threads = torch.get_num_threads()
    if "library" in _state:
        return KernelInfo("native", ISAS[torch.ops.quantswap_native.isa()], threads, library=_state["library"])
    return KernelInfo("reference", None, threads, reason=_state.get("reason", "not loaded yet (quantswap.kernels.load())"))


def set_isa(isa: str | None) -> str:
    """Use at most ``isa`` (one of :data:`ISAS`; ``None``: the best the CPU has) in the native kernels.

    For tests and benchmarks; returns the instruction set now in use.
    """
    if load().backend != "native":
        raise RuntimeError(f"the native kernels are not loaded: {info().reason}")
    level = -1 if isa is None else ISAS.index(isa) if isa in ISAS else None
    if level is None:
        raise ValueError(f"unknown instruction set {isa!r}; choose one of {ISAS} or None")
    return ISAS[torch.ops.quantswap_native.set_isa(level)]
