"""The ONNX graph check: which operators, opsets and side files an ONNX model may use.

An ONNX file is a protobuf program for a native runtime. It runs no Python, but it can name
operators from custom domains (native kernels from whatever library the runtime registered),
point its tensors at any file on disk (``external_data`` locations such as ``../../etc/passwd``
or ``/proc/self/environ``), and nest subgraphs (``If``/``Loop``/``Scan``) and functions so
that a shallow look misses what runs. This module walks *every* graph, subgraph and function,
and holds each to :class:`~safeload.policy.OnnxPolicy`; anything unclear is a refusal.

It lives in ``integrations`` rather than ``formats`` on purpose: every ``formats`` module (and
what it imports inside functions) is imported into every sandbox worker, and this one imports
``onnx`` and the pydantic policy models, which no worker needs.

Threat model: the file's bytes, and every field in them, are the attacker's. ``model_dir`` is
the caller's. External data files are never opened here (only ``stat``-ed after resolving the
location), so the check cannot be made to read a device or a FIFO.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from safeload.errors import FormatError, LimitExceededError, PolicyViolation, SourceError

if TYPE_CHECKING:
    from onnx import (
        AttributeProto,
        GraphProto,
        ModelProto,
        NodeProto,
        SparseTensorProto,
        TensorProto,
    )

    from safeload.policy import OnnxPolicy

__all__ = ["OnnxGraphInfo", "check_onnx_graph"]

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})
_EXTERNAL = 1  # TensorProto.EXTERNAL
_SUB_BYTE_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2, 27: 6, 28: 6}
"""Packed types (UINT4, INT4, FLOAT4E2M1, UINT2, INT2, FLOAT6E2M3, FLOAT6E3M2): their NumPy
stand-ins are a byte wide, the stored data is not."""
_GRAPH_OVERHEAD = 64 << 20
"""Bytes a model file may hold beyond ``max_initializer_bytes`` (nodes, names, shapes)."""
_PROTOBUF_MAX = (2 << 30) - 1
"""protobuf cannot parse one message of 2 GiB or more; larger models use external data."""


@dataclass(frozen=True, slots=True)
class OnnxGraphInfo:
    """What a checked ONNX model uses: every field was seen while walking the whole model."""

    ir_version: int
    opsets: dict[str, int]
    """Operator set version by domain (``""`` is the default ONNX domain)."""
    op_types: tuple[str, ...]
    """Operators used, sorted; outside the default domain as ``domain:op``."""
    nodes: int
    """Nodes in the main graph, every subgraph and every function body."""
    graphs: int
    """Graphs walked: the main graph plus every subgraph (``If``/``Loop``/``Scan`` bodies...)."""
    functions: int
    """Model-local functions (their bodies are checked like graphs)."""
    initializers: int
    """Tensors stored in the model: initializers and constant tensors in attributes."""
    initializer_bytes: int
    """Their declared size (elements x item size), external data included."""
    external_data: tuple[str, ...] = ()
    """Side files named by external data locations, relative to the model folder, sorted."""
    producer: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def check_onnx_graph(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    policy: OnnxPolicy,
    model_dir: Path | None = None,
    name: str = "",
) -> OnnxGraphInfo:
    """Check an ONNX model (a path or its bytes) against ``policy``; raise on anything refused.

    Raises :class:`~safeload.errors.PolicyViolation` for a domain, operator, opset or external
    data location the policy refuses (``rule`` names the field: ``onnx.allowed_domains``,
    ``onnx.allowed_ops``, ``onnx.denied_ops``, ``onnx.opset``, ``onnx.external_data``),
    :class:`~safeload.errors.LimitExceededError` for ``onnx.max_nodes`` and
    ``onnx.max_initializer_bytes``, and :class:`~safeload.errors.FormatError` for bytes that
    are not a valid ONNX model (``onnx.parse``, ``onnx.checker``). External data must resolve,
    symbolic links included, to a regular file inside ``model_dir`` (for a path: its folder by
    default; for bytes without ``model_dir``, any external data is refused).
    """
    import onnx

    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(os.fsdecode(source))
        name = name or str(path)
        if model_dir is None:
            model_dir = path.parent
        data = _read_file(path, policy, name)
    where = name or None
    _check_size(len(data), policy, where)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError family
        raise FormatError(
            "not a valid ONNX model",
            path=where,
            rule="onnx.parse",
            detail=f"{type(exc).__name__}: {exc}"[:300],
        ) from None
    walker = _Walker(policy, model_dir, where)
    info = walker.walk(model)
    _run_checker(model, where, walker.external_tensors)
    return info


def _read_file(path: Path, policy: OnnxPolicy, where: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(
            f"cannot open ONNX model: {exc.strerror}", path=where, rule="onnx.path"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError("ONNX model is not a regular file", path=where, rule="onnx.path")
        _check_size(st.st_size, policy, where)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(st.st_size + 1)
    finally:
        os.close(fd)


def _check_size(size: int, policy: OnnxPolicy, where: str | None) -> None:
    if size > min(policy.max_initializer_bytes + _GRAPH_OVERHEAD, _PROTOBUF_MAX):
        raise LimitExceededError(
            "ONNX model file is larger than its initializer limit allows",
            path=where,
            rule="onnx.max_initializer_bytes",
            detail=f"{size} bytes; larger models keep their weights in external data",
        )


def _run_checker(model: ModelProto, where: str | None, external: list[TensorProto]) -> None:
    """onnx's own structural checker, after ours.

    Given a model in memory, onnx's checker resolves external data locations against the
    *current directory* and ``stat``-s them. So external tensors are turned into empty stubs
    first (same name and type, zero elements) in our private parsed copy: their locations and
    bounds were checked above, against the model folder.
    """
    import onnx

    for tensor in external:
        del tensor.external_data[:]
        del tensor.dims[:]
        tensor.dims.append(0)
        tensor.data_location = onnx.TensorProto.DEFAULT
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - ValidationError and anything odd: fail closed
        raise FormatError(
            "ONNX model failed onnx.checker",
            path=where,
            rule="onnx.checker",
            detail=f"{type(exc).__name__}: {exc}"[:500],
        ) from None


def _domain(domain: str) -> str:
    return "" if domain in _DEFAULT_DOMAINS else domain


def _op_name(domain: str, op: str) -> str:
    return op if not domain else f"{domain}:{op}"


class _Walker:
    """One pass over the model: counts, and refuses at the first thing the policy refuses."""

    def __init__(self, policy: OnnxPolicy, model_dir: Path | None, where: str | None) -> None:
        self.policy = policy
        self.model_dir = model_dir
        self.where = where
        self.allowed_domains = {_domain(d) for d in policy.allowed_domains}
        self.nodes = 0
        self.graphs = 0
        self.tensors = 0
        self.tensor_bytes = 0
        self.ops: set[str] = set()
        self.external: set[str] = set()
        self.external_tensors: list[TensorProto] = []
        self.local_functions: set[tuple[str, str]] = set()

    def refuse(self, message: str, rule: str, detail: str | None = None) -> PolicyViolation:
        return PolicyViolation(message, path=self.where, rule=rule, detail=detail)

    def walk(self, model: ModelProto) -> OnnxGraphInfo:
        opsets = self._opsets(model.opset_import, "model")
        self.local_functions = {(_domain(f.domain), f.name) for f in model.functions}
        for function in model.functions:
            self._opsets(function.opset_import, f"function {function.domain}:{function.name}")
        # An explicit stack, not recursion: nesting depth is the attacker's choice.
        stack: list[GraphProto] = [model.graph]
        stack.extend(
            g for info in model.training_info for g in (info.initialization, info.algorithm)
        )
        for function in model.functions:
            for node in function.node:
                stack.extend(self._node(node))
            # Default attribute values (IR 9): a node that omits the attribute gets this one,
            # graphs and tensors included, when the runtime inlines the function.
            for attr in function.attribute_proto:
                stack.extend(self._attribute(attr))
        while stack:
            graph = stack.pop()
            self.graphs += 1
            for tensor in graph.initializer:
                self._tensor(tensor)
            for sparse in graph.sparse_initializer:
                self._sparse(sparse)
            for node in graph.node:
                stack.extend(self._node(node))
        return OnnxGraphInfo(
            ir_version=int(model.ir_version),
            opsets=opsets,
            op_types=tuple(sorted(self.ops)),
            nodes=self.nodes,
            graphs=self.graphs,
            functions=len(model.functions),
            initializers=self.tensors,
            initializer_bytes=self.tensor_bytes,
            external_data=tuple(sorted(self.external)),
            producer=str(model.producer_name),
        )

    def _opsets(self, imports: Any, owner: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in imports:
            domain, version = _domain(entry.domain), int(entry.version)
            if domain not in self.allowed_domains:
                raise self.refuse(
                    f"ONNX {owner} imports operator domain {entry.domain!r}",
                    "onnx.allowed_domains",
                    "custom domains mean custom native kernels",
                )
            if domain == "" and not self.policy.opset_min <= version <= self.policy.opset_max:
                raise self.refuse(
                    f"ONNX {owner} uses opset {version}",
                    "onnx.opset",
                    f"allowed: {self.policy.opset_min}..{self.policy.opset_max}",
                )
            out[domain] = version
        return out

    def _node(self, node: NodeProto) -> Iterator[GraphProto]:
        self.nodes += 1
        if self.nodes > self.policy.max_nodes:
            raise LimitExceededError(
                "ONNX model has too many nodes",
                path=self.where,
                rule="onnx.max_nodes",
                detail=f"more than {self.policy.max_nodes}",
            )
        domain, op = _domain(node.domain), str(node.op_type)
        qualified = _op_name(domain, op)
        if (domain, op) not in self.local_functions:
            self._operator(domain, op, qualified)
        self.ops.add(qualified)
        for attr in node.attribute:
            yield from self._attribute(attr)

    def _operator(self, domain: str, op: str, qualified: str) -> None:
        import onnx.defs

        policy = self.policy
        if domain not in self.allowed_domains:
            raise self.refuse(
                f"ONNX node uses operator {qualified!r} from a domain not allowed",
                "onnx.allowed_domains",
                "custom domains mean custom native kernels",
            )
        if op in policy.denied_ops or qualified in policy.denied_ops:
            raise self.refuse(f"ONNX operator {qualified!r} is denied", "onnx.denied_ops")
        if policy.allowed_ops:
            if op not in policy.allowed_ops and qualified not in policy.allowed_ops:
                raise self.refuse(
                    f"ONNX operator {qualified!r} is not in the allowlist", "onnx.allowed_ops"
                )
        elif domain in _STANDARD_DOMAINS and not onnx.defs.has(op, domain):
            raise self.refuse(
                f"ONNX operator {qualified!r} is not a standard operator",
                "onnx.allowed_ops",
                "an empty allowlist allows standard operators only",
            )

    def _attribute(self, attr: AttributeProto) -> Iterator[GraphProto]:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs
        if attr.HasField("t"):
            self._tensor(attr.t)
        for tensor in attr.tensors:
            self._tensor(tensor)
        sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for sp in [*sparse, *attr.sparse_tensors]:
            self._sparse(sp)

    def _sparse(self, sparse: SparseTensorProto) -> None:
        """A sparse tensor counts at its *dense* size too: onnxruntime densifies sparse
        initializers and constants when it loads the graph (one stored value can declare
        terabytes)."""
        self._tensor(sparse.values)
        self._tensor(sparse.indices)
        if any(d < 0 for d in sparse.dims):
            raise FormatError(
                f"ONNX sparse tensor {sparse.values.name!r} has a negative dimension",
                path=self.where,
                rule="onnx.tensor",
            )
        self._count(_dense_bytes(int(sparse.values.data_type), sparse.dims) or 0)

    def _tensor(self, tensor: TensorProto) -> None:
        self.tensors += 1
        if any(d < 0 for d in tensor.dims):
            raise FormatError(
                f"ONNX tensor {tensor.name!r} has a negative dimension",
                path=self.where,
                rule="onnx.tensor",
            )
        if tensor.data_location == _EXTERNAL:
            size = self._external(tensor)
        else:
            size = max(_declared_bytes(tensor), len(tensor.raw_data))
        self._count(size)

    def _count(self, size: int) -> None:
        self.tensor_bytes += size
        if self.tensor_bytes > self.policy.max_initializer_bytes:
            raise LimitExceededError(
                "ONNX initializers exceed the size limit",
                path=self.where,
                rule="onnx.max_initializer_bytes",
                detail=f"more than {self.policy.max_initializer_bytes} bytes",
            )

    def _external(self, tensor: TensorProto) -> int:
        """Check one external-data reference; return the bytes it claims."""
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        label = f"tensor {tensor.name!r} keeps its data in {location!r}"
        if self.policy.external_data == "forbid":
            raise self.refuse(
                f"ONNX {label}", "onnx.external_data", "policy onnx.external_data is 'forbid'"
            )
        if not location or "\x00" in location:
            raise FormatError(
                f"ONNX tensor {tensor.name!r} has no valid external data location",
                path=self.where,
                rule="onnx.external_data",
            )
        posix, win = PurePosixPath(location), PureWindowsPath(location)
        if posix.is_absolute() or win.is_absolute() or win.drive or location.startswith("\\"):
            raise self.refuse(
                f"ONNX {label}: an absolute path",
                "onnx.external_data",
                "external data must stay inside the model folder",
            )
        if ".." in posix.parts or ".." in win.parts:
            raise self.refuse(
                f"ONNX {label}: a path with '..'",
                "onnx.external_data",
                "external data must stay inside the model folder",
            )
        if self.model_dir is None:
            raise self.refuse(
                f"ONNX {label}, but no model folder was given",
                "onnx.external_data",
                "external data is only read from inside a model folder",
            )
        root = os.path.realpath(self.model_dir)
        resolved = os.path.realpath(Path(root, location))
        if os.path.commonpath([root, resolved]) != root or resolved == root:
            raise self.refuse(
                f"ONNX {label}, which resolves outside the model folder",
                "onnx.external_data",
                "a symbolic link leads out of the model folder",
            )
        try:
            st = Path(resolved).stat()
        except OSError as exc:
            raise FormatError(
                f"ONNX {label}, which cannot be found",
                path=self.where,
                rule="onnx.external_data",
                detail=exc.strerror,
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise self.refuse(f"ONNX {label}, which is not a regular file", "onnx.external_data")
        offset = _int_entry(entries, "offset", 0, self.where, tensor.name)
        length = _int_entry(entries, "length", st.st_size - offset, self.where, tensor.name)
        if offset + length > st.st_size or length < 0:
            raise FormatError(
                f"ONNX {label}, past the end of that file",
                path=self.where,
                rule="onnx.external_data",
                detail=f"offset {offset} + length {length} > {st.st_size}",
            )
        self.external.add(os.path.relpath(resolved, root))
        self.external_tensors.append(tensor)
        return max(length, _declared_bytes(tensor))


def _int_entry(
    entries: dict[str, str], key: str, default: int, where: str | None, tensor: str
) -> int:
    raw = entries.get(key)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 20:
        raise FormatError(
            f"ONNX tensor {tensor!r} has a bad external data {key}",
            path=where,
            rule="onnx.external_data",
            detail=repr(raw[:40]),
        )
    return int(raw)


def _declared_bytes(tensor: TensorProto) -> int:
    """Elements x item size, from the dims the file declares (what a runtime allocates)."""
    if tensor.string_data:
        return sum(len(s) for s in tensor.string_data)
    dense = _dense_bytes(int(tensor.data_type), tensor.dims)
    return len(tensor.raw_data) if dense is None else dense


def _dense_bytes(data_type: int, dims: Any) -> int | None:
    """Bytes of ``dims`` elements of ``data_type``; None for types with no fixed item size."""
    from onnx import helper

    try:
        itemsize = helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except Exception:  # noqa: BLE001 - undefined or string types: no fixed size
        return None
    bits = _SUB_BYTE_BITS.get(data_type)
    numel = math.prod(int(d) for d in dims)
    return (numel * bits + 7) // 8 if bits else numel * itemsize
