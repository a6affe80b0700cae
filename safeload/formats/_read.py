"""One entry for every reader: bytes in, (format, value, tensor table) out.

``read`` is what ``safeload.load``, the sandbox worker and the converter call; ``analyze`` is
what the scanner calls: it runs exactly the same validation (container, pickle program, every
tensor view against its storage, every zip CRC) but never materialises a tensor. Both detect
the format from content, peel compression wrappers within the limits, and refuse formats that
safeload recognises but does not read, naming them.
"""

from __future__ import annotations

import io
import logging
import pickletools  # opcode decoder only: lists names, never resolves them
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from safeload.errors import (
    FormatError,
    LimitExceededError,
    SafeloadError,
    UnsupportedFormatError,
    UsageError,
)
from safeload.formats._detect import Detection, Format, _detect_raw, unwrap
from safeload.formats._dtypes import lookup
from safeload.formats._materialize import Framework, Materializer, check_spec, iter_specs
from safeload.formats._nested import NestedStorages, nested_scope
from safeload.formats._numpy import npz_members, parse_npy, read_npy
from safeload.formats._pickle_vm import run_pickle
from safeload.formats._safe_globals import SafeGlobal
from safeload.formats._safetensors import parse_safetensors
from safeload.formats._safetensors import storages as st_storages
from safeload.formats._torch_legacy import parse_torch_legacy
from safeload.formats._torch_zip import PickleRunner, TorchParse, parse_torch_zip
from safeload.formats._zip import ZipArchive
from safeload.policy import Limits

__all__ = ["Analysis", "ReadResult", "TensorInfo", "analyze", "read", "unsafe_globals"]

_NPY_HEAD = 1 << 16
"""Enough leading bytes of an ``.npy`` member for any header numpy accepts."""

logger = logging.getLogger(__name__)

_UNSUPPORTED = {
    Format.ONNX: "run ONNX models with safeload.onnx_session (graph checked against the policy)",
    Format.GGUF: "GGUF is read by llama.cpp-style runtimes, not by safeload",
    Format.JOBLIB: "joblib pickles rebuild arbitrary Python objects; export to safetensors or .npz",
    Format.KERAS: "Keras archives can carry Lambda-layer bytecode; safeload does not read them",
    Format.HDF5: "HDF5/Keras H5 models can carry Lambda-layer bytecode; not read",
    Format.TORCHSCRIPT: "TorchScript archives contain code; safeload never loads code",
    Format.TORCH_TAR: "the pre-2018 tar format (the CVE-2025-32434 path); "
    "torch.load(weights_only=True) refuses it too",
    Format.UNKNOWN: "unrecognised container layout",
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor's table row, known without reading its data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    """Logical size: elements * itemsize (a stride-0 view claims more than it stores)."""
    offset: int | None
    """Byte offset of the tensor's first element in the (unwrapped) file; None if unknown."""
    storage: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True, slots=True)
class Analysis:
    """What a file is and holds, fully validated, with no tensor materialised."""

    format: Format
    tensors: tuple[TensorInfo, ...]
    globals: tuple[str, ...] = ()
    """Globals the pickle names (all allowlisted, or analysis would have refused)."""
    wrappers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A loaded file: its format, the value (tensors materialised) and the tensor table."""

    format: Format
    value: Any
    tensors: tuple[TensorInfo, ...]
    wrappers: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Parsed:
    format: Format
    value: Any
    storages: dict[str, Any]
    offsets: dict[str, int]
    wrappers: tuple[str, ...]
    offsets_known: bool
    sizes: dict[str, int] = field(default_factory=dict)
    """Each storage's byte size (known even when its bytes were not read)."""
    archive: ZipArchive | None = None
    """The validated archive of an ``.npz`` (built once, CRCs checked once)."""


def _runner(
    limits: Limits,
    collect: list[str] | None = None,
    segments: list[bytes] | None = None,
    safe_globals: Mapping[str, SafeGlobal] | None = None,
) -> Callable[[memoryview, int, Callable[[object], object] | None, str], tuple[object, int]]:
    def run(
        data: memoryview, start: int, persistent_load: Callable[[object], object] | None, name: str
    ) -> tuple[object, int]:
        value, end = run_pickle(
            data,
            limits=limits,
            start=start,
            persistent_load=persistent_load,
            safe_globals=safe_globals,
            collect_unsafe=collect,
            name=name,
        )
        if segments is not None:
            segments.append(bytes(data[start:end]))
        return value, end

    return run


_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "SHORT_BINSTRING",
        "BINSTRING",
        "STRING",
    }
)
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _memo_index(arg: object) -> int:
    """CPython's reading of a PUT/GET argument: ``p00`` is slot 0, though ``pickletools``
    decodes the protocol-0 ``00``/``01`` spelling as ``False``/``True`` (bools are ints)."""
    if not isinstance(arg, int):
        raise ValueError(f"memo index {arg!r} is not an integer")
    return int(arg)


def _globals_in(segment: bytes) -> set[str]:
    """The global names a pickle (already accepted by the VM) refers to, for reports.

    Decoded with ``pickletools.genops`` (an opcode decoder; nothing is resolved). STACK_GLOBAL
    operands are tracked through the memo the way pickle writers emit them; anything else is
    reported as ``<dynamic>``.
    """
    names: set[str] = set()
    memo: dict[int, str | None] = {}
    recent: list[str | None] = []
    for op, arg, _ in pickletools.genops(io.BytesIO(segment)):
        n = op.name
        if n in ("GLOBAL", "INST"):
            names.add(str(arg).replace(" ", "."))
        elif n in _STRING_OPS:
            recent.append(arg if isinstance(arg, str) else None)
        elif n in _GET_OPS:
            recent.append(memo.get(_memo_index(arg)))
        elif n == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
            continue
        elif n in _PUT_OPS:
            memo[_memo_index(arg)] = recent[-1] if recent else None
            continue
        elif n == "STACK_GLOBAL":
            mod, qual = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            names.add(f"{mod}.{qual}" if mod and qual else "<dynamic>")
            recent.clear()
            continue
        else:
            recent.append(None)
        del recent[:-2]
    return names


def _refuse_unsupported(det: Detection, name: str) -> None:
    if det.format in _UNSUPPORTED:
        raise UnsupportedFormatError(
            f"{det.format.value} files are not read by safeload",
            path=name or None,
            rule="formats.supported",
            detail=f"{_UNSUPPORTED[det.format]} ({det.detail})",
        )


@contextmanager
def _fail_closed(name: str, headline: str) -> Iterator[None]:
    """Turn any slip of a reader over hostile bytes into a refusal, never a traceback.

    The attacker controls every byte these readers see, so an unexpected exception is a reason
    to refuse the file, not a crash: running out of memory or stack is a limit, anything else is
    a malformed file. ``SafeloadError`` passes through untouched.
    """
    try:
        yield
    except SafeloadError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise LimitExceededError(
            "file too complex to read", path=name or None, rule="limits.reader", detail=repr(exc)
        ) from exc
    except Exception as exc:
        logger.debug("reader failed on %s", name, exc_info=True)
        raise FormatError(
            headline,
            path=name or None,
            rule="formats.malformed",
            detail=f"{type(exc).__name__}: {exc}"[:300],
        ) from exc


def _parse(
    data: bytes | bytearray | memoryview,
    *,
    name: str,
    limits: Limits,
    collect: list[str] | None = None,
    segments: list[bytes] | None = None,
    known_crcs: Mapping[tuple[int, int], int] | None = None,
    read_data: bool = True,
    safe_globals: Mapping[str, SafeGlobal] | None = None,
) -> _Parsed:
    """Fail closed: any slip in a reader on hostile bytes is a refusal, never a traceback."""
    with _fail_closed(name, "malformed file"):
        run = _runner(limits, collect, segments, safe_globals)
        nested = NestedStorages(run=run, limits=limits, name=name)
        with nested_scope(nested):
            parsed = _parse_unguarded(
                data, name=name, limits=limits, run=run, known_crcs=known_crcs, read_data=read_data
            )
        if not nested.storages:
            return parsed
        # Storages of checkpoints embedded with torch.storage._load_from_bytes (see _nested).
        storages = {**parsed.storages, **nested.storages}
        sizes = {**parsed.sizes, **{k: len(v) for k, v in nested.storages.items()}}
        return replace(parsed, storages=storages, sizes=sizes)


def _parse_unguarded(
    data: bytes | bytearray | memoryview,
    *,
    name: str,
    limits: Limits,
    run: PickleRunner,
    known_crcs: Mapping[tuple[int, int], int] | None = None,
    read_data: bool = True,
) -> _Parsed:
    """Detect, unwrap and run the container + pickle checks; tensors stay placeholders."""
    if len(data) > limits.max_file_bytes:
        raise LimitExceededError(
            f"file is {len(data)} bytes", path=name or None, rule="limits.max_file_bytes"
        )
    inner, wrappers = unwrap(data, limits=limits, name=name)
    fmt, detail = _detect_raw(inner, limits=limits, name=name)
    det = Detection(fmt, wrappers, detail)
    _refuse_unsupported(det, name)
    known = not wrappers
    crcs = known_crcs if known else None  # CRC hints describe the file, not unwrapped bytes
    if fmt is Format.TORCH_ZIP:
        tp: TorchParse = parse_torch_zip(
            inner, limits=limits, name=name, run=run, known_crcs=crcs, read_data=read_data
        )
        return _Parsed(fmt, tp.value, tp.storages, tp.offsets, wrappers, known, tp.sizes)
    if fmt is Format.TORCH_LEGACY:
        tp = parse_torch_legacy(inner, limits=limits, name=name, run=run)
        return _Parsed(fmt, tp.value, tp.storages, tp.offsets, wrappers, known, tp.sizes)
    if fmt is Format.PICKLE:
        value, end = run(inner, 0, None, name)
        if end != len(inner):
            raise FormatError(
                "bytes after the pickle's STOP opcode",
                path=name or None,
                rule="pickle.trailing_data",
                offset=end,
            )
        return _Parsed(fmt, value, {}, {}, wrappers, known)
    if fmt is Format.SAFETENSORS:
        header = parse_safetensors(inner, limits=limits, name=name)
        value = dict(header.specs)
        bufs = st_storages(inner, header)
        sizes = {k: len(v) for k, v in bufs.items()}
        return _Parsed(fmt, value, bufs, header.offsets, wrappers, known, sizes)
    if fmt is Format.NUMPY:
        return _Parsed(fmt, inner, {}, {}, wrappers, known)
    if fmt is Format.NPZ:
        archive, _ = npz_members(inner, limits=limits, name=name, known_crcs=crcs)
        return _Parsed(fmt, inner, {}, {}, wrappers, known, {}, archive)
    raise UnsupportedFormatError(  # pragma: no cover - every Format is handled above
        f"{fmt.value} files are not read", path=name or None, rule="formats.supported"
    )


def _table(parsed: _Parsed, limits: Limits, name: str) -> tuple[TensorInfo, ...]:
    rows = []
    for tname, spec in iter_specs(parsed.value):
        size = parsed.sizes.get(spec.storage.key)
        if size is None:
            raise FormatError(
                f"tensor {tname!r} names a storage the file does not have",
                path=name or None,
                rule="tensor.storage",
            )
        nbytes = check_spec(spec, size, limits=limits, path=name or None)
        base = parsed.offsets.get(spec.storage.key, -1)
        offset = (
            base + spec.offset * lookup(spec.dtype).itemsize
            if parsed.offsets_known and base >= 0
            else None
        )
        rows.append(TensorInfo(tname, spec.dtype, spec.shape, nbytes, offset, spec.storage.key))
        if len(rows) > limits.max_tensors:
            raise LimitExceededError(
                f"more than {limits.max_tensors} tensors",
                path=name or None,
                rule="limits.max_tensors",
            )
    return tuple(rows)


def _numpy_table(
    parsed: _Parsed, limits: Limits, name: str, *, check_data: bool
) -> tuple[TensorInfo, ...]:
    if parsed.format is Format.NUMPY:
        h = parse_npy(parsed.value, limits=limits, name=name)
        off = h.data_offset if parsed.offsets_known else None
        return (TensorInfo("", h.dtype.str, h.shape, h.nbytes, off),)
    archive = parsed.archive
    assert archive is not None
    names = archive.names()
    rows = []
    for member in names:
        m = archive.members[member]
        mname = f"{name}:{member}"
        if check_data:
            h = parse_npy(archive.read(member), limits=limits, name=mname)
        else:
            head = archive.head(member, _NPY_HEAD)
            h = parse_npy(head, limits=limits, name=mname, total=m.size)
        off = m.data_offset + h.data_offset if parsed.offsets_known and m.method == 0 else None
        rows.append(TensorInfo(member[: -len(".npy")], h.dtype.str, h.shape, h.nbytes, off, member))
    return tuple(rows)


def analyze(
    data: bytes | bytearray | memoryview,
    *,
    name: str = "",
    limits: Limits | None = None,
    check_data: bool = True,
    safe_globals: Mapping[str, SafeGlobal] | None = None,
) -> Analysis:
    """Validate everything about a file without materialising tensors; refuse by raising.

    ``check_data=False`` (``inspect``) skips what needs every tensor byte: zip CRCs of storage
    records and of ``.npz`` members. Structure, pickle and every tensor view are still checked.
    """
    limits = limits or Limits()
    segments: list[bytes] = []
    parsed = _parse(
        data,
        name=name,
        limits=limits,
        segments=segments,
        read_data=check_data,
        safe_globals=safe_globals,
    )
    if parsed.format in (Format.NUMPY, Format.NPZ):
        table = _numpy_table(parsed, limits, name, check_data=check_data)
        return Analysis(parsed.format, table, (), parsed.wrappers)
    table = _table(parsed, limits, name)
    names: set[str] = set()
    with _fail_closed(name, "malformed pickle"):  # a second decoder over hostile bytes
        for segment in segments:
            names |= _globals_in(segment)
    return Analysis(parsed.format, table, tuple(sorted(names)), parsed.wrappers)


def read(
    data: bytes | bytearray | memoryview,
    *,
    name: str = "",
    limits: Limits | None = None,
    framework: Framework = "torch",
    known_crcs: Mapping[tuple[int, int], int] | None = None,
    safe_globals: Mapping[str, SafeGlobal] | None = None,
) -> ReadResult:
    """Read a file into plain values with tensors (torch) or arrays (numpy) over its buffer.

    NumPy files always give NumPy arrays (they are NumPy data); safetensors and PyTorch files
    give the requested framework's tensors. Tensors share memory with ``data`` when it is
    writable; a read-only buffer is copied once per storage for torch (``torch.frombuffer``
    needs writable memory) and used as-is for NumPy (arrays are then read-only).
    ``known_crcs`` are CRC-32s of ``(offset, size)`` ranges of ``data`` computed while it was
    filled (see ``_zip.StreamingCrc``); zip members whose exact range matches skip a second pass.
    ``safe_globals`` are the user classes the pickle reader may build (``None``: the program's
    whole registry, ``{}``: none); the loader passes what the policy selects from the registry.
    """
    if framework not in ("torch", "numpy"):
        raise UsageError(f"unknown framework {framework!r}", rule="formats.framework")
    limits = limits or Limits()
    parsed = _parse(
        data, name=name, limits=limits, known_crcs=known_crcs, safe_globals=safe_globals
    )
    with _fail_closed(name, "tensors could not be built from this file"):
        # every view was checked; anything else going wrong is still a refusal
        return _build(parsed, limits=limits, name=name, framework=framework)


def _build(parsed: _Parsed, *, limits: Limits, name: str, framework: Framework) -> ReadResult:
    if parsed.format in (Format.NUMPY, Format.NPZ):
        table = _numpy_table(parsed, limits, name, check_data=False)
        if parsed.format is Format.NUMPY:
            value: Any = read_npy(parsed.value, limits=limits, name=name)
        else:
            archive = parsed.archive
            assert archive is not None
            value = {
                m[: -len(".npy")]: read_npy(archive.read(m), limits=limits, name=f"{name}:{m}")
                for m in archive.names()
            }
        return ReadResult(parsed.format, value, table, parsed.wrappers)
    table = _table(parsed, limits, name)
    mat = Materializer(parsed.storages, framework=framework, limits=limits, name=name)
    value = mat.convert(parsed.value)
    return ReadResult(parsed.format, value, table, parsed.wrappers)


def unsafe_globals(
    data: bytes | bytearray | memoryview,
    *,
    name: str = "",
    limits: Limits | None = None,
    safe_globals: Mapping[str, SafeGlobal] | None = None,
) -> list[str]:
    """Every global the file's pickles name that no allowlist grants, without running anything.

    Mirrors ``torch.serialization.get_unsafe_globals_in_checkpoint``: a review list, not a
    verdict. Non-pickle formats have none.
    """
    collect: list[str] = []
    try:
        _parse(
            data, name=name, limits=limits or Limits(), collect=collect, safe_globals=safe_globals
        )
    except UnsupportedFormatError:
        raise
    except SafeloadError:
        logger.debug("unsafe_globals: %s stopped early", name, exc_info=True)
    return sorted(set(collect))
