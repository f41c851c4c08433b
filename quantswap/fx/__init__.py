"""torch.fx machinery: the tracer, dataflow analysis and the graph passes of a swap."""

from quantswap.fx.tracer import QuantswapTracer as QuantswapTracer
from quantswap.fx.tracer import UntraceableModelError as UntraceableModelError
from quantswap.fx.tracer import register_leaf_module as register_leaf_module
from quantswap.fx.tracer import trace_train_eval as trace_train_eval

__all__ = ["QuantswapTracer", "UntraceableModelError", "register_leaf_module", "trace_train_eval"]
