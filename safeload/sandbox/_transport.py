"""The result channel: safetensors bytes in a memfd, written by the worker, checked by the parent.

Threat model: the worker parses hostile bytes, so the parent treats everything it writes as
hostile too. The parent seals the memfd once the worker is dead (no one can change it under
the tensors), checks the header with the safetensors library's own parser *and* with the
checks below (known dtypes, sizes that match shapes, no overlaps, everything inside the file,
limits from the policy), then builds arrays directly over a private mapping: no copy of tensor
data on either side. The worker writes with ``os.write`` from its arrays' buffers, so it never
maps the memfd either.

Non-tensor structure (the state dict's nesting, ints, strings...) travels as a JSON *skeleton*
in the safetensors metadata. Every JSON object in it is a one-key tag, so nothing is ambiguous:
``{"$t": name}`` a tensor, ``{"$d": [[k, v], ...]}`` a dict (any hashable keys, order kept),
``{"$od": ...}`` an OrderedDict, ``{"$tu": [...]}`` a tuple, ``{"$f": "nan"}`` a non-finite
float, ``{"$b": base64}`` bytes, ``{"$s": name}`` a NumPy scalar, and tags for the reader's
other plain values (complex, bytearray, slice, set, frozenset, and the torch dtype, device and
layout placeholders, which become real torch objects when the caller asked for torch). JSON
lists are lists. Cyclic structures do not cross (the worker refuses them).
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import math
import mmap
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from safeload.errors import FormatError, LimitExceededError, SafeloadError, SandboxError
from safeload.formats._dtypes import DTYPES, SAFETENSORS_DTYPES, torch_dtype
from safeload.formats._materialize import Materializer
from safeload.formats._pickle_budget import _MAX_COLLISIONS, Budget
from safeload.formats._safetensors import parse_safetensors
from safeload.formats._types import StorageRef, TensorSpec, TorchDevice, TorchDType, TorchLayout
from safeload.policy import Limits

if sys.platform != "win32":  # the sandbox is Linux-only; importing safeload is not
    import fcntl

__all__ = ["InputMaps", "decode_result", "encode_result", "seal"]

_SKELETON_KEY = "safeload.skeleton"
_META_KEY = "safeload.meta"
_FILEREFS_KEY = "safeload.filerefs"
_SPECS_KEY = "safeload.specs"
_STORAGES_KEY = "safeload.storages"
_REQUIRED_KEYS = frozenset({_SKELETON_KEY, _META_KEY, _FILEREFS_KEY})
_ALLOWED_KEYS = _REQUIRED_KEYS | {_SPECS_KEY, _STORAGES_KEY}
_KINDS = frozenset({"tensor", "parameter"})
_ALIGN = 64
_MADV_POPULATE_READ = 22  # linux/mman.h, Linux >= 5.14
_POPULATE_STEP = 16 << 20  # prefetch steps: stopping waits for at most one

_NAME_BY_NUMPY: dict[np.dtype[Any], str] = {}
_ST_BY_TORCH = {torch: st for st, torch in SAFETENSORS_DTYPES.items()}
for _name, _dt in DTYPES.items():
    if _dt.numpy is not None and _name in _ST_BY_TORCH:
        _NAME_BY_NUMPY.setdefault(_dt.numpy, _name)


def _protocol(message: str, detail: str | None = None) -> SandboxError:
    return SandboxError(message, rule="sandbox.result", detail=detail)


# --- worker side ------------------------------------------------------------------------------


def _address(buf: Any) -> int:
    return int(np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0])


class _Encoder:
    def __init__(
        self, regions: Sequence[tuple[int, int]], storages: Mapping[str, Any] | None = None
    ) -> None:
        self.arrays: dict[str, np.ndarray[Any, Any]] = {}
        self._by_id: dict[int, str] = {}
        self.file_refs: list[list[Any]] = []
        self._ref_by_id: dict[int, int] = {}
        self._regions = regions
        self._storages = storages or {}
        self.specs: list[list[Any]] = []
        self._spec_by_id: dict[int, int] = {}
        self.storage_refs: list[list[int]] = []
        self._storage_names: dict[str, str] = {}

    def _storage(self, key: str) -> str:
        """A reader storage once, by key: a file region of an input, or bytes in the result."""
        name = self._storage_names.get(key)
        if name is not None:
            return name
        buf = self._storages.get(key)
        if buf is None:
            raise _protocol(f"a tensor names storage {key!r} the reader did not return")
        size = memoryview(buf).nbytes
        if size:
            addr = _address(buf)
            for index, (base, length) in enumerate(self._regions):
                if base <= addr and addr + size <= base + length:
                    self.storage_refs.append([index, addr - base, size])
                    name = f"r{len(self.storage_refs) - 1}"
                    break
        if name is None:
            name = f"s{len(self.arrays)}"
            flat = np.frombuffer(buf, dtype=np.uint8) if size else np.empty(0, dtype=np.uint8)
            self.arrays[name] = flat
        self._storage_names[key] = name
        return name

    def _spec(self, spec: TensorSpec) -> int:
        """A tensor as its view over a storage, once per object, so sharing survives the trip."""
        index = self._spec_by_id.get(id(spec))
        if index is None:
            entry = [
                self._storage(spec.storage.key),
                spec.offset,
                list(spec.shape),
                list(spec.stride),
                spec.dtype,
                spec.kind,
                spec.requires_grad,
                self.encode(dict(spec.extra)) if spec.extra else None,
            ]
            index = self._spec_by_id[id(spec)] = len(self.specs)
            self.specs.append(entry)
        return index

    def _file_ref(self, arr: np.ndarray[Any, Any]) -> int | None:
        """Index of a file reference when ``arr`` is a plain view into an input mapping."""
        if id(arr) in self._ref_by_id:
            return self._ref_by_id[id(arr)]
        tname = _NAME_BY_NUMPY.get(arr.dtype)
        item = arr.dtype.itemsize
        if tname is None or arr.dtype.byteorder == ">" or arr.size == 0:
            return None
        if any(s < 0 or s % item for s in arr.strides):
            return None
        addr = arr.__array_interface__["data"][0]
        end = addr + sum((d - 1) * s for d, s in zip(arr.shape, arr.strides, strict=True)) + item
        for index, (base, length) in enumerate(self._regions):
            if base <= addr and end <= base + length and (addr - base) % item == 0:
                strides = [s // item for s in arr.strides]
                self.file_refs.append([index, addr - base, tname, list(arr.shape), strides])
                ref = self._ref_by_id[id(arr)] = len(self.file_refs) - 1
                return ref
        return None

    def _tensor(self, arr: np.ndarray[Any, Any]) -> str:
        name = self._by_id.get(id(arr))
        if name is None:
            name = f"t{len(self.arrays)}"
            self._by_id[id(arr)] = name
            self.arrays[name] = arr
        return name

    def _raw(self, arr: np.ndarray[Any, Any]) -> Any:
        """A NumPy-only dtype (structured, str, complex...): raw bytes plus its ``.npy`` descr."""
        if arr.dtype.hasobject:
            raise _protocol("object arrays cannot be sent back from the worker")
        key = id(arr)
        name = self._by_id.get(key)
        if name is None:
            name = f"n{len(self.arrays)}"
            self._by_id[key] = name
            self.arrays[name] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        descr = np.lib.format.dtype_to_descr(arr.dtype)
        return {"$np": [name, descr, list(arr.shape)]}

    def encode(self, value: object) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$f": repr(value)}
        if isinstance(value, TensorSpec):
            return {"$ts": self._spec(value)}
        if isinstance(value, np.ndarray):
            dt = value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype
            if dt not in _NAME_BY_NUMPY:
                return self._raw(value)
            ref = self._file_ref(value)
            if ref is not None:
                return {"$fr": ref}
            return {"$t": self._tensor(value)}
        if isinstance(value, np.generic):
            return {"$s": self._tensor(np.asarray(value))}
        if isinstance(value, bytes):
            return {"$b": base64.b64encode(value).decode("ascii")}
        if isinstance(value, bytearray):
            return {"$ba": base64.b64encode(value).decode("ascii")}
        if isinstance(value, complex):
            return {"$c": [self.encode(value.real), self.encode(value.imag)]}
        if isinstance(value, slice):
            return {"$sl": [self.encode(v) for v in (value.start, value.stop, value.step)]}
        if isinstance(value, set | frozenset):
            tag = "$fs" if isinstance(value, frozenset) else "$set"
            return {tag: [self.encode(v) for v in value]}
        if isinstance(value, TorchDType):
            return {"$dt": value.name}
        if isinstance(value, TorchDevice):
            return {"$dev": value.spec}
        if isinstance(value, TorchLayout):
            return {"$lay": value.name}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, tuple):
            return {"$tu": [self.encode(v) for v in value]}
        if isinstance(value, dict):
            tag = "$od" if isinstance(value, collections.OrderedDict) else "$d"
            return {tag: [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        raise SandboxError(
            f"the worker cannot send a {type(value).__name__} back",
            rule="sandbox.result",
            detail="only dicts, lists, tuples, numbers, strings, bytes and arrays cross",
        )


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def encode_result(
    fd: int,
    value: object,
    meta: dict[str, Any],
    regions: Sequence[tuple[int, int]] = (),
    storages: Mapping[str, Any] | None = None,
) -> None:
    """Write ``value`` as safetensors bytes to ``fd`` (worker side), without copying arrays.

    ``regions`` are the ``(address, length)`` of the worker's input mappings: an array that is a
    plain view into one of them travels as a file reference instead of bytes. ``storages`` are
    the reader's storages by key, for :class:`TensorSpec` placeholders in ``value``: each spec
    travels as its view (storage, offset, shape, stride, dtype, kind), each storage once (a
    file region when it lies inside an input mapping), and the parent materialises them with
    the same :class:`Materializer` as an in-process read, so types and sharing are the same.
    """
    enc = _Encoder(regions, storages)
    skeleton = enc.encode(value)
    # Largest item size first, so every tensor stays aligned to its element size.
    order = sorted(enc.arrays, key=lambda n: -enc.arrays[n].dtype.itemsize)
    header: dict[str, Any] = {}
    offset = 0
    for name in order:
        arr = enc.arrays[name]
        if arr.dtype.byteorder == ">":  # a big-endian .npy: send the same values little-endian
            arr = enc.arrays[name] = arr.astype(arr.dtype.newbyteorder("<"))
        tname = _NAME_BY_NUMPY.get(arr.dtype)
        if tname is None:
            raise _protocol(f"dtype {arr.dtype} cannot be sent back from the worker")
        size = arr.nbytes
        header[name] = {
            "dtype": _ST_BY_TORCH[tname],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = {
        _SKELETON_KEY: json.dumps(skeleton, allow_nan=False),
        _META_KEY: json.dumps(meta, allow_nan=False),
        _FILEREFS_KEY: json.dumps(enc.file_refs),
    }
    if enc.specs:
        header["__metadata__"][_SPECS_KEY] = json.dumps(enc.specs, allow_nan=False)
        header["__metadata__"][_STORAGES_KEY] = json.dumps(enc.storage_refs)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % _ALIGN)
    os.lseek(fd, 0, os.SEEK_SET)
    _write_all(fd, memoryview(len(raw).to_bytes(8, "little") + raw))
    for name in order:
        arr = enc.arrays[name]
        if arr.nbytes:
            flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            _write_all(fd, flat.data)


# --- parent side ------------------------------------------------------------------------------


def seal(fd: int) -> None:
    """Freeze the memfd: after this nobody (the worker's leftovers included) can change it.

    ``EBUSY`` means someone still maps it writable (a worker descendant that outlived it):
    the result cannot be trusted to stay put, so it is refused.
    """
    try:
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
        )
    except OSError as exc:
        raise _protocol("the worker's result could not be sealed", str(exc)) from exc


def _check_with_safetensors(fd: int) -> None:
    """Let the safetensors library parse the same header: two independent parsers must agree."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(f"/proc/self/fd/{fd}", framework="numpy") as f:
            f.keys()
            f.metadata()
    except (SafetensorError, OSError, ValueError) as exc:
        raise _protocol("the worker's result is not valid safetensors", str(exc)) from exc


class _Decoder:
    def __init__(
        self,
        tensors: dict[str, Any],
        limits: Limits,
        framework: str,
        specs: list[Any] | None = None,
        storages: Mapping[str, memoryview] | None = None,
    ) -> None:
        self.tensors = tensors
        self.used: set[str] = set()
        self.limits = limits
        self.items = 0
        self.framework = framework
        self.specs = specs or []
        self.storages = storages or {}
        self.built: dict[int, TensorSpec] = {}

    def _no_flooding(self, keys: list[Any]) -> None:
        """The pickle VM's hash-flooding guard, on keys a compromised worker chose."""
        if len(keys) <= _MAX_COLLISIONS:  # too few keys to flood anything
            return
        try:
            Budget(self.limits).distinct_hashes(None, keys)
        except LimitExceededError as exc:
            raise _protocol("skeleton keys crafted to share one hash value", exc.detail) from exc
        except TypeError as exc:  # an unhashable key
            raise _protocol("unhashable key in skeleton") from exc

    def _spec(self, index: object, depth: int) -> TensorSpec:
        """A tensor placeholder from the worker's view table, checked field by field."""
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(
            self.specs
        ):
            raise _protocol("skeleton names a tensor view that is not in the result")
        spec = self.built.get(index)
        if spec is not None:
            return spec
        entry = self.specs[index]
        if not isinstance(entry, list) or len(entry) != 8:
            raise _protocol("malformed tensor view")
        key, offset, shape, stride, dtype, kind, grad, extra = entry
        if (
            not isinstance(key, str)
            or key not in self.storages
            or not isinstance(offset, int)
            or isinstance(offset, bool)
            or offset < 0
            or not _ints(shape)
            or not _ints(stride)
            or dtype not in DTYPES
            or kind not in _KINDS
            or not isinstance(grad, bool)
        ):
            raise _protocol("malformed tensor view")
        extra = {} if extra is None else self.decode(extra, depth + 1)
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise _protocol("malformed tensor view extras")
        self.used.add(key)
        ref = StorageRef(key=key, dtype="uint8", numel=len(self.storages[key]))
        spec = TensorSpec(ref, offset, tuple(shape), tuple(stride), dtype, grad, kind, extra)
        self.built[index] = spec
        return spec

    def _file_ref(self, index: object) -> Any:
        if not isinstance(index, int) or isinstance(index, bool):
            raise _protocol("bad file reference in skeleton")
        return self._ref(f"f{index}")

    def _ref(self, name: object) -> Any:
        if not isinstance(name, str) or name not in self.tensors:
            raise _protocol("skeleton names a tensor that is not in the result")
        self.used.add(name)
        return self.tensors[name]

    def decode(self, node: Any, depth: int = 0) -> Any:
        if depth > self.limits.max_nesting_depth:
            raise _protocol("skeleton nests deeper than limits.max_nesting_depth")
        self.items += 1
        if self.items > self.limits.max_container_items:
            raise _protocol("skeleton has more items than limits.max_container_items")
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [self.decode(v, depth + 1) for v in node]
        if not isinstance(node, dict) or len(node) != 1:
            raise _protocol("malformed skeleton node")
        ((tag, body),) = node.items()
        if tag == "$t":
            return self._ref(body)
        if tag == "$fr":
            return self._file_ref(body)
        if tag == "$ts":
            return self._spec(body, depth)
        if tag == "$s":
            arr = self._ref(body)
            return arr[()] if self.framework == "numpy" else arr
        if tag == "$tu" and isinstance(body, list):
            return tuple(self.decode(v, depth + 1) for v in body)
        if tag in ("$d", "$od") and isinstance(body, list):
            out: dict[Any, Any] = {} if tag == "$d" else collections.OrderedDict()
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in body):
                raise _protocol("malformed dict entry in skeleton")
            keys = [self.decode(pair[0], depth + 1) for pair in body]
            self._no_flooding(keys)
            for key, pair in zip(keys, body, strict=True):
                try:
                    out[key] = self.decode(pair[1], depth + 1)
                except TypeError as exc:  # an unhashable key
                    raise _protocol("unhashable dict key in skeleton") from exc
            return out
        if tag == "$f" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag in ("$b", "$ba") and isinstance(body, str):
            try:
                raw = base64.b64decode(body, validate=True)
            except binascii.Error as exc:
                raise _protocol("bad base64 in skeleton") from exc
            return raw if tag == "$b" else bytearray(raw)
        if tag == "$c" and isinstance(body, list) and len(body) == 2:
            re, im = (self.decode(v, depth + 1) for v in body)
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (re, im)):
                raise _protocol("bad complex in skeleton")
            return complex(re, im)
        if tag == "$sl" and isinstance(body, list) and len(body) == 3:
            return slice(*(self.decode(v, depth + 1) for v in body))
        if tag in ("$set", "$fs") and isinstance(body, list):
            members = [self.decode(v, depth + 1) for v in body]
            self._no_flooding(members)
            try:
                items = set(members)
            except TypeError as exc:
                raise _protocol("unhashable set item in skeleton") from exc
            return items if tag == "$set" else frozenset(items)
        if tag == "$np" and isinstance(body, list) and len(body) == 3:
            return self._numpy_only(*body)
        if tag in ("$dt", "$dev", "$lay") and isinstance(body, str):
            return self._torch_placeholder(tag, body)
        raise _protocol(f"unknown skeleton tag {tag!r}")

    def _numpy_only(self, name: object, descr: object, shape: object) -> Any:
        """Rebuild a structured/str/complex array from raw bytes; object dtypes never."""
        raw = self._ref(name)
        if not (isinstance(name, str) and name.startswith("n")) or not isinstance(raw, np.ndarray):
            raise _protocol("raw array reference is not a raw tensor")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _protocol("bad raw array shape")
        try:
            dtype = np.lib.format.descr_to_dtype(_tuples(descr, 0))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise _protocol("bad raw array dtype", str(exc)) from exc
        if dtype.hasobject or dtype.itemsize * math.prod(shape) != raw.nbytes:
            raise _protocol("raw array dtype/shape does not match its bytes")
        if raw.nbytes == 0:
            return np.empty(shape, dtype=dtype)
        return raw.view(dtype).reshape(shape)

    def _torch_placeholder(self, tag: str, body: str) -> Any:
        """The reader's torch placeholders; the materialiser turns them into torch objects."""
        if tag == "$dt":
            if body not in DTYPES:
                raise _protocol(f"unknown torch dtype {body!r} in skeleton")
            return TorchDType(body)
        return TorchDevice(body) if tag == "$dev" else TorchLayout(body)


def _tuples(descr: object, depth: int) -> Any:
    """JSON turned the descr's tuples into lists; turn them back (bounded depth)."""
    if depth > 32:
        raise ValueError("descr nests too deep")
    if isinstance(descr, str):
        return descr
    if not isinstance(descr, list):
        raise ValueError("descr must be a string or a list")
    if depth % 2 == 0:  # a field list
        return [_tuples(field, depth + 1) for field in descr]
    # one field: (name, format or nested field list[, shape])
    items = [_tuples(x, depth + 1) if isinstance(x, list) and i == 1 else x
             for i, x in enumerate(descr)]  # fmt: skip
    if len(items) == 3 and isinstance(items[2], list):
        items[2] = tuple(items[2])
    return tuple(items)


def _ints(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


class InputMaps:
    """The parent's own copies of the inputs, which result tensors become views of.

    Two kinds. An input the parent already holds in private memory (``buffers[i]``: what
    ``safeload.load`` read, or the exact bytes a verified file hashed) is used as it is: the
    worker parsed a descriptor of the same bytes, and its references are bounds-checked against
    this buffer, so the caller gets the memory semantics of an in-process load. Any other input
    is mapped privately, writable (copy-on-write), from the parent's descriptor. The worker
    reads every page of such an input (CRCs), so after a successful job they sit in the page
    cache and the parent maps them with ``MADV_POPULATE_READ`` (read-only population keeps them
    shared: no copy-on-write; kernels before 5.14 say EINVAL and pages fault in lazily). That
    page-table work costs tens of milliseconds per GiB, so :meth:`prefetch` does it on a thread
    while the parent only waits for the worker, in small steps it can stop between.
    """

    def __init__(
        self, fds: Sequence[int], buffers: Sequence[memoryview | None] | None = None
    ) -> None:
        self._fds = fds
        self.count = len(fds)
        self._buffers = list(buffers) if buffers is not None else [None] * len(fds)
        if len(self._buffers) != self.count:
            raise ValueError("one buffer (or None) per input descriptor")
        self._maps: dict[int, Any] = {}
        self._storages: dict[int, Any] = {}
        self._populated: dict[int, int] = {}  # input -> bytes from its start already populated

    def _mapping(self, index: int) -> Any:
        mm = self._maps.get(index)
        if mm is None:
            held = self._buffers[index]
            if held is not None:
                mm = held.cast("B") if held.format != "B" or held.ndim != 1 else held
                if len(mm) == 0:
                    raise _protocol("a reference points into an empty input file")
                self._populated[index] = len(mm)  # the parent's own memory: nothing to map
                self._maps[index] = mm
                return mm
            fd = self._fds[index]
            size = os.fstat(fd).st_size
            if size == 0:  # mmap refuses empty files; nothing can be referenced in one anyway
                raise _protocol("a reference points into an empty input file")
            mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            self._maps[index] = mm
        return mm

    def _populate(self, index: int, mm: Any, stop: threading.Event | None) -> None:
        done = self._populated.get(index, 0)
        try:
            while done < len(mm):
                if stop is not None and stop.is_set():
                    break
                step = min(_POPULATE_STEP, len(mm) - done) if stop is not None else len(mm) - done
                mm.madvise(_MADV_POPULATE_READ, done, step)
                done += step
        except OSError:  # not supported: pages fault in on first use instead
            done = len(mm)
        self._populated[index] = done

    @property
    def needs_prefetch(self) -> bool:
        """Whether any input is still to be mapped from its descriptor."""
        return any(b is None for b in self._buffers)

    def prefetch(self, stop: threading.Event) -> None:
        """Map and populate every input until ``stop`` is set (run on a thread; never raises)."""
        for index in range(self.count):
            try:
                self._populate(index, self._mapping(index), stop)
            except (SandboxError, OSError, ValueError):
                continue

    def map(self, index: int) -> Any:
        mm = self._mapping(index)
        self._populate(index, mm, None)
        return mm

    def storage(self, index: int) -> Any:
        import torch

        storage = self._storages.get(index)
        if storage is None:
            mm = self.map(index)
            if memoryview(mm).readonly:  # the caller's bytes: torch needs writable memory
                mm = bytearray(mm)
            storage = torch.frombuffer(mm, dtype=torch.uint8).untyped_storage()
            self._storages[index] = storage
        return storage


def _file_tensors(raw: str, maps: InputMaps, limits: Limits, framework: str) -> dict[str, Any]:
    """Tensors the worker found inside an input file, rebuilt over the parent's own mapping.

    The worker only says *where* (input, byte offset, dtype, shape, strides); every reference
    is bounds-checked against the file the parent itself opened, so a lying worker can at worst
    point at other bytes of the same input, never outside it.
    """
    try:
        refs = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _protocol("file references are not JSON", str(exc)) from exc
    if not isinstance(refs, list) or len(refs) > limits.max_tensors:
        raise _protocol("file references are not a list or too many")
    out: dict[str, Any] = {}
    for i, ref in enumerate(refs):
        if not isinstance(ref, list) or len(ref) != 5:
            raise _protocol("malformed file reference")
        index, offset, tname, shape, strides = ref
        if (
            not isinstance(index, int)
            or not 0 <= index < maps.count
            or not isinstance(offset, int)
            or tname not in DTYPES
            or not _ints(shape)
            or not _ints(strides)
            or len(shape) != len(strides)
            or len(shape) > limits.max_tensor_dims
        ):
            raise _protocol("malformed file reference")
        item = DTYPES[tname].itemsize
        numel = math.prod(shape)
        if not 0 < numel <= limits.max_tensor_elements or offset < 0 or offset % item:
            raise _protocol("file reference has a bad size or offset")
        mm = maps.map(index)
        last = offset + (sum((d - 1) * s for d, s in zip(shape, strides, strict=True)) + 1) * item
        if last > len(mm):
            raise _protocol("file reference points outside its input file")
        if framework == "torch":
            import torch

            t = torch.empty(0, dtype=torch_dtype(tname))
            t.set_(maps.storage(index), offset // item, tuple(shape), tuple(strides))
            out[f"f{i}"] = t
        else:
            npdt = DTYPES[tname].require_numpy()
            out[f"f{i}"] = np.ndarray(tuple(shape), dtype=npdt, buffer=mm, offset=offset,
                                      strides=tuple(s * item for s in strides))  # fmt: skip
    return out


def _storage_refs(raw: str | None, maps: InputMaps, limits: Limits) -> dict[str, memoryview]:
    """Storages the worker found inside an input file, as slices of the parent's own mapping.

    ``[input, byte offset, byte size]`` each, bounds-checked against the file the parent opened:
    a lying worker can at worst point at other bytes of the same input.
    """
    if raw is None:
        return {}
    try:
        refs = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _protocol("storage references are not JSON", str(exc)) from exc
    if not isinstance(refs, list) or len(refs) > limits.max_tensors:
        raise _protocol("storage references are not a list or too many")
    out: dict[str, memoryview] = {}
    for i, ref in enumerate(refs):
        if not _ints(ref) or len(ref) != 3 or not ref[0] < maps.count or ref[2] == 0:
            raise _protocol("malformed storage reference")
        index, offset, size = ref
        mm = maps.map(index)
        if offset + size > len(mm):
            raise _protocol("storage reference points outside its input file")
        out[f"r{i}"] = memoryview(mm)[offset : offset + size]
    return out


def _materialize(
    value: object, decoder: _Decoder, framework: str, limits: Limits, name: str
) -> tuple[object, dict[str, Any]]:
    """Tensor views -> tensors with the in-process reader's own materialiser (same types, sharing
    and checks: every view is re-checked against its storage here, in the parent)."""
    mat = Materializer(decoder.storages, framework=framework,  # type: ignore[arg-type]
                       limits=limits, name=name)  # fmt: skip
    try:
        out = mat.convert(value)
        built = {f"v{i}": mat.convert(spec) for i, spec in decoder.built.items()}
    except SafeloadError:
        raise
    except Exception as exc:  # every view was checked; anything else is still a refusal
        raise FormatError("tensors could not be built from this file", path=name or None,
                          rule="formats.malformed",
                          detail=f"{type(exc).__name__}: {exc}"[:300]) from exc  # fmt: skip
    return out, built


def decode_result(
    fd: int,
    *,
    limits: Limits,
    framework: Literal["numpy", "torch"],
    max_bytes: int,
    inputs: Sequence[int] = (),
    name: str = "",
    maps: InputMaps | None = None,
) -> tuple[object, dict[str, Any], dict[str, Any]]:
    """Validate and map a sealed result memfd: ``(value, tensors by name, task metadata)``.

    ``inputs`` are the parent's descriptors of the input files, for tensors and storages the
    worker sent as references into them (``maps``: the same, already mapped by
    :meth:`InputMaps.prefetch`); ``name`` labels refusals like an in-process read.
    """
    size = os.fstat(fd).st_size
    if not 8 <= size <= max_bytes:
        raise _protocol(f"result size {size} outside [8, {max_bytes}]")
    _check_with_safetensors(fd)
    mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        parsed = parse_safetensors(memoryview(mm), limits=limits, name="sandbox result")
    except FormatError as exc:
        raise _protocol("the worker's result failed safeload's header checks",
                        exc.diagnostics()) from exc  # fmt: skip
    meta = parsed.metadata
    if not _REQUIRED_KEYS <= set(meta) <= _ALLOWED_KEYS:
        raise _protocol("result metadata is missing the skeleton or has unknown keys")
    try:
        skeleton = json.loads(meta[_SKELETON_KEY])
        task_meta = json.loads(meta[_META_KEY])
        specs = json.loads(meta.get(_SPECS_KEY, "[]"))
    except (ValueError, RecursionError) as exc:
        raise _protocol("result skeleton is not JSON", str(exc)) from exc
    if not isinstance(task_meta, dict):
        raise _protocol("task metadata is not an object")
    if not isinstance(specs, list) or len(specs) > limits.max_tensors:
        raise _protocol("tensor views are not a list or more than limits.max_tensors")
    if task_meta.get("arrays") == "numpy":  # NumPy files give NumPy arrays, as in-process
        framework = "numpy"
    maps = maps if maps is not None else InputMaps(inputs)
    tensors = _file_tensors(meta[_FILEREFS_KEY], maps, limits, framework)
    storages = _storage_refs(meta.get(_STORAGES_KEY), maps, limits)
    for tname, spec in parsed.specs.items():
        numel, shape, offset = spec.storage.numel, spec.shape, parsed.offsets[tname]
        if tname.startswith("s"):  # a reader storage: raw bytes the materialiser views
            if spec.dtype != "uint8" or len(shape) != 1:
                raise _protocol("a storage in the result is not flat bytes")
            storages[tname] = memoryview(mm)[offset : offset + numel]
        elif framework == "torch" and not tname.startswith("n"):
            import torch

            tdt = torch_dtype(spec.dtype)
            if numel == 0:
                tensors[tname] = torch.empty(shape, dtype=tdt)
            else:
                tensors[tname] = torch.frombuffer(mm, dtype=tdt, count=numel,
                                                  offset=offset).reshape(shape)  # fmt: skip
        else:
            npdt = DTYPES[spec.dtype].require_numpy()
            tensors[tname] = np.frombuffer(mm, dtype=npdt, count=numel, offset=offset).reshape(
                shape
            )
    decoder = _Decoder(tensors, limits, framework, specs, storages)
    value = decoder.decode(skeleton)
    if decoder.used != set(tensors) | set(storages) or len(decoder.built) != len(specs):
        raise _protocol("result carries tensors the skeleton does not use")
    value, built = _materialize(value, decoder, framework, limits, name)
    return value, {**tensors, **built}, task_meta
