"""``safeload.load``: a drop-in for ``torch.load(weights_only=True)`` that never unpickles.

Same call shape as ``torch.load`` so code moves over by changing an import, but the options
that would run code are refused, loudly, instead of honoured: ``weights_only=False``, a custom
``pickle_module``, extra unpickler arguments, a callable ``map_location``, and the
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment override. The file is read once into private
memory (or mapped copy-on-write with ``mmap=True``) and every later stage works on that one
buffer; a verified file object is read through its ``buffer()``, never re-opened by path.
"""

from __future__ import annotations

import contextlib
import logging
import mmap as _mmap
import os
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from safeload.errors import PolicyViolation, SafeloadError, SandboxError, SourceError, UsageError
from safeload.formats._detect import Format
from safeload.formats._read import ReadResult, TensorInfo, analyze, read, unsafe_globals
from safeload.formats._safe_globals import SafeGlobal
from safeload.formats._zip import ChunkedCrc, StreamingCrc, central_entries
from safeload.policy import Limits, Policy

if TYPE_CHECKING:
    from safeload.policy import PolicyGate
    from safeload.sandbox._runner import SandboxInput, WorkerSlot

__all__ = ["ModelInfo", "get_unsafe_globals", "inspect", "load"]

logger = logging.getLogger("safeload")

_FORCE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_CPU_NAMES = frozenset({"cpu"})
_PIPELINE_MIN = 16 << 20
_CHUNK = 8 << 20
_READERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A file's format and tensor table, read without touching tensor data."""

    path: str
    format: Format
    size: int
    tensors: tuple[TensorInfo, ...]
    wrappers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format.value,
            "size": self.size,
            "wrappers": list(self.wrappers),
            "tensors": [t.to_dict() for t in self.tensors],
        }


# -- getting the bytes -----------------------------------------------------------------------
def _name_of(f: object) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f) if isinstance(os.fspath(f), str) else os.fsdecode(os.fspath(f))
    path = getattr(f, "path", None) or getattr(f, "name", None)
    return str(path) if isinstance(path, (str, os.PathLike)) else ""


def _read_fd(
    fd: int, *, use_mmap: bool, name: str, limits: Limits
) -> tuple[memoryview, dict[tuple[int, int], int]]:
    """The file's bytes in private memory, plus CRC-32s of its zip members' data if it is a zip.

    The read goes in chunks while one worker thread folds each finished chunk into the CRCs
    of the stored zip members it covers (the central directory is read first, from the end of
    the file), so the CRC check costs almost nothing on top of the read itself.
    """
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise SourceError(
            "cannot stat input", path=name, rule="source.open", detail=str(exc)
        ) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SourceError(
            f"{name or 'input'} is {kind}",
            path=name,
            rule="source.file",
            detail="pass one model file (safeload.source resolves folders and repos)",
        )
    size = st.st_size
    if size > limits.max_file_bytes:
        from safeload.errors import LimitExceededError

        raise LimitExceededError(f"file is {size} bytes", path=name, rule="limits.max_file_bytes")
    if size == 0:
        return memoryview(bytearray()), {}
    if use_mmap:
        # MAP_PRIVATE + PROT_WRITE: copy-on-write pages, so tensors can be writable views
        # without the file (or anyone else's mapping of it) ever changing.
        try:
            mm = _mmap.mmap(
                fd, size, flags=_mmap.MAP_PRIVATE, prot=_mmap.PROT_READ | _mmap.PROT_WRITE
            )
        except OSError as exc:
            raise SourceError(
                "cannot map file", path=name, rule="source.read", detail=str(exc)
            ) from None
        return memoryview(mm), {}
    # Private anonymous pages that the read fills. Their page faults (one per 4 KiB) cost more
    # than the copy itself, so small files are read in one go, and large ones in chunks on one
    # thread per core: the kernel takes faults on different pages of one mapping in parallel.
    buf = _mmap.mmap(
        -1, size, flags=_mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS,
        prot=_mmap.PROT_READ | _mmap.PROT_WRITE,
    )  # fmt: skip
    view = memoryview(buf)
    if size < _PIPELINE_MIN:
        _fill(fd, view, 0, size, name)
        return view, {}
    def pread(off: int, n: int) -> bytes:
        return os.pread(fd, n, off)

    return view, _pipelined(view, pread, lambda start, end: _fill(fd, view, start, end, name))


def _pipelined(
    view: memoryview, pread: Callable[[int, int], bytes], fill: Callable[[int, int], None]
) -> dict[tuple[int, int], int]:
    """``fill`` every chunk of ``view`` on one thread per core, folding zip member CRCs as it goes.

    ``pread`` reads the source (the central directory is read first, from its end, so the
    member ranges are known before the fill starts). Returns CRC-32s by ``(offset, size)``.
    """
    size = len(view)
    entries = central_entries(pread, size)
    chunked = ChunkedCrc.from_entries(pread, entries) if entries else None
    streaming = StreamingCrc(view, entries) if entries and chunked is None else None

    def fill_and_fold(start: int, end: int) -> None:
        fill(start, end)
        if chunked is not None:
            chunked.feed(view, start, end)  # while the chunk is still in this core's cache

    with ThreadPoolExecutor(max_workers=_READERS) as readers:
        chunks = [(start, min(size, start + _CHUNK)) for start in range(0, size, _CHUNK)]
        pending = [readers.submit(fill_and_fold, start, end) for start, end in chunks]
        for (_, end), job in zip(chunks, pending, strict=True):
            job.result()
            if streaming is not None:
                streaming.feed(end)  # without crc32_combine: in file order, on this thread
    if chunked is not None:
        return chunked.result()
    return {} if streaming is None else streaming.result()


def _fill(fd: int, view: memoryview, start: int, end: int, name: str) -> None:
    got = start
    while got < end:
        try:
            n = os.preadv(fd, [view[got:end]], got)
        except OSError as exc:
            raise SourceError(
                "cannot read file", path=name, rule="source.read", detail=str(exc)
            ) from None
        if n == 0:
            raise SourceError("file shrank while being read", path=name, rule="source.read")
        got += n


def _open_path(f: str | os.PathLike[str], name: str) -> int:
    try:
        # O_NONBLOCK: a FIFO named like a model must be refused, not hang open().
        return os.open(f, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SourceError(
            f"cannot open {name}", path=name, rule="source.open", detail=str(exc)
        ) from None


def _buffer_of(f: object, *, use_mmap: bool, limits: Limits) -> tuple[memoryview, str]:
    """One private buffer holding the file's bytes, and a name for messages."""
    view, name, _ = _bytes_of(f, use_mmap=use_mmap, limits=limits)
    return view, name


def _bytes_of(
    f: object, *, use_mmap: bool, limits: Limits, take: bool = False
) -> tuple[memoryview, str, dict[tuple[int, int], int]]:
    name = _name_of(f)
    take_fn = getattr(f, "take_buffer", None) if take else None
    if take_fn is not None and callable(take_fn):
        # A VerifiedFile handing its private copy over: tensors become views of it, no copy.
        return memoryview(take_fn()).cast("B"), name, {}
    buffer_fn = getattr(f, "buffer", None)
    if buffer_fn is not None and callable(buffer_fn):
        # A VerifiedFile: exactly the hashed bytes.
        return memoryview(buffer_fn()).cast("B"), name, {}
    if isinstance(f, (bytes, bytearray, memoryview)):
        return memoryview(f).cast("B"), name, {}
    if isinstance(f, (str, os.PathLike)):
        fd = _open_path(f, name)
        try:
            view, crcs = _read_fd(fd, use_mmap=use_mmap, name=name, limits=limits)
            return view, name, crcs
        finally:
            os.close(fd)
    if hasattr(f, "read"):
        fileobj: IO[bytes] = f  # type: ignore[assignment]
        try:
            if use_mmap and hasattr(fileobj, "fileno"):
                view, crcs = _read_fd(fileobj.fileno(), use_mmap=True, name=name, limits=limits)
                return view, name, crcs
            data = fileobj.read()
        except OSError as exc:
            raise SourceError(
                "cannot read file object", path=name or None, rule="source.read", detail=str(exc)
            ) from None
        if not isinstance(data, (bytes, bytearray)):
            raise UsageError("file object must be opened in binary mode", rule="load.file")
        return memoryview(bytearray(data)), name, {}
    raise UsageError(
        f"cannot load from {type(f).__name__}",
        rule="load.file",
        detail="pass a path, a binary file object, bytes, or a verified file",
    )


# -- options ---------------------------------------------------------------------------------
def _check_options(
    map_location: object, pickle_module: object, weights_only: object, extra: Mapping[str, Any]
) -> str | None:
    """Refuse code-running options; return the device to move tensors to (None: stay on CPU)."""
    if os.environ.get(_FORCE_ENV, "").strip() not in ("", "0"):
        logger.warning(
            "%s is set; safeload ignores it and loads weights only (it never unpickles)", _FORCE_ENV
        )
    if weights_only is False:
        raise UsageError(
            "weights_only=False is not supported",
            rule="load.weights_only",
            detail="it would let the file run code; use safeload.get_unsafe_globals to review what "
            "the file needs and allowlist classes with add_safe_globals",
        )
    if pickle_module is not None:
        raise UsageError(
            "a custom pickle_module is not supported",
            rule="load.pickle_module",
            detail="safeload reads pickles with its own allowlist-only interpreter",
        )
    if extra:
        raise UsageError(
            f"unpickler arguments are not supported: {', '.join(sorted(extra))}",
            rule="load.pickle_load_args",
        )
    return _device_of(map_location)


def _device_of(map_location: object) -> str | None:
    if map_location is None:
        return None
    if callable(map_location):
        raise UsageError(
            "a callable map_location is not supported",
            rule="load.map_location",
            detail="load to CPU, then move tensors yourself",
        )
    if isinstance(map_location, Mapping):
        targets = {str(v) for v in map_location.values()}
        if not targets <= _CPU_NAMES:
            raise UsageError(
                "map_location dicts may only map to 'cpu'",
                rule="load.map_location",
                detail="pass a single device string to move every tensor",
            )
        return None
    device = str(map_location)
    return None if device in _CPU_NAMES else device


def _move(value: Any, device: str) -> Any:
    """Move every tensor to ``device`` after loading (shared tensors stay one object)."""
    import torch

    memo: dict[int, Any] = {}

    def walk(v: Any) -> Any:
        if id(v) in memo:
            return memo[id(v)]
        out = v
        if isinstance(v, torch.nn.Parameter):
            out = torch.nn.Parameter(v.data.to(device), requires_grad=v.requires_grad)
        elif isinstance(v, torch.Tensor):
            out = v.to(device)
        elif isinstance(v, dict):
            for k in v:
                v[k] = walk(v[k])
        elif isinstance(v, list):
            for i, item in enumerate(v):
                v[i] = walk(item)
        elif type(v) is tuple:
            out = tuple(walk(item) for item in v)
        memo[id(v)] = out
        return out

    return walk(value)


# -- public API ------------------------------------------------------------------------------
def load(
    f: Any,
    map_location: Any = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = True,
    mmap: bool | None = None,
    framework: Literal["torch", "numpy"] = "torch",
    limits: Limits | None = None,
    policy: Policy | str | os.PathLike[str] | None = None,
    sandbox: bool | None = None,
    **pickle_load_args: Any,
) -> Any:
    """Load a model file's tensors and plain values, running nothing the file names.

    Accepts what ``torch.load`` accepts (a path, a binary file object, bytes) plus a verified
    file from ``safeload.verify`` (its exact hashed bytes are used). Reads PyTorch zip and
    legacy checkpoints, safetensors, NumPy ``.npy``/``.npz`` and plain pickles, by content.
    ``framework="numpy"`` returns NumPy arrays and works without torch. Raises a
    :class:`~safeload.errors.RefusedError` subclass when the file is refused.

    ``policy`` (a ``Policy`` or a policy file) or, when not passed, a configured policy
    (``$SAFELOAD_POLICY``, ``./safeload.toml``, ``[tool.safeload]``, ``/etc/safeload``) sets
    the limits (a caller's ``limits`` only lowers them) and decides after reading; each
    decision is audited, and in audit mode a violating file still loads. With no policy at
    all the built-in default decides (raw pickles, for one, are not in its allowed formats).
    The policy's ``pickle.extra_globals`` narrows which ``add_safe_globals`` classes the
    pickle reader may build.

    ``sandbox``: ``None`` lets the policy decide (``sandbox.mode``; a verified file counts as
    trusted), ``True`` parses in the sandboxed worker (a ``SandboxError`` if it cannot run
    with the policy's ``required_layers``), ``False`` parses in-process, which the policy
    refuses before reading when it requires the sandbox for this file.
    """
    return load_detailed(
        f, map_location, pickle_module, weights_only=weights_only, mmap=mmap,
        framework=framework, limits=limits, policy=policy, sandbox=sandbox, **pickle_load_args,
    ).value  # fmt: skip


@dataclass(frozen=True, slots=True)
class Loaded:
    """What :func:`load_detailed` found out along the way (for conversions and reports)."""

    value: Any
    format: str
    """The format the reader detected (in the worker, when ``sandboxed``)."""
    sandboxed: bool
    layers: tuple[str, ...] = ()
    """The sandbox layers the worker reported applied."""


def load_detailed(
    f: Any,
    map_location: Any = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = True,
    mmap: bool | None = None,
    framework: Literal["torch", "numpy"] = "torch",
    limits: Limits | None = None,
    policy: Policy | str | os.PathLike[str] | None = None,
    sandbox: bool | None = None,
    **pickle_load_args: Any,
) -> Loaded:
    """:func:`load`, also saying which format was read and where (private: ``convert``)."""
    device = _check_options(map_location, pickle_module, weights_only, pickle_load_args)
    if framework not in ("torch", "numpy"):
        raise UsageError(f"unknown framework {framework!r}", rule="load.framework")
    if framework == "numpy" and device is not None:
        raise UsageError("map_location needs framework='torch'", rule="load.map_location")
    with contextlib.ExitStack() as stack:
        early = None
        if sandbox is True and sys.platform == "linux":
            # Asked for outright: get a worker before resolving the policy, so a first job's
            # fork server starts while this process imports and reads the policy and the file.
            from safeload.sandbox._runner import WorkerSlot

            early = stack.enter_context(WorkerSlot())
        return _load_with(f, device, framework, limits, policy, sandbox, bool(mmap), early)


def _load_with(
    f: Any,
    device: str | None,
    framework: Literal["torch", "numpy"],
    limits: Limits | None,
    policy: Policy | str | os.PathLike[str] | None,
    sandbox: bool | None,
    mmap: bool,
    early: WorkerSlot | None,
) -> Loaded:
    from safeload.formats._safe_globals import get_safe_globals
    from safeload.policy import policy_gate, select_extra_globals

    gate = policy_gate(policy, limits, source=f, registered_globals=get_safe_globals())
    limits = gate.limits
    layers: tuple[str, ...] = ()
    sandboxed = _use_sandbox(sandbox, gate, f)
    if sandboxed:
        value, name, fmt, layers = _load_sandboxed(f, gate, framework, mmap, early)
    else:
        extra = select_extra_globals(gate.policy, get_safe_globals())
        data, name, crcs = _bytes_of(f, use_mmap=mmap, limits=limits, take=True)
        result = _read_buffer(
            data,
            name=name,
            limits=limits,
            framework=framework,
            known_crcs=crcs,
            safe_globals=extra,
        )
        shapes = [t.shape for t in result.tensors]
        fmt = result.format.value
        _decide(gate, data, name=name, fmt=fmt, shapes=shapes, sandboxed=False)
        value = result.value
    if device is not None:
        try:
            value = _move(value, device)
        except (RuntimeError, AssertionError, ValueError) as exc:  # no such device here
            raise UsageError(
                f"cannot move tensors to {device!r}",
                path=name or None,
                rule="load.map_location",
                detail=str(exc)[:200],
            ) from exc
    return Loaded(value, fmt, sandboxed, layers)


def _read_buffer(
    data: memoryview,
    *,
    name: str,
    limits: Limits,
    framework: Literal["torch", "numpy"],
    known_crcs: Mapping[tuple[int, int], int] | None = None,
    safe_globals: Mapping[str, SafeGlobal] | None = None,
) -> ReadResult:
    """The one place where the file's bytes, its format and its tensor table are all known.

    Policy decisions and audit events hook in here (after reading, before returning).
    """
    result = read(
        data,
        name=name,
        limits=limits,
        framework=framework,
        known_crcs=known_crcs,
        safe_globals=safe_globals,
    )
    logger.debug(
        "loaded %s: %s, %d tensors, %d bytes",
        name or "<buffer>",
        result.format.value,
        len(result.tensors),
        len(data),
    )
    return result


def _decide(
    gate: PolicyGate,
    data: memoryview,
    *,
    name: str,
    fmt: str,
    shapes: Sequence[Sequence[int]],
    sandboxed: bool,
) -> None:
    """The policy's verdict on what was read (always: with no policy, the default's)."""
    try:
        gate.check(data, name=name, fmt=fmt, shapes=shapes, sandboxed=sandboxed)
    except PolicyViolation as exc:
        if exc.rule == "formats.allowed":
            exc.detail = (
                f"{exc.detail}; to allow it, add {fmt!r} to formats.allowed in your policy "
                "(safeload.toml, or load(..., policy=...))"
            )
        raise


# -- the sandbox -----------------------------------------------------------------------------
def _trusted(f: object, gate: PolicyGate) -> bool:
    """A file ``safeload.verify`` returned: it only exists once a trusted signer checked out."""
    if not gate.verified or isinstance(f, (str, os.PathLike, bytes, bytearray, memoryview)):
        return False  # and no need to import the signing stack (cryptography) to know it
    from safeload.signing import VerifiedFile

    return isinstance(f, VerifiedFile)


def _use_sandbox(sandbox: bool | None, gate: PolicyGate, f: object) -> bool:
    from safeload.policy import needs_sandbox

    if sandbox is not None and type(sandbox) is not bool:
        raise UsageError("sandbox must be True, False or None", rule="load.sandbox")
    required = needs_sandbox(gate.policy, verified=_trusted(f, gate))
    if sandbox is False and required and gate.policy.mode == "enforce":
        # Refuse before any byte is parsed: parsing in-process is what the policy forbids.
        raise PolicyViolation(
            f"refused by policy: sandbox mode {gate.policy.sandbox.mode!r} requires parsing "
            "in the sandbox worker, and sandbox=False was passed",
            path=_name_of(f) or None,
            rule="sandbox.mode",
            detail="pass sandbox=None (the policy decides) or sandbox=True",
        )
    return required if sandbox is None else sandbox


def _load_sandboxed(
    f: object,
    gate: PolicyGate,
    framework: Literal["torch", "numpy"],
    use_mmap: bool,
    early: WorkerSlot | None = None,
) -> tuple[Any, str, str, tuple[str, ...]]:
    """Parse in the worker; decide on what it returned; give back (value, name, format, layers).

    The parent does the byte work an in-process load does (reads the file into private memory
    on every core, folding zip CRCs as it goes, or maps it with ``mmap=True``) while a worker
    starts; the worker then parses a descriptor of the same bytes (the caller's file, or a
    sealed memfd of bytes we hold: a verified file is never re-read from its path), told the
    CRCs so it need not touch tensor data. Its answer says *where* the tensors are; they are
    built over the parent's buffer, so the caller gets the memory an in-process load gives.
    The format is the one the worker's reader detected; the shapes, those of what came back.
    """
    from safeload.sandbox._runner import WorkerSlot, run_in_sandbox

    limits = gate.limits
    name = _name_of(f)
    owned = contextlib.nullcontext(early) if early is not None else WorkerSlot()
    with owned as slot, _sandbox_input(f, use_mmap=use_mmap, limits=limits) as staged:
        item, data, unchanged = staged
        try:
            result = run_in_sandbox(
                "read",
                [item],
                limits=limits,
                required_layers=gate.policy.sandbox.required_layers,
                framework=framework,
                slot=slot,
            )
        except SafeloadError as exc:
            exc.path = _caller_path(exc.path, item.name, name)
            raise
        unchanged()
    fmt = result.meta.get("format")
    if fmt not in {known.value for known in Format}:
        raise SandboxError(
            "the worker reported no known format", path=name or None, rule="sandbox.result"
        )
    shapes: Sequence[tuple[int, ...]] = [tuple(t.shape) for t in result.tensors.values()]
    _decide(gate, data, name=name, fmt=str(fmt), shapes=shapes, sandboxed=True)
    return result.value, name, str(fmt), tuple(r.name for r in result.layers if r.applied)


def _caller_path(reported: str | None, sent: str, name: str) -> str | None:
    """Name the caller's file in errors, not the name the worker was given."""
    if reported is None or not sent:
        return reported or name or None
    if reported == sent or reported.startswith(sent + ":"):
        return (name or "<buffer>") + reported[len(sent) :]
    return reported


_Staged = tuple["SandboxInput", memoryview, Callable[[], None]]


@contextmanager
def _sandbox_input(f: object, *, use_mmap: bool, limits: Limits) -> Iterator[_Staged]:
    """The worker's input, the parent's own copy of the same bytes, and a check that the
    file did not change while both were read.

    A path is opened once: the parent reads (or maps) that descriptor and the worker parses the
    same one. Anything else (bytes, a file object, a verified file's private memory) is
    written to a sealed memfd, which nobody can change afterwards.
    """
    from safeload.sandbox._runner import SandboxInput

    name = _name_of(f)
    if isinstance(f, (str, os.PathLike)):
        fd = _open_path(f, name)
        try:
            before = _identity(fd, name)
            data, crcs = _read_fd(fd, use_mmap=use_mmap, name=name, limits=limits)
            if use_mmap and len(data) >= _PIPELINE_MIN:
                # Fault the mapping in and fold the CRCs on every core, as an in-process
                # mmap load's CRC pass does, so the worker need not read tensor data at all.
                crcs = _pipelined(data, lambda off, n: os.pread(fd, n, off), lambda s, e: None)
            real = Path(os.fsdecode(os.path.realpath(f)))

            def unchanged() -> None:
                if _identity(fd, name) != before:
                    raise SourceError(
                        "file changed while it was being loaded", path=name or None,
                        rule="source.read",
                        detail="its size, modification or change time moved during the load",
                    )  # fmt: skip

            yield SandboxInput(fd, real.name, data, crcs, real), data, unchanged
        finally:
            os.close(fd)
        return
    data, name, _ = _bytes_of(f, use_mmap=use_mmap, limits=limits, take=True)
    fd, crcs = _sealed_copy(data, name)
    try:
        yield SandboxInput(fd, "input", data, crcs), data, lambda: None
    finally:
        os.close(fd)


def _identity(fd: int, name: str) -> tuple[int, int, int, int, int]:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise SourceError(
            "cannot stat the file being loaded", path=name or None, rule="source.read",
            detail=str(exc),
        ) from None  # fmt: skip
    # ctime too: a writer can set mtime back, but not ctime.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_SEALS = ("F_SEAL_SEAL", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE")


def _sealed_copy(data: memoryview, name: str) -> tuple[int, dict[tuple[int, int], int]]:
    """A memfd holding exactly ``data``, sealed against any change, plus zip CRC hints."""
    import fcntl

    view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    try:
        fd = os.memfd_create("safeload-input", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as exc:
        raise SandboxError(
            "cannot stage the input for the sandbox worker", path=name or None,
            rule="sandbox.inputs", detail=str(exc),
        ) from None  # fmt: skip
    try:
        os.ftruncate(fd, len(view))

        def put(start: int, end: int) -> None:
            while start < end:
                start += os.pwrite(fd, view[start:end], start)

        if len(view) < _PIPELINE_MIN:
            put(0, len(view))
            crcs: dict[tuple[int, int], int] = {}
        else:
            crcs = _pipelined(view, lambda off, n: bytes(view[off : off + n]), put)
        seals = 0
        for seal in _SEALS:
            seals |= getattr(fcntl, seal)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except OSError as exc:
        os.close(fd)
        raise SandboxError(
            "cannot stage the input for the sandbox worker", path=name or None,
            rule="sandbox.inputs", detail=str(exc),
        ) from None  # fmt: skip
    except BaseException:
        os.close(fd)
        raise
    return fd, crcs


def inspect(path: Any, *, limits: Limits | None = None) -> ModelInfo:
    """Format and tensor table (name, dtype, shape, bytes, offset) without reading tensor data."""
    limits = limits or Limits()
    data, name = _buffer_of(path, use_mmap=True, limits=limits)
    analysis = analyze(data, name=name, limits=limits, check_data=False)
    return ModelInfo(name, analysis.format, len(data), analysis.tensors, analysis.wrappers)


def get_unsafe_globals(path: Any, *, limits: Limits | None = None) -> list[str]:
    """The globals a file's pickles need that no allowlist grants (like torch's
    ``get_unsafe_globals_in_checkpoint``); found statically, nothing is imported or called."""
    limits = limits or Limits()
    data, name = _buffer_of(path, use_mmap=True, limits=limits)
    return unsafe_globals(data, name=name, limits=limits)
