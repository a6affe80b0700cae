"""Conversion: pickle checkpoints to safetensors (and, through the sandbox, models to ONNX).

``to_safetensors`` reads with ``safeload.load`` (nothing in the input runs) and returns a
:class:`ConversionReport` only after the output was read back and compared tensor by tensor.
``export_onnx`` lives in its own module and is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from safeload.convert._report import ConversionReport
from safeload.convert._safetensors import to_safetensors

if TYPE_CHECKING:
    from safeload.convert._onnx_export import export_onnx

__all__ = ["ConversionReport", "export_onnx", "to_safetensors"]


def __getattr__(name: str) -> Any:
    # PEP 562: the ONNX exporter (and torch.onnx behind it) loads only when asked for.
    if name == "export_onnx":
        value = importlib.import_module("safeload.convert._onnx_export").export_onnx
        globals()[name] = value
        return value
    raise AttributeError(f"module 'safeload.convert' has no attribute {name!r}")
