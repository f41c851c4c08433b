"""The built-in methods; importing this package registers them."""

from quantswap.methods.bireal import BiRealConfig as BiRealConfig
from quantswap.methods.irnet import IRNetConfig as IRNetConfig
from quantswap.methods.mcdonnell import McDonnellConfig as McDonnellConfig
from quantswap.methods.ternary import TernaryConfig as TernaryConfig
from quantswap.methods.xnor import XnorConfig as XnorConfig

__all__ = ["BiRealConfig", "IRNetConfig", "McDonnellConfig", "TernaryConfig", "XnorConfig"]
