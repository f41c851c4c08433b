"""Quantized layers, quantizers and the blocks structural rewrites insert."""

from quantswap.nn.blocks import ShiftedReLU as ShiftedReLU
from quantswap.nn.blocks import bireal_shortcut as bireal_shortcut
from quantswap.nn.layers import QuantConv2d as QuantConv2d
from quantswap.nn.layers import QuantLayer as QuantLayer
from quantswap.nn.layers import QuantLinear as QuantLinear
from quantswap.nn.layers import is_quantized_layer as is_quantized_layer
from quantswap.nn.quantizers import BinaryWeightQuantizer as BinaryWeightQuantizer
from quantswap.nn.quantizers import EDEScheduled as EDEScheduled
from quantswap.nn.quantizers import EDESignActivation as EDESignActivation
from quantswap.nn.quantizers import ScheduledQuantizer as ScheduledQuantizer
from quantswap.nn.quantizers import SignActivation as SignActivation

__all__ = [
    "BinaryWeightQuantizer",
    "EDEScheduled",
    "EDESignActivation",
    "QuantConv2d",
    "QuantLayer",
    "QuantLinear",
    "ScheduledQuantizer",
    "ShiftedReLU",
    "SignActivation",
    "bireal_shortcut",
    "is_quantized_layer",
]
