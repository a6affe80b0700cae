"""``.npy`` and ``.npz`` without pickle: the header is parsed by NumPy's own helpers, the data
becomes an array over the caller's buffer.

``allow_pickle`` is never turned on, and an object dtype (top level or inside a structured
dtype) is refused before any data is looked at: that is the one place an ``.npy`` can carry a
pickle. The header text is attacker-controlled; ``numpy.lib.format`` parses it with
``ast.literal_eval`` under a size cap, which evaluates literals only. An ``.npz`` goes through
the strict zip validator first, so its members cannot overlap or disagree with the directory.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from safeload.errors import (
    FormatError,
    LimitExceededError,
    UnsafeModelError,
    UnsupportedFormatError,
)
from safeload.formats._zip import ZipArchive
from safeload.policy import Limits

__all__ = ["NpyHeader", "parse_npy", "read_npy", "read_npz"]

_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10_000
"""numpy's own default ``max_header_size`` (``numpy.lib.format``): larger headers are refused."""


@dataclass(frozen=True, slots=True)
class NpyHeader:
    """A validated ``.npy`` header: the array's dtype, shape, order and where its data starts."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_npy(
    data: bytes | memoryview, *, limits: Limits, name: str = "", total: int | None = None
) -> NpyHeader:
    """Validate a ``.npy`` header and that the data that follows is exactly the array's size.

    ``total`` is the whole file's size when ``data`` holds only its first bytes.
    """
    path = name or None
    size = len(data) if total is None else total
    if bytes(data[:6]) != _MAGIC or len(data) < 10:
        raise FormatError("not a .npy file", path=path, rule="numpy.magic")
    major, minor = data[6], data[7]
    if (major, minor) == (1, 0):
        (hlen,) = struct.unpack_from("<H", data, 8)
        start = 10
    elif (major, minor) in ((2, 0), (3, 0)):
        if len(data) < 12:
            raise FormatError("truncated .npy header", path=path, rule="numpy.header")
        (hlen,) = struct.unpack_from("<I", data, 8)
        start = 12
    else:
        raise UnsupportedFormatError(
            f".npy format version {major}.{minor} is not supported", path=path, rule="numpy.version"
        )
    if hlen > _MAX_HEADER:  # before copying it: a 2.0 header may claim 4 GiB
        raise LimitExceededError(
            f".npy header of {hlen} bytes",
            path=path,
            rule="numpy.header",
            detail=f"numpy itself refuses headers over {_MAX_HEADER} bytes",
        )
    if start + hlen > len(data):
        raise FormatError("truncated .npy header", path=path, rule="numpy.header")
    fp = io.BytesIO(bytes(data[: start + hlen]))
    try:
        np.lib.format.read_magic(fp)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif major == 2:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:  # 3.0 is 2.0 with a UTF-8 header; numpy has no public reader for it
            raise UnsupportedFormatError(
                ".npy format version 3.0 is not supported", path=path, rule="numpy.version"
            )
    except UnsupportedFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many types; fail closed
        raise FormatError(
            "malformed .npy header", path=path, rule="numpy.header", detail=str(exc)
        ) from None
    if dtype.hasobject:
        raise UnsafeModelError(
            ".npy array has an object dtype (its data is a pickle)",
            path=path,
            rule="numpy.object_dtype",
            detail="object arrays need allow_pickle, which safeload never enables",
        )
    if len(shape) > limits.max_tensor_dims:
        raise LimitExceededError(
            f".npy array has {len(shape)} dimensions", path=path, rule="limits.max_tensor_dims"
        )
    # numpy's header reader accepts any int, bool included: (-1, -4) "holds" 4 elements.
    if not all(type(d) is int and d >= 0 for d in shape):
        raise FormatError(
            ".npy shape must hold non-negative ints",
            path=path,
            rule="numpy.header",
            detail=repr(shape)[:200],
        )
    # An empty array's other dims still become strides: (0, 10**30) cannot be built.
    if math.prod(d for d in shape if d) > limits.max_tensor_elements:
        raise LimitExceededError(  # the product is not printed: it may have 10**5 digits
            ".npy shape claims more elements than allowed",
            path=path,
            rule="limits.max_tensor_elements",
            detail=f"limit is {limits.max_tensor_elements}",
        )
    header = NpyHeader(dtype, tuple(shape), bool(fortran), start + hlen)
    if size - header.data_offset != header.nbytes:
        raise FormatError(
            ".npy data size does not match its header",
            path=path,
            rule="numpy.size",
            detail=f"header says {header.nbytes} bytes, file has {size - header.data_offset}",
        )
    return header


def read_npy(data: memoryview, *, limits: Limits, name: str = "") -> np.ndarray[Any, Any]:
    """The array, as a view over ``data`` (writable if ``data`` is)."""
    h = parse_npy(data, limits=limits, name=name)
    return np.ndarray(
        h.shape,
        dtype=h.dtype,
        buffer=data,
        offset=h.data_offset,
        order="F" if h.fortran_order else "C",
    )


def npz_members(
    data: memoryview,
    *,
    limits: Limits,
    name: str = "",
    known_crcs: Mapping[tuple[int, int], int] | None = None,
) -> tuple[ZipArchive, list[str]]:
    """The validated archive and its member names (each must be ``<key>.npy``)."""
    archive = ZipArchive(data, limits=limits, name=name, known_crcs=known_crcs)
    names = archive.names()
    for member in names:
        if not member.endswith(".npy"):
            raise FormatError(
                f".npz member {member!r} is not a .npy array",
                path=name or None,
                rule="numpy.npz_member",
            )
    if len(names) > limits.max_tensors:
        raise LimitExceededError(
            f".npz holds {len(names)} arrays", path=name or None, rule="limits.max_tensors"
        )
    return archive, names


def read_npz(
    data: memoryview, *, limits: Limits, name: str = ""
) -> dict[str, np.ndarray[Any, Any]]:
    """Every array of an ``.npz``, keyed like ``numpy.load`` keys them (name without ``.npy``)."""
    archive, names = npz_members(data, limits=limits, name=name)
    return {
        member[: -len(".npy")]: read_npy(
            archive.read(member), limits=limits, name=f"{name}:{member}"
        )
        for member in names
    }
