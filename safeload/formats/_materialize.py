"""Turn :class:`TensorSpec` placeholders into arrays or tensors over the verified buffer.

This is the only place tensor memory is created, and it never copies: each storage becomes one
buffer (``torch.frombuffer`` for torch, the memoryview itself for NumPy) and every tensor is a
strided view of it, so tensors that shared a storage when saved share memory when loaded, as
with ``torch.load``. Every view is re-checked to lie inside its storage before it is created:
the pickle reader already checked it, but a view outside its buffer would read memory we do not
own, so the check lives next to the pointer arithmetic too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np

from safeload.errors import FormatError, LimitExceededError, UnsupportedFormatError
from safeload.formats._dtypes import lookup, torch_dtype
from safeload.formats._types import TensorSpec, TorchDevice, TorchDType, TorchLayout
from safeload.policy import Limits

__all__ = ["Framework", "Materializer", "check_spec", "iter_specs"]

Framework = Literal["torch", "numpy"]


def check_spec(spec: TensorSpec, storage_bytes: int, *, limits: Limits, path: str | None) -> int:
    """Refuse a view that leaves its storage or breaks a limit; return its logical byte size."""
    itemsize = lookup(spec.dtype).itemsize
    shape, stride = spec.shape, spec.stride
    if len(shape) != len(stride):
        raise FormatError(
            "tensor shape and stride differ in length", path=path, rule="tensor.stride"
        )
    if len(shape) > limits.max_tensor_dims:
        raise LimitExceededError(
            f"tensor has {len(shape)} dimensions", path=path, rule="limits.max_tensor_dims"
        )
    if spec.offset < 0 or any(d < 0 for d in shape) or any(s < 0 for s in stride):
        raise FormatError("negative tensor offset, size or stride", path=path, rule="tensor.view")
    numel = math.prod(shape)
    if numel > limits.max_tensor_elements:
        raise LimitExceededError(
            f"tensor claims {numel} elements",
            path=path,
            rule="limits.max_tensor_elements",
            detail=f"limit is {limits.max_tensor_elements}",
        )
    end = (
        spec.offset
        if numel == 0
        else spec.offset + 1 + sum((d - 1) * s for d, s in zip(shape, stride, strict=True))
    )
    if end * itemsize > storage_bytes:
        raise FormatError(
            "tensor view lies outside its storage",
            path=path,
            rule="tensor.view",
            detail=f"needs {end * itemsize} of {storage_bytes} bytes in {spec.storage.key!r}",
        )
    return numel * itemsize


_NAME_PART = 128
"""Characters of one key kept in a tensor's dotted name."""
_NAME_MAX = 1024
"""Characters of a whole dotted name; deeper names keep their last parts."""


def _name_part(key: object) -> str:
    if isinstance(key, str):
        text = key
    elif isinstance(key, (int, float)) or key is None:
        text = str(key)  # the VM refuses ints too long to print
    else:
        text = f"<{type(key).__name__}>"  # str() of a tuple or bytes key can be huge
    return text if len(text) <= _NAME_PART else text[:_NAME_PART] + "..."


def _dotted(parents: list[tuple[int, object]], index: int) -> str:
    """The name of node ``index``, built from the leaf up and cut at ``_NAME_MAX``."""
    parts: list[str] = []
    size = 0
    while index > 0:
        index, key = parents[index]
        part = _name_part(key)
        size += len(part) + 1
        if size > _NAME_MAX:
            parts.append("...")
            break
        parts.append(part)
    return ".".join(reversed(parts))


def iter_specs(value: object, prefix: str = "") -> Iterator[tuple[str, TensorSpec]]:
    """Every tensor placeholder in a value tree, with a dotted name (dict keys, list indices).

    Names are built only for tensors, from parent pointers, and bounded: a file that reuses
    one long memoised key at every nesting level must not make every name (and every
    intermediate name) as long as all its levels together.
    """
    seen: set[int] = set()
    parents: list[tuple[int, object]] = [(0, "")]  # node -> (parent node, key); 0 is the root
    stack: list[tuple[int, object]] = [(0, value)]
    while stack:
        node, v = stack.pop()
        if isinstance(v, TensorSpec):
            name = _dotted(parents, node)
            yield (f"{prefix}.{name}" if prefix and name else prefix or name), v
            continue
        if isinstance(v, (dict, list, tuple)):
            if id(v) in seen:
                continue
            seen.add(id(v))
            items = list(v.items() if isinstance(v, dict) else enumerate(v))
            base = len(parents)
            parents.extend((node, k) for k, _ in items)
            stack.extend((base + i, c) for i, (_, c) in reversed(list(enumerate(items))))


class Materializer:
    """Builds each storage once and every tensor as a view of it; identity is preserved."""

    def __init__(
        self,
        storages: Mapping[str, memoryview],
        *,
        framework: Framework,
        limits: Limits,
        name: str = "",
    ) -> None:
        self._storages = storages
        self._framework = framework
        self._limits = limits
        self._path = name or None
        self._built: dict[str, Any] = {}
        self._memo: dict[int, Any] = {}
        self._keep: list[object] = []  # keeps memo keys (ids) alive for the walk

    def convert(self, value: object) -> Any:
        """The value tree with placeholders replaced; dicts and lists are updated in place."""
        key = id(value)
        if key in self._memo:
            return self._memo[key]
        out: Any = value
        if isinstance(value, TensorSpec):
            out = self.tensor(value)
        elif isinstance(value, dict):
            self._remember(value, value)
            for k, v in value.items():
                value[k] = self.convert(v)
            return value
        elif isinstance(value, list):
            self._remember(value, value)
            for i, v in enumerate(value):
                value[i] = self.convert(v)
            return value
        elif isinstance(value, tuple):
            items = [self.convert(v) for v in value]
            if any(a is not b for a, b in zip(items, value, strict=True)):
                out = type(value)(items) if type(value) is tuple else _retuple(value, items)
        elif self._framework == "torch":
            out = self._torch_value(value)
        self._remember(value, out)
        return out

    def _remember(self, src: object, out: object) -> None:
        self._memo[id(src)] = out
        self._keep.append(src)

    def _torch_value(self, value: object) -> Any:
        import torch

        if isinstance(value, TorchDType):
            return torch_dtype(value.name)
        if isinstance(value, TorchDevice):
            return torch.device(value.spec)
        if isinstance(value, TorchLayout):
            layout = getattr(torch, value.name, None)
            if not isinstance(layout, torch.layout):
                raise FormatError(
                    f"unknown torch layout {value.name!r}", path=self._path, rule="tensor.layout"
                )
            return layout
        return value

    # -- tensors -------------------------------------------------------------------------
    def _buffer(self, key: str) -> memoryview:
        buf = self._storages.get(key)
        if buf is None:
            raise FormatError(
                f"tensor names a storage {key!r} the file does not have",
                path=self._path,
                rule="tensor.storage",
            )
        return buf

    def tensor(self, spec: TensorSpec) -> Any:
        buf = self._buffer(spec.storage.key)
        check_spec(spec, len(buf), limits=self._limits, path=self._path)
        if self._framework == "numpy":
            if spec.dtype in _INT_REPR or "quantizer" in spec.extra:
                # NumPy has no quantized dtype; the bare integers without their scale would be
                # silently different numbers (and the sandbox worker reads with NumPy).
                raise UnsupportedFormatError(
                    "quantized tensors are only read with framework='torch'",
                    path=self._path,
                    rule="tensor.quantized",
                    detail="NumPy has no quantized dtype; load in-process with torch, or "
                    "dequantize the model before saving",
                )
            return self._numpy(spec, buf)
        return self._torch(spec, buf)

    def _numpy(self, spec: TensorSpec, buf: memoryview) -> np.ndarray[Any, Any]:
        dt = lookup(spec.dtype)
        npdt = dt.require_numpy()
        if math.prod(spec.shape) == 0:
            return np.empty(spec.shape, dtype=npdt)
        return np.ndarray(
            spec.shape,
            dtype=npdt,
            buffer=buf,
            offset=spec.offset * dt.itemsize,
            strides=tuple(s * dt.itemsize for s in spec.stride),
        )

    def _torch(self, spec: TensorSpec, buf: memoryview) -> Any:
        import torch

        storage = self._built.get(spec.storage.key)
        if storage is None:
            if len(buf) == 0:
                storage = torch.empty(0, dtype=torch.uint8).untyped_storage()
            else:
                if buf.readonly:  # torch.frombuffer warns on read-only memory; copy once
                    buf = memoryview(bytearray(buf))
                storage = torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()
            self._built[spec.storage.key] = storage
        quant = spec.extra.get("quantizer")
        if (spec.dtype in _INT_REPR) != (quant is not None):
            raise FormatError(
                "quantized storage and quantizer parameters must come together",
                path=self._path,
                rule="tensor.quantizer",
            )
        t = torch.empty(0, dtype=torch_dtype(_INT_REPR.get(spec.dtype, spec.dtype)))
        t.set_(storage, spec.offset, spec.shape, spec.stride)
        if quant is not None:
            t = _quantize(t, quant, self._path)
        if spec.kind == "parameter":
            return torch.nn.Parameter(t, requires_grad=spec.requires_grad)
        if spec.requires_grad and t.is_floating_point():
            t.requires_grad_(True)
        return t


def _retuple(original: tuple[Any, ...], items: list[Any]) -> tuple[Any, ...]:
    """Rebuild a tuple subclass (``torch.Size``-like namedtuples) with converted items."""
    try:
        return type(original)(items)
    except TypeError:
        return tuple(items)


_INT_REPR = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}
"""Quantized dtypes and the integer type their storage holds."""


def _quantize(t: Any, quant: object, path: str | None) -> Any:
    """A per-tensor affine quantized tensor from its integer representation ``t``.

    ``quant`` is what the pickle reader puts in ``TensorSpec.extra["quantizer"]`` for
    ``torch._utils._rebuild_qtensor``: ``("per_tensor_affine", scale: float, zero_point: int)``.
    """
    import torch

    if not (isinstance(quant, tuple) and len(quant) == 3 and quant[0] in ("per_tensor_affine",)):
        raise FormatError(
            "unsupported quantization scheme",
            path=path,
            rule="tensor.quantizer",
            detail=repr(quant)[:200],
        )
    _, scale, zero_point = quant
    if (
        type(scale) is not float
        or not math.isfinite(scale)
        or type(zero_point) is not int
        or not -(1 << 63) <= zero_point < 1 << 63
    ):
        raise FormatError("bad quantizer parameters", path=path, rule="tensor.quantizer")
    qdtype = {torch.int8: torch.qint8, torch.uint8: torch.quint8, torch.int32: torch.qint32}.get(
        t.dtype
    )
    if qdtype is None:
        raise FormatError(
            "quantized tensor over a non-integer storage", path=path, rule="tensor.quantizer"
        )
    with warnings.catch_warnings():  # torch deprecates creating quantized tensors; still loads
        warnings.filterwarnings(
            "ignore", message=".*quantized tensor creation", category=UserWarning
        )
        # A view over the same storage (as torch's _rebuild_qtensor makes), not a copy, so
        # quantized tensors that shared a storage when saved still share it.
        q = torch._empty_affine_quantized([0], scale=scale, zero_point=zero_point, dtype=qdtype)
    q.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return q
