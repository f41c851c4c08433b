"""Exporting swapped models for other runtimes: ONNX files with 2-bit weights (:func:`export_onnx`).

Example:
    >>> import quantswap
    >>> from torchvision.models import resnet18
    >>> tnn = quantswap.ternarize(resnet18(num_classes=10), expansion=2)
    >>> export = quantswap.export_onnx(tnn, getfixture("tmp_path") / "tnn.onnx", input_size=(3, 32, 32))
    >>> export.int2_tensors, export.int2_weights, export.input_size
    (38, 22315008, (3, 32, 32))
"""

from quantswap.export.onnx import OPSET as OPSET
from quantswap.export.onnx import OnnxExport as OnnxExport
from quantswap.export.onnx import OnnxExportError as OnnxExportError
from quantswap.export.onnx import export_onnx as export_onnx

__all__ = ["OPSET", "OnnxExport", "OnnxExportError", "export_onnx"]
