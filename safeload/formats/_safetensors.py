"""safetensors files: the header is checked here, the tensors are views over the buffer.

The format is data-only, but its header is still attacker-controlled JSON: we cap its size,
refuse duplicate keys, unknown dtypes, shapes whose byte size disagrees with the offsets, and
tensors that overlap, leave holes or point outside the data area (the same rules the
``safetensors`` library enforces, checked before any byte is trusted). Tensors are then strided
views over the caller's buffer through the same materialiser as PyTorch checkpoints, so a
verified buffer is loaded without re-opening a path and without a second copy; the
``safetensors`` library remains the reference the tests compare against.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from safeload.errors import FormatError, LimitExceededError
from safeload.formats._dtypes import SAFETENSORS_DTYPES, lookup
from safeload.formats._types import StorageRef, TensorSpec
from safeload.policy import Limits

__all__ = ["MAX_HEADER_BYTES", "SafetensorsHeader", "parse_safetensors", "storages"]

MAX_HEADER_BYTES = 100 * 1000 * 1000
"""The safetensors library's own header cap."""


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """Validated header: tensor placeholders by name (file order) and the data area's start."""

    specs: dict[str, TensorSpec]
    offsets: dict[str, int]
    """Absolute offset of each tensor's first byte in the file."""
    metadata: dict[str, str]
    data_start: int


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_safetensors(data: memoryview, *, limits: Limits, name: str = "") -> SafetensorsHeader:
    """Check the header completely; each tensor becomes a spec over its own byte range."""
    path = name or None

    def bad(message: str, detail: str | None = None) -> FormatError:
        return FormatError(message, path=path, rule="safetensors.header", detail=detail)

    if len(data) < 8:
        raise bad("file too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise bad(f"header length {n} is larger than allowed or than the file")
    try:
        header = json.loads(
            bytes(data[8 : 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad("header is not valid JSON", str(exc)) from None
    if type(header) is not dict:
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None)  # absent or null; never [], false or ""
    metadata = {} if metadata is None else metadata
    if type(metadata) is not dict or not all(
        type(k) is str and type(v) is str for k, v in metadata.items()
    ):
        raise bad("__metadata__ must map strings to strings")
    if len(header) > limits.max_tensors:
        raise LimitExceededError(f"{len(header)} tensors", path=path, rule="limits.max_tensors")
    data_start = 8 + n
    data_len = len(data) - data_start
    specs: dict[str, TensorSpec] = {}
    starts: dict[str, int] = {}
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if type(info) is not dict or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {key!r} entry must have exactly dtype, shape and data_offsets")
        st_dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if type(st_dtype) is not str or st_dtype not in SAFETENSORS_DTYPES:
            raise FormatError(
                f"tensor {key!r} has unknown dtype {st_dtype!r}", path=path, rule="formats.dtype"
            )
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {key!r} shape must be a list of non-negative ints")
        if len(shape) > limits.max_tensor_dims:
            raise LimitExceededError(
                f"tensor {key!r} has {len(shape)} dimensions",
                path=path,
                rule="limits.max_tensor_dims",
            )
        if (
            type(offsets) is not list
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
        ):
            raise bad(f"tensor {key!r} data_offsets must be [begin, end]")
        begin, end = offsets
        dt = lookup(SAFETENSORS_DTYPES[st_dtype])
        numel = math.prod(shape)
        # An empty tensor's other dims still become strides: [0, 10**30] has no elements but
        # no framework can build it, so the nonzero dims are held to the element limit too.
        if math.prod(d for d in shape if d) > limits.max_tensor_elements:
            raise LimitExceededError(  # the product is not printed: it may have 10**5 digits
                f"tensor {key!r} shape claims more elements than allowed",
                path=path,
                rule="limits.max_tensor_elements",
                detail=f"limit is {limits.max_tensor_elements}",
            )
        if not 0 <= begin <= end <= data_len or end - begin != numel * dt.itemsize:
            raise bad(
                f"tensor {key!r} byte range [{begin}, {end}) does not fit its shape or the file"
            )
        spans.append((begin, end, key))
        stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        ref = StorageRef(key, dt.name, numel)
        specs[key] = TensorSpec(ref, 0, tuple(shape), stride, dt.name)
        starts[key] = data_start + begin
    pos = 0
    for begin, end, key in sorted(spans):
        if begin != pos:
            what = "overlaps another tensor" if begin < pos else "leaves a hole before it"
            raise bad(f"tensor {key!r} {what}")
        pos = end
    if pos != data_len:
        raise bad("bytes after the last tensor", f"{data_len - pos} unaccounted bytes")
    return SafetensorsHeader(specs, starts, metadata, data_start)


def storages(data: memoryview, header: SafetensorsHeader) -> dict[str, memoryview]:
    """Each tensor's own bytes as a zero-copy slice (one storage per tensor, like the format)."""
    out: dict[str, memoryview] = {}
    for key, spec in header.specs.items():
        begin = header.offsets[key]
        out[key] = data[begin : begin + spec.storage.numel * lookup(spec.dtype).itemsize]
    return out
