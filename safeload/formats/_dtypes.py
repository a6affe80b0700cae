"""The one table of element types the readers accept, keyed by torch dtype name.

An allowlist: a dtype name that is not in :data:`DTYPES` is refused, so a hostile header can
never make us guess an item size. NumPy types for bfloat16 and the float8 family come from
``ml_dtypes`` so the numpy framework works without torch; torch dtypes are looked up lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from safeload.errors import FormatError

__all__ = ["DTYPES", "SAFETENSORS_DTYPES", "DType", "lookup", "torch_dtype"]


@dataclass(frozen=True, slots=True)
class DType:
    """One element type: its torch name, byte size and NumPy equivalent (if NumPy has one)."""

    name: str
    itemsize: int
    numpy: np.dtype[Any] | None

    def require_numpy(self) -> np.dtype[Any]:
        if self.numpy is None:
            raise FormatError(
                f"dtype {self.name} has no NumPy equivalent",
                rule="formats.dtype",
                detail="load it with framework='torch'",
            )
        return self.numpy


def _np(t: Any) -> np.dtype[Any]:
    dt: np.dtype[Any] = np.dtype(t).newbyteorder("<")
    return dt


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float64", 8, _np(np.float64)),
        DType("float32", 4, _np(np.float32)),
        DType("float16", 2, _np(np.float16)),
        DType("bfloat16", 2, _np(ml_dtypes.bfloat16)),
        DType("float8_e4m3fn", 1, _np(ml_dtypes.float8_e4m3fn)),
        DType("float8_e5m2", 1, _np(ml_dtypes.float8_e5m2)),
        DType("float8_e4m3fnuz", 1, _np(ml_dtypes.float8_e4m3fnuz)),
        DType("float8_e5m2fnuz", 1, _np(ml_dtypes.float8_e5m2fnuz)),
        DType("float8_e8m0fnu", 1, _np(ml_dtypes.float8_e8m0fnu)),
        DType("complex128", 16, _np(np.complex128)),
        DType("complex64", 8, _np(np.complex64)),
        DType("complex32", 4, None),
        DType("int64", 8, _np(np.int64)),
        DType("int32", 4, _np(np.int32)),
        DType("int16", 2, _np(np.int16)),
        DType("int8", 1, _np(np.int8)),
        DType("uint64", 8, _np(np.uint64)),
        DType("uint32", 4, _np(np.uint32)),
        DType("uint16", 2, _np(np.uint16)),
        DType("uint8", 1, _np(np.uint8)),
        DType("bool", 1, _np(np.bool_)),
        # Quantized storages hold plain integers; the quantizer parameters travel separately.
        DType("qint8", 1, _np(np.int8)),
        DType("quint8", 1, _np(np.uint8)),
        DType("qint32", 4, _np(np.int32)),
    )
}

# safetensors header names -> torch names.
SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def lookup(name: str) -> DType:
    """The :class:`DType` for a torch dtype name, or a refusal naming the unknown type."""
    try:
        return DTYPES[name]
    except KeyError:
        raise FormatError(
            f"unknown or unsupported tensor dtype {name!r}",
            rule="formats.dtype",
            detail=f"known dtypes: {', '.join(sorted(DTYPES))}",
        ) from None


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` for an allowlisted name (torch imported lazily)."""
    import torch

    lookup(name)
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise FormatError(f"this torch has no dtype {name!r}", rule="formats.dtype")
    return dt
