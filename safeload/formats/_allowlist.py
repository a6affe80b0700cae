"""The built-in allowlist: every global a model pickle may name, and what safeload does instead.

A pickle names callables by ``"module.qualname"``. We never import or call them. Each exact
name below maps to an :class:`AllowedGlobal`: a reconstruction function *we* wrote that turns
plain, already-validated data into a plain value (a ``TensorSpec``, an ``OrderedDict``, a NumPy
array of a numeric dtype...), plus one line saying why that is safe. Names not in this table
are refused by the pickle VM; there is no pattern matching, prefix rule or attribute walk, so a
dotted name reaching *through* an allowed module (``torch._utils.os.system``) is simply unknown.

Arguments of every reconstruction are attacker-chosen: each function checks types exactly
(``type(x) is int``, never duck typing) and raises a :class:`~safeload.errors.SafeloadError`;
the VM adds the byte offset.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from safeload.errors import (
    FormatError,
    LimitExceededError,
    UnsafeModelError,
    UnsupportedFormatError,
)
from safeload.formats._dtypes import DTYPES
from safeload.formats._nested import read_nested_storage
from safeload.formats._types import (
    StorageRef,
    StorageType,
    TensorSpec,
    TorchDevice,
    TorchDType,
    TorchLayout,
    TorchQScheme,
)
from safeload.policy._limits import Limits

__all__ = [
    "ALLOWLIST",
    "ITEMSIZE",
    "AllowedGlobal",
    "Builder",
    "Ctx",
    "Reducer",
    "build_tensor_spec",
    "check_plain",
]

Builder = Callable[[Any, object, "Ctx"], None]
"""Applies a BUILD state to an object a reconstruction made and registered with the VM."""


class Ctx:
    """What reconstructions may use: the limits, and the one-shot BUILD registry of the VM."""

    __slots__ = ("alloc", "limits", "pending", "user_types", "work")

    def __init__(self, limits: Limits, user_types: frozenset[type]) -> None:
        self.limits = limits
        # id -> (object kept alive so the id stays unique, builder); popped by the first BUILD.
        self.pending: dict[int, tuple[object, Builder]] = {}
        self.user_types = user_types
        self.work = 0
        """Extra steps spent walking values; the VM charges them to ``max_pickle_opcodes``."""
        self.alloc = 0
        """Bytes a reconstruction copied; the VM charges them to ``max_pickle_alloc_bytes``."""

    def expect_build(self, obj: object, builder: Builder) -> None:
        self.pending[id(obj)] = (obj, builder)


Reducer = Callable[[tuple[object, ...], Ctx], object]


@dataclass(frozen=True, slots=True, eq=False)
class AllowedGlobal:
    """One allowlisted name: pushed as ``value`` if it has one, else called via REDUCE/NEWOBJ."""

    name: str
    reason: str
    reduce: Reducer | None = None
    newobj: Reducer | None = None
    value: object = None
    has_value: bool = False
    tag: str = ""
    """Identity of marker entries other reconstructions accept as arguments (``ndarray``)."""
    hashes: bool = False
    """The reconstruction hashes the items of its arguments (sets, dict keys): the VM charges
    their hashing cost first."""


def _bad(what: str, detail: str | None = None) -> FormatError:
    return FormatError(f"invalid arguments to {what}", rule="pickle.reconstruct", detail=detail)


def _args(args: tuple[object, ...], what: str, lo: int, hi: int) -> tuple[object, ...]:
    if type(args) is not tuple or not lo <= len(args) <= hi:
        raise _bad(what, f"expected {lo}..{hi} positional arguments")
    return args


# --- plain data ---------------------------------------------------------------------------

_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray, slice)
_MARKERS = (
    TensorSpec,
    StorageRef,
    StorageType,
    TorchDType,
    TorchDevice,
    TorchLayout,
    TorchQScheme,
)
_CONTAINERS = (list, tuple, dict, set, frozenset, collections.OrderedDict)


def check_plain(value: object, ctx: Ctx, what: str) -> None:
    """Refuse unless ``value`` is data: scalars, containers, tensor specs, numeric arrays.

    Iterative with a visited set, so shared or cyclic structures cost each node once; the
    steps are charged to the opcode budget so repeated BUILDs cannot amplify work.
    """
    import numpy as np

    seen: set[int] = set()
    todo: list[object] = [value]
    while todo:
        v = todo.pop()
        t = type(v)
        if t in _SCALARS or t in _MARKERS or t in ctx.user_types:
            continue
        if id(v) in seen:
            continue
        seen.add(id(v))
        ctx.work += 1
        if t in _CONTAINERS:
            coll: Any = v
            if isinstance(coll, dict):
                todo.extend(coll.keys())
                todo.extend(coll.values())
            else:
                todo.extend(coll)
            ctx.work += len(coll)
            continue
        if t in (np.ndarray, np.dtype) or isinstance(v, (np.generic, np.dtype)):
            dt = v if isinstance(v, np.dtype) else v.dtype  # type: ignore[attr-defined]
            if dt.hasobject:
                break
            continue
        raise UnsafeModelError(
            f"{what} holds a {t.__name__}, which is not plain data",
            rule="pickle.build",
            code="SL103",
        )
    else:
        return
    raise UnsafeModelError(f"{what} holds an object-dtype array", rule="pickle.build", code="SL103")


# --- torch --------------------------------------------------------------------------------

_INT64 = 1 << 63

# Quantized element types: only ever the storage of ``_rebuild_qtensor`` (their integer
# representation is read; scale and zero point travel in the spec's ``extra``).
_QUANTIZED = ("qint8", "quint8", "qint32")
# torch dtype name -> element size in bytes; only element types a reader can lay out in memory.
# Derived from the one dtype table the materialiser uses, so the two can never disagree.
ITEMSIZE: dict[str, int] = {n: d.itemsize for n, d in DTYPES.items() if n not in _QUANTIZED}
QUANTIZED_ITEMSIZE: dict[str, int] = {n: DTYPES[n].itemsize for n in _QUANTIZED}

_STORAGE_CLASSES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}

_QSTORAGE_CLASSES = {"QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32"}
_QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams")


def _int_tuple(v: object, what: str, field_name: str, limits: Limits) -> tuple[int, ...]:
    if type(v) is not tuple:
        raise _bad(what, f"{field_name} must be a tuple of ints")
    if len(v) > limits.max_tensor_dims:
        raise LimitExceededError(
            f"tensor has {len(v)} dimensions",
            rule="limits.max_tensor_dims",
            detail=f"limit is {limits.max_tensor_dims}",
        )
    for x in v:
        if type(x) is not int or not 0 <= x < _INT64:
            raise _bad(what, f"{field_name} must hold non-negative 64-bit ints")
    return v


def _hooks_empty(hooks: object, what: str) -> None:
    if hooks is None or (type(hooks) is collections.OrderedDict and not hooks):
        return
    raise UnsafeModelError(
        f"{what}: backward hooks must be empty", rule="pickle.tensor_hooks", code="SL103"
    )


def _tensor_spec(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    dtype: str | None,
    what: str,
    limits: Limits,
    requires_grad: bool = False,
    itemsizes: Mapping[str, int] = ITEMSIZE,
) -> TensorSpec:
    if type(storage) is not StorageRef:
        raise _bad(what, "the storage argument must come from a storage persistent id")
    if type(offset) is not int or not 0 <= offset < _INT64:
        raise _bad(what, "storage offset must be a non-negative 64-bit int")
    shape = _int_tuple(size, what, "size", limits)
    strides = _int_tuple(stride, what, "stride", limits)
    if len(shape) != len(strides):
        raise _bad(what, "size and stride differ in length")
    dt = storage.dtype if dtype is None else dtype
    if dt not in itemsizes:
        raise _bad(what, f"unsupported dtype {dt!r}")
    numel = 1
    for s in shape:
        if s > limits.max_tensor_elements:
            numel = s
            break
        numel *= s
    if numel > limits.max_tensor_elements:
        raise LimitExceededError(
            f"tensor claims {numel} elements",
            rule="limits.max_tensor_elements",
            detail=f"limit is {limits.max_tensor_elements}",
        )
    if numel > 0:
        last = offset + sum((s - 1) * st for s, st in zip(shape, strides, strict=True))
        # Offsets and strides count elements of the tensor's dtype; compare bytes, exactly.
        reach = (last + 1) * itemsizes[dt]
        if storage.dtype not in itemsizes or reach > storage.numel * itemsizes[storage.dtype]:
            raise FormatError(
                f"{what}: tensor view reaches element {last} beyond its storage",
                rule="pickle.tensor_bounds",
                detail=f"storage {storage.key!r} holds {storage.numel} elements",
            )
    return TensorSpec(storage, offset, shape, strides, dt, requires_grad)


def _rebuild_tensor_v2(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "_rebuild_tensor_v2", 6, 7)
    if type(a[4]) is not bool:
        raise _bad("_rebuild_tensor_v2", "requires_grad must be a bool")
    _hooks_empty(a[5], "_rebuild_tensor_v2")
    if len(a) == 7 and a[6] is not None:
        check_plain(a[6], ctx, "tensor metadata")
    return _tensor_spec(a[0], a[1], a[2], a[3], None, "_rebuild_tensor_v2", ctx.limits, a[4])


def _rebuild_tensor_v3(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "_rebuild_tensor_v3", 7, 8)
    if type(a[4]) is not bool or type(a[6]) is not TorchDType:
        raise _bad("_rebuild_tensor_v3", "requires_grad must be a bool and dtype a torch dtype")
    _hooks_empty(a[5], "_rebuild_tensor_v3")
    if len(a) == 8 and a[7] is not None:
        check_plain(a[7], ctx, "tensor metadata")
    name = a[6].name
    return _tensor_spec(a[0], a[1], a[2], a[3], name, "_rebuild_tensor_v3", ctx.limits, a[4])


def _rebuild_tensor(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "_rebuild_tensor", 4, 4)
    return _tensor_spec(a[0], a[1], a[2], a[3], None, "_rebuild_tensor", ctx.limits)


def _rebuild_qtensor(args: tuple[object, ...], ctx: Ctx) -> object:
    """torch's quantized tensor: only per-tensor affine, whose parameters are two numbers.

    Per-channel schemes carry their scales and zero points as further tensors that torch
    checks only partly; they are refused by name rather than half-validated here.
    """
    what = "_rebuild_qtensor"
    storage, offset, size, stride, qparams, requires_grad, hooks = _args(args, what, 7, 7)
    if type(qparams) is not tuple or not qparams or type(qparams[0]) is not TorchQScheme:
        raise _bad(what, "quantizer parameters must start with a torch quantization scheme")
    scheme = qparams[0].name
    if scheme != "per_tensor_affine":
        raise UnsupportedFormatError(  # not unsafe: recognised, and deliberately not read
            f"{what}: quantization scheme {scheme!r} is not supported",
            rule="pickle.quantizer",
            detail="only per_tensor_affine quantized tensors are read; per-channel scales and "
            "zero points are tensors of their own that safeload does not rebuild (dequantize "
            "the model or save it as safetensors)",
        )
    if len(qparams) != 3:
        raise _bad(what, "per_tensor_affine takes (scheme, scale, zero_point)")
    _, scale, zero_point = qparams
    if type(scale) is not float or not math.isfinite(scale):
        raise _bad(what, "scale must be a finite float")
    if type(zero_point) is not int or not -_INT64 <= zero_point < _INT64:
        raise _bad(what, "zero_point must be a 64-bit int")
    if type(requires_grad) is not bool:
        raise _bad(what, "requires_grad must be a bool")
    _hooks_empty(hooks, what)
    if type(storage) is not StorageRef or storage.dtype not in QUANTIZED_ITEMSIZE:
        raise _bad(what, "the storage must be a quantized (QInt8/QUInt8/QInt32) storage")
    spec = _tensor_spec(
        storage, offset, size, stride, None, what, ctx.limits, requires_grad, QUANTIZED_ITEMSIZE
    )
    spec.extra["quantizer"] = ("per_tensor_affine", scale, zero_point)
    return spec


def _load_from_bytes(args: tuple[object, ...], ctx: Ctx) -> object:
    (blob,) = _args(args, "torch.storage._load_from_bytes", 1, 1)
    if type(blob) is not bytes:
        raise _bad("torch.storage._load_from_bytes", "the argument must be bytes")
    return read_nested_storage(blob)


def _as_parameter(data: object, requires_grad: object, what: str) -> TensorSpec:
    if type(data) is not TensorSpec or type(requires_grad) is not bool:
        raise _bad(what, "expected (tensor, bool)")
    return replace(data, kind="parameter", requires_grad=requires_grad)


def _rebuild_parameter(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "_rebuild_parameter", 3, 3)
    _hooks_empty(a[2], "_rebuild_parameter")
    return _as_parameter(a[0], a[1], "_rebuild_parameter")


def _rebuild_parameter_with_state(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "_rebuild_parameter_with_state", 4, 4)
    _hooks_empty(a[2], "_rebuild_parameter_with_state")
    spec = _as_parameter(a[0], a[1], "_rebuild_parameter_with_state")
    return _with_state(spec, a[3], ctx)


def _with_state(spec: TensorSpec, state: object, ctx: Ctx) -> TensorSpec:
    """torch's ``_set_obj_state``: a dict of attributes, or a (dict, slots dict) pair."""
    parts: tuple[object, ...] = state if type(state) is tuple and len(state) == 2 else (state,)
    attrs: dict[str, object] = {}
    for part in parts:
        if part is None:
            continue
        if type(part) not in (dict, collections.OrderedDict) or not all(
            type(k) is str and not k.startswith("__")
            for k in part  # type: ignore[attr-defined]
        ):
            raise _bad("tensor state", "state must map attribute names to data")
        check_plain(part, ctx, "tensor state")
        _no_reserved(part, "tensor state")
        attrs.update(part)  # type: ignore[call-overload]
    if not attrs:
        return spec
    out = replace(spec, extra=dict(spec.extra))
    out.extra.update(attrs)
    return out


def build_tensor_spec(obj: TensorSpec, state: object, ctx: Ctx) -> None:
    if state is None:
        return
    if type(state) is not dict or not all(type(k) is str for k in state):
        raise _bad("BUILD on a tensor", "state must be a dict with str keys")
    check_plain(state, ctx, "tensor state")
    _no_reserved(state, "BUILD on a tensor")
    obj.extra.update(state)


_RESERVED_STATE = frozenset({"quantizer"})
"""``TensorSpec.extra`` keys only safeload's reconstructions set (the materialiser trusts them)."""


def _no_reserved(state: object, what: str) -> None:
    if isinstance(state, dict) and _RESERVED_STATE.intersection(state):
        raise UnsafeModelError(
            f"{what} may not set {sorted(_RESERVED_STATE.intersection(state))[0]!r}",
            rule="pickle.build",
            code="SL103",
            detail="quantizer parameters only come from _rebuild_qtensor, where they are checked",
        )


def _rebuild_from_type_v2(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "_rebuild_from_type_v2", 4, 4)
    func, new_type, fargs, state = a
    if type(func) is not AllowedGlobal or func.tag != "tensor_rebuild" or func.reduce is None:
        raise UnsafeModelError(
            "_rebuild_from_type_v2 may only call a tensor rebuild function",
            rule="pickle.reduce",
            code="SL103",
        )
    if type(new_type) is not AllowedGlobal or new_type.tag not in ("tensor", "parameter"):
        raise UnsafeModelError(
            "_rebuild_from_type_v2 may only make a Tensor or Parameter",
            rule="pickle.reduce",
            code="SL103",
        )
    if type(fargs) is not tuple:
        raise _bad("_rebuild_from_type_v2", "args must be a tuple")
    spec = func.reduce(fargs, ctx)
    if type(spec) is not TensorSpec:
        raise _bad("_rebuild_from_type_v2", "the rebuild function did not make a tensor")
    if new_type.tag == "parameter":
        spec = replace(spec, kind="parameter")
    if type(state) is dict and not state:
        return spec
    return _with_state(spec, state, ctx)


def _parameter(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "torch.nn.Parameter", 0, 2)
    if not a:
        raise _bad("torch.nn.Parameter", "a Parameter without data is not supported")
    return _as_parameter(a[0], a[1] if len(a) > 1 else True, "torch.nn.Parameter")


def _size(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "torch.Size", 0, 1)
    return _int_tuple(a[0], "torch.Size", "size", ctx.limits) if a else ()


_DEVICE = re.compile(r"(cpu|cuda|meta|mps|xpu)(:[0-9]{1,4})?")


def _device(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "torch.device", 1, 2)
    spec = a[0]
    if type(spec) is not str or not _DEVICE.fullmatch(spec):
        raise _bad("torch.device", "only a device string such as 'cpu' or 'cuda:0' is accepted")
    if len(a) == 2:
        if type(a[1]) is not int or a[1] < 0 or ":" in spec:
            raise _bad("torch.device", "index must be a non-negative int")
        spec = f"{spec}:{a[1]}"
    return TorchDevice(spec)


def _get_layout(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "torch.serialization._get_layout", 1, 1)
    if a[0] != "torch.strided":
        raise _bad("torch.serialization._get_layout", "only torch.strided is supported")
    return TorchLayout("strided")


# --- builtins and collections -------------------------------------------------------------


def _ordered_dict(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "collections.OrderedDict", 0, 1)
    out: collections.OrderedDict[Any, Any] = collections.OrderedDict()
    if a:
        items = a[0]
        if type(items) not in (list, tuple):
            raise _bad("collections.OrderedDict", "items must be a list of pairs")
        for pair in items:  # type: ignore[attr-defined]
            if type(pair) not in (list, tuple) or len(pair) != 2:
                raise _bad("collections.OrderedDict", "items must be a list of pairs")
            out[pair[0]] = pair[1]
    ctx.expect_build(out, _build_ordered_dict)
    return out


_OD_ATTR = re.compile(r"_?[A-Za-z][A-Za-z0-9_]*")


def _build_ordered_dict(obj: collections.OrderedDict[Any, Any], state: object, ctx: Ctx) -> None:
    """torch state dicts carry ``_metadata`` this way; never shadow a method or set a dunder."""
    if type(state) is not dict:
        raise _bad("BUILD on an OrderedDict", "state must be a dict of attributes")
    for k, v in state.items():
        if type(k) is not str or not _OD_ATTR.fullmatch(k) or hasattr(collections.OrderedDict, k):
            raise UnsafeModelError(
                f"BUILD may not set attribute {k!r} on an OrderedDict",
                rule="pickle.build",
                code="SL103",
            )
        check_plain(v, ctx, f"OrderedDict attribute {k!r}")
        object.__setattr__(obj, k, v)


def _set_like(kind: type[set[Any]] | type[frozenset[Any]], name: str) -> Reducer:
    def make(args: tuple[object, ...], ctx: Ctx) -> object:
        a = _args(args, name, 0, 1)
        if not a:
            return kind()
        if type(a[0]) not in (list, tuple, set, frozenset):
            raise _bad(name, "expected a list of items")
        if len(a[0]) > ctx.limits.max_container_items:  # type: ignore[arg-type]
            raise LimitExceededError(f"{name} too large", rule="limits.max_container_items")
        try:
            return kind(a[0])  # type: ignore[call-overload]
        except TypeError as exc:
            raise _bad(name, f"unhashable member: {exc}") from exc

    return make


def _bytearray(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "bytearray", 0, 2)
    if not a:
        return bytearray()
    if len(a) == 1 and type(a[0]) is bytes:
        return bytearray(a[0])
    if len(a) == 2 and type(a[0]) is str and a[1] in ("latin-1", "latin1"):
        return bytearray(a[0].encode("latin-1"))
    # bytearray(int) would allocate attacker-sized memory; a list of ints is also refused.
    raise _bad("bytearray", "only bytes or (str, 'latin-1') are accepted")


def _bytes(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "bytes", 0, 1)
    if not a:
        return b""
    if type(a[0]) is bytes:
        return a[0]
    raise _bad("bytes", "only bytes() or bytes(b'...') are accepted")


def _codecs_encode(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "_codecs.encode", 2, 2)
    if type(a[0]) is not str or a[1] not in ("latin1", "latin-1"):
        raise _bad("_codecs.encode", "only (str, 'latin1') is accepted")
    try:
        return a[0].encode("latin-1")
    except UnicodeEncodeError as exc:
        raise _bad("_codecs.encode", "text is not latin-1") from exc


def _complex(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "complex", 0, 2)
    if not all(type(x) in (int, float) for x in a):
        raise _bad("complex", "real and imaginary parts must be numbers")
    parts: Any = a
    return complex(*parts)


def _slice(args: tuple[object, ...], ctx: Ctx) -> object:
    a = _args(args, "slice", 1, 3)
    if not all(x is None or type(x) is int for x in a):
        raise _bad("slice", "bounds must be ints or None")
    return slice(*a)


# --- numpy --------------------------------------------------------------------------------

_NP_CODE = re.compile(
    r"[<>|=]?([?bBhHiIlLqQefdgFDG]|b1|[iu][1248]|f(2|4|8|16)|c(8|16|32)|[SU][0-9]{1,6})"
)


def _np_dtype(args: tuple[object, ...], ctx: Ctx) -> object:
    import numpy as np

    a = _args(args, "numpy.dtype", 1, 3)
    code = a[0]
    if type(code) is bytes:  # Python 2 pickles read with encoding="bytes"
        code = code.decode("ascii", "replace")
    if type(code) is not str or not _NP_CODE.fullmatch(code):
        raise UnsafeModelError(
            f"numpy dtype {code!r} is not an allowlisted plain numeric or string type",
            rule="pickle.numpy_dtype",
            code="SL103",
        )
    if not all(type(x) is bool for x in a[1:]):
        raise _bad("numpy.dtype", "align/copy must be bools")
    dt = np.dtype(code).newbyteorder("=")  # a fresh object: BUILD below mutates it in place
    dt = np.dtype(dt, copy=True)
    ctx.expect_build(dt, _build_np_dtype)
    return dt


def _build_np_dtype(dt: Any, state: object, ctx: Ctx) -> None:
    if type(state) is not tuple or len(state) not in (8, 9):
        raise _bad("BUILD on numpy.dtype", "unexpected state shape")
    ver, order, sub, names, fields, elsize, align, flags = state[:8]
    if type(order) is bytes:  # Python 2 pickles read with encoding="bytes"
        order = order.decode("latin-1")
        state = (ver, order, *state[2:])
    ok = (
        ver in (3, 4)
        and type(ver) is int
        and order in ("<", ">", "|", "=")
        and sub is None
        and names is None
        and fields is None
        and type(elsize) is int
        and type(align) is int
        and type(flags) is int
        and (elsize == -1 or (dt.kind in "SU" and elsize == dt.itemsize))
        and (align == -1 or align == dt.alignment)
        and flags == dt.flags
        and (len(state) == 8 or state[8] is None)
    )
    if not ok:
        raise _bad("BUILD on numpy.dtype", "only a byte order may be set on a plain dtype")
    dt.__setstate__(state)


def _plain_np_dtype(v: object, what: str) -> Any:
    import numpy as np

    if type(v) is not np.dtype and not isinstance(v, np.dtype):
        raise _bad(what, "dtype must come from numpy.dtype")
    if v.hasobject or v.fields is not None or v.subdtype is not None:
        raise UnsafeModelError(f"{what}: object dtype", rule="pickle.numpy_dtype", code="SL103")
    return v


def _np_shape(v: object, what: str, itemsize: int, nbytes: int, limits: Limits) -> tuple[int, ...]:
    shape = _int_tuple(v, what, "shape", limits)
    numel = 1
    for s in shape:
        numel *= min(s, limits.max_tensor_elements + 1)
    if numel > limits.max_tensor_elements:
        raise LimitExceededError(f"{what}: array too large", rule="limits.max_tensor_elements")
    if numel * itemsize != nbytes:
        raise _bad(what, f"{nbytes} data bytes do not fill shape {shape}")
    return shape


def _np_reconstruct(args: tuple[object, ...], ctx: Ctx) -> object:
    import numpy as np

    a = _args(args, "numpy _reconstruct", 3, 3)
    if type(a[0]) is not AllowedGlobal or a[0].tag != "ndarray":
        raise _bad("numpy _reconstruct", "only numpy.ndarray may be reconstructed")
    arr = np.empty((0,), np.uint8)
    ctx.expect_build(arr, _build_ndarray)
    return arr


def _build_ndarray(arr: Any, state: object, ctx: Ctx) -> None:
    if type(state) is not tuple or len(state) != 5:
        raise _bad("BUILD on numpy.ndarray", "unexpected state shape")
    ver, shape, dt, fortran, raw = state
    dt = _plain_np_dtype(dt, "numpy.ndarray")
    if type(raw) is str:  # Python 2 pickles read with encoding="latin1", as numpy does
        raw = raw.encode("latin-1")
    if (
        ver != 1
        or type(ver) is not int
        or type(fortran) is not bool
        or type(raw) not in (bytes, bytearray)
    ):
        raise _bad("BUILD on numpy.ndarray", "raw data must be bytes (no object arrays)")
    shape = _np_shape(shape, "numpy.ndarray", dt.itemsize, len(raw), ctx.limits)
    ctx.alloc += len(raw)  # the same memoised bytes may fill many arrays: count each
    arr.__setstate__((ver, shape, dt, fortran, raw))


def _np_frombuffer(args: tuple[object, ...], ctx: Ctx) -> object:
    import numpy as np

    buf, dt, shape, order = _args(args, "numpy _frombuffer", 4, 4)
    dt = _plain_np_dtype(dt, "numpy _frombuffer")
    if type(buf) not in (bytes, bytearray) or order not in ("C", "F"):
        raise _bad("numpy _frombuffer", "expected (bytes, dtype, shape, 'C'|'F')")
    shape = _np_shape(shape, "numpy _frombuffer", dt.itemsize, len(buf), ctx.limits)  # type: ignore[arg-type]
    return np.frombuffer(buf, dtype=dt).reshape(shape, order=order)  # type: ignore[call-overload]


def _np_scalar(args: tuple[object, ...], ctx: Ctx) -> object:
    import numpy as np

    a = _args(args, "numpy scalar", 2, 2)
    dt = _plain_np_dtype(a[0], "numpy scalar")
    if type(a[1]) is not bytes or len(a[1]) != dt.itemsize:
        raise _bad("numpy scalar", "raw value must be bytes of the dtype's size")
    return np.frombuffer(a[1], dtype=dt)[0]


# --- the table ----------------------------------------------------------------------------


def _entries() -> dict[str, AllowedGlobal]:
    rc: dict[str, AllowedGlobal] = {}

    def add(name: str, reason: str, **kw: Any) -> None:
        rc[name] = AllowedGlobal(name, reason, **kw)

    od = "a dict that keeps order; we build a plain collections.OrderedDict"
    add("collections.OrderedDict", od, reduce=_ordered_dict, newobj=_ordered_dict, hashes=True)
    tr = "tensor_rebuild"
    add(
        "torch._utils._rebuild_tensor_v2",
        "describes a strided view over a storage as a "
        "TensorSpec; checked against the storage size, calls nothing",
        reduce=_rebuild_tensor_v2,
        tag=tr,
    )
    add(
        "torch._utils._rebuild_tensor_v3",
        "like _rebuild_tensor_v2 with an explicit dtype (float8, uint16...); a TensorSpec",
        reduce=_rebuild_tensor_v3,
        tag=tr,
    )
    add(
        "torch._utils._rebuild_tensor",
        "legacy tensor view description; a TensorSpec",
        reduce=_rebuild_tensor,
        tag=tr,
    )
    add(
        "torch._utils._rebuild_qtensor",
        "a per-tensor affine quantized TensorSpec: a checked view plus a finite scale and an "
        "int zero point; per-channel schemes are refused",
        reduce=_rebuild_qtensor,
        tag=tr,
    )
    add(
        "torch.storage._load_from_bytes",
        "a storage that plain pickle saved as an embedded legacy checkpoint; those bytes are "
        "read by safeload's own legacy reader (same limits, one level deep), never torch.load",
        reduce=_load_from_bytes,
    )
    for scheme in _QSCHEMES:
        add(
            "torch." + scheme,
            "a quantization scheme marker (only per_tensor_affine is ever rebuilt)",
            value=TorchQScheme(scheme),
            has_value=True,
        )
    add(
        "torch._utils._rebuild_parameter",
        "flags a TensorSpec as a Parameter",
        reduce=_rebuild_parameter,
    )
    add(
        "torch._utils._rebuild_parameter_with_state",
        "a Parameter TensorSpec plus a dict of plain attributes",
        reduce=_rebuild_parameter_with_state,
    )
    add(
        "torch._tensor._rebuild_from_type_v2",
        "only re-runs an allowlisted tensor rebuild for Tensor/Parameter types with plain state",
        reduce=_rebuild_from_type_v2,
    )
    add(
        "torch.nn.parameter.Parameter",
        "flags a TensorSpec as a Parameter",
        reduce=_parameter,
        newobj=_parameter,
        tag="parameter",
    )
    add("torch.Tensor", "only accepted as the type argument of _rebuild_from_type_v2", tag="tensor")
    add("torch.Size", "a tuple of non-negative ints", reduce=_size, newobj=_size)
    add("torch.device", "only the device string is kept", reduce=_device)
    add(
        "torch.serialization._get_layout",
        "maps 'torch.strided' to a layout marker",
        reduce=_get_layout,
    )
    add("torch.strided", "a layout marker", value=TorchLayout("strided"), has_value=True)
    for prefix in ("torch.", "torch.cuda."):
        for cls, dt in _STORAGE_CLASSES.items():
            add(
                prefix + cls,
                "names a storage element type for a persistent id; a StorageType marker",
                value=StorageType(dt),
                has_value=True,
            )
    for cls, dt in _QSTORAGE_CLASSES.items():
        add(
            "torch." + cls,
            "names a quantized storage's integer element type; only _rebuild_qtensor uses it",
            value=StorageType(dt),
            has_value=True,
        )
    add(
        "torch.storage.UntypedStorage",
        "byte storage marker for a persistent id",
        value=StorageType("uint8"),
        has_value=True,
    )
    for dt in (*ITEMSIZE, *QUANTIZED_ITEMSIZE):
        add("torch." + dt, "a dtype name marker", value=TorchDType(dt), has_value=True)
    enc = "turns a str into bytes with latin-1 only, as Python 2 and numpy pickles do"
    add("_codecs.encode", enc, reduce=_codecs_encode)
    for mod in ("builtins", "__builtin__"):  # protocol <= 2 pickles use the Python 2 name
        add(f"{mod}.set", "a set of plain values", reduce=_set_like(set, "set"), hashes=True)
        add(
            f"{mod}.frozenset",
            "a frozenset of plain values",
            reduce=_set_like(frozenset, "frozenset"),
            hashes=True,
        )
        add(
            f"{mod}.bytearray",
            "bytes copied into a bytearray; never sized by an int",
            reduce=_bytearray,
        )
        add(f"{mod}.bytes", "empty or given bytes; never sized by an int", reduce=_bytes)
        add(f"{mod}.complex", "a complex number from two numbers", reduce=_complex)
        add(f"{mod}.slice", "a slice of ints/None", reduce=_slice)
    for mod in ("numpy.core", "numpy._core"):
        add(
            f"{mod}.multiarray._reconstruct",
            "an empty ndarray that one BUILD fills from bytes with a non-object dtype",
            reduce=_np_reconstruct,
        )
        add(
            f"{mod}.multiarray.scalar",
            "a numpy scalar from bytes of a non-object dtype",
            reduce=_np_scalar,
        )
        add(
            f"{mod}.numeric._frombuffer",
            "an ndarray over pickled bytes, non-object dtype",
            reduce=_np_frombuffer,
        )
    add("numpy.ndarray", "only accepted as the type argument of _reconstruct", tag="ndarray")
    add(
        "numpy.dtype",
        "numeric, bool and fixed-size string dtypes only; never object",
        reduce=_np_dtype,
    )
    return rc


ALLOWLIST: Mapping[str, AllowedGlobal] = _entries()
"""Exact ``"module.qualname"`` -> entry. Read-only by convention; users extend via
:mod:`safeload.formats._safe_globals`, never by mutating this table."""
