"""The built-in methods; importing this package registers them (in this order: the order of tables)."""

from quantswap.methods.xnor import XnorConfig as XnorConfig  # isort: skip
from quantswap.methods.irnet import IRNetConfig as IRNetConfig  # isort: skip
from quantswap.methods.bireal import BiRealConfig as BiRealConfig  # isort: skip
from quantswap.methods.mcdonnell import McDonnellConfig as McDonnellConfig  # isort: skip
from quantswap.methods.ternary import TernaryConfig as TernaryConfig  # isort: skip
from quantswap.methods.react import ReActConfig as ReActConfig  # isort: skip
from quantswap.methods.recu import ReCUConfig as ReCUConfig  # isort: skip
from quantswap.methods.adabin import AdaBinConfig as AdaBinConfig  # isort: skip

__all__ = ["AdaBinConfig", "BiRealConfig", "IRNetConfig", "McDonnellConfig", "ReActConfig", "ReCUConfig", "TernaryConfig", "XnorConfig"]
