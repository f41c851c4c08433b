"""quantswap: binarize or ternarize a pretrained PyTorch vision model in one line.

Example:
    >>> import torch, quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(), method="irnet")
    >>> bnn(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 1000])
"""

from quantswap import kernels as kernels
from quantswap._registry import is_method as is_method
from quantswap._registry import list_methods as list_methods
from quantswap._registry import list_variants as list_variants
from quantswap._registry import register_method as register_method
from quantswap._registry import unregister_method as unregister_method
from quantswap.api import SwapReport as SwapReport
from quantswap.api import binarize as binarize
from quantswap.api import get_swap_report as get_swap_report
from quantswap.api import quantize_weights as quantize_weights
from quantswap.api import set_progress as set_progress
from quantswap.api import swap as swap
from quantswap.api import ternarize as ternarize
from quantswap.calibration import recalibrate_bn as recalibrate_bn
from quantswap.checkpoint import CheckpointError as CheckpointError
from quantswap.checkpoint import CheckpointNotFoundError as CheckpointNotFoundError
from quantswap.checkpoint import CheckpointSize as CheckpointSize
from quantswap.checkpoint import save_pretrained as save_pretrained
from quantswap.config import QuantConfig as QuantConfig
from quantswap.config import Variant as Variant
from quantswap.config import config_for as config_for
from quantswap.config import config_from_dict as config_from_dict
from quantswap.export import OnnxExport as OnnxExport
from quantswap.export import OnnxExportError as OnnxExportError
from quantswap.export import export_onnx as export_onnx
from quantswap.frozen import FreezeReport as FreezeReport
from quantswap.frozen import freeze as freeze
from quantswap.frozen import get_freeze_report as get_freeze_report
from quantswap.frozen import is_frozen as is_frozen
from quantswap.fx.tracer import UntraceableModelError as UntraceableModelError
from quantswap.fx.tracer import register_leaf_module as register_leaf_module
from quantswap.hub import download as download
from quantswap.hub import from_pretrained as from_pretrained
from quantswap.hub import push_to_hub as push_to_hub
from quantswap.methods import AdaBinConfig as AdaBinConfig
from quantswap.methods import BiRealConfig as BiRealConfig
from quantswap.methods import IRNetConfig as IRNetConfig
from quantswap.methods import McDonnellConfig as McDonnellConfig
from quantswap.methods import ReActConfig as ReActConfig
from quantswap.methods import ReCUConfig as ReCUConfig
from quantswap.methods import TernaryConfig as TernaryConfig
from quantswap.methods import XnorConfig as XnorConfig
from quantswap.summary import ModelSummary as ModelSummary
from quantswap.summary import summary as summary
from quantswap.train import FinetuneConfig as FinetuneConfig
from quantswap.train import finetune as finetune
from quantswap.version import __version__ as __version__

__all__ = [
    "AdaBinConfig",
    "BiRealConfig",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointSize",
    "FinetuneConfig",
    "FreezeReport",
    "IRNetConfig",
    "McDonnellConfig",
    "ModelSummary",
    "OnnxExport",
    "OnnxExportError",
    "QuantConfig",
    "ReActConfig",
    "ReCUConfig",
    "SwapReport",
    "TernaryConfig",
    "UntraceableModelError",
    "Variant",
    "XnorConfig",
    "__version__",
    "binarize",
    "config_for",
    "config_from_dict",
    "download",
    "export_onnx",
    "finetune",
    "freeze",
    "from_pretrained",
    "get_freeze_report",
    "get_swap_report",
    "is_frozen",
    "is_method",
    "kernels",
    "list_methods",
    "list_variants",
    "push_to_hub",
    "recalibrate_bn",
    "register_leaf_module",
    "register_method",
    "quantize_weights",
    "save_pretrained",
    "set_progress",
    "summary",
    "swap",
    "ternarize",
    "unregister_method",
]
