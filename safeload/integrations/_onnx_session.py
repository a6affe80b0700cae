"""``safeload.onnx_session``: an onnxruntime session over checked, verified bytes.

``onnxruntime.InferenceSession(path)`` parses whatever the file says: operators from any domain
a registered library provides, external data from any path, execution providers the caller
never meant. Here the model's bytes are read once into memory, checked with
:func:`~safeload.integrations._onnx_check.check_onnx_graph` against the policy's ``onnx``
section, judged by the policy like any load (``formats.allowed`` must hold ``"onnx"``; the
decision is audited), and only *those bytes* reach onnxruntime. Nothing re-opens the path.

External data files are read into memory too (from a :class:`~safeload.signing.VerifiedModel`:
its verified bytes; a location the verification did not cover is refused) and handed to
onnxruntime with ``add_external_initializers_from_files_in_memory``. onnxruntime's folder for
external data is an empty private directory, so a tensor it would look up on disk anyway fails
to load instead of reading unchecked bytes.

Threat model: the model bytes, its external data and every name in them are the attacker's;
the providers, thread count and inputs are the caller's. Inputs are still checked (names,
dtypes, ranks, fixed dims, sizes) because a native kernel fed a shape or type the graph did
not declare is the classic way into an out-of-bounds read, and a clear refusal beats a crash.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from safeload.errors import (
    FormatError,
    LimitExceededError,
    PolicyViolation,
    SafeloadError,
    SourceError,
    UsageError,
)
from safeload.integrations._onnx_check import OnnxGraphInfo, check_onnx_graph

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort
    from onnx import ModelProto, TensorProto

    from safeload.policy import Limits, Policy, PolicyGate
    from safeload.signing import VerifiedFile, VerifiedModel

__all__ = ["GuardedSession", "hardened_session_options", "inference_session_class", "onnx_session"]

logger = logging.getLogger(__name__)

_CPU = "CPUExecutionProvider"
_EXTERNAL = 1  # TensorProto.EXTERNAL
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
"""ONNX input types a NumPy array can carry, by onnxruntime's type string. Strings are
handled apart (object or unicode arrays); other types (bfloat16, sequences, maps) are refused
as inputs rather than guessed."""
_STRING = "tensor(string)"

_SESSION_CONFIG = {
    # The model is ONNX bytes, never the ORT flatbuffer format (a second parser).
    "session.load_model_format": "ONNX",
    # Allocators from this session only, not ones shared through the process environment.
    "session.use_env_allocators": "0",
    # Refuse opsets onnxruntime has not released (onnxruntime's default, made explicit).
    "session.allow_released_opsets_only": "1",
    # Never write an EP-context model (a file next to the model) while creating the session.
    "ep.context_enable": "0",
}
"""Config entries every guarded session gets. Prepacking (``session.disable_prepacking``)
only trades memory for speed, so it is left at onnxruntime's default."""


def hardened_session_options(*, intra_op_num_threads: int | None = None) -> ort.SessionOptions:
    """``SessionOptions`` for a model safeload checked: nothing that loads code or writes files.

    No custom op library is ever registered (the graph check refuses custom domains, and no
    option here can name a library), profiling and optimized-model output are off, logging is
    quiet (warnings that name attacker strings stay out of the application's stderr), and the
    config entries in ``_SESSION_CONFIG`` are set.
    """
    import onnxruntime as ort

    if intra_op_num_threads is not None and (
        type(intra_op_num_threads) is not int or intra_op_num_threads < 0
    ):
        raise UsageError(
            "intra_op_num_threads must be a non-negative int", rule="onnx.intra_op_num_threads"
        )
    options = ort.SessionOptions()
    options.enable_profiling = False
    options.optimized_model_filepath = ""
    options.log_severity_level = 3
    if intra_op_num_threads is not None:
        options.intra_op_num_threads = intra_op_num_threads
    for key, value in _SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    return options


def inference_session_class() -> type[ort.InferenceSession]:
    """onnxruntime's own ``InferenceSession`` class, even while ``safeload.patch()`` has put
    a guard at ``onnxruntime.InferenceSession`` (the guard itself must reach the real class)."""
    from onnxruntime.capi.onnxruntime_inference_collection import InferenceSession

    cls: type[ort.InferenceSession] = InferenceSession
    return cls


# -- the source ------------------------------------------------------------------------------
class _Source:
    """What was passed, resolved: a name, a folder for external data, verified files if any."""

    def __init__(self, model: object, name: str | None) -> None:
        from safeload.signing import VerifiedFile, VerifiedModel

        self.verified: Mapping[str, VerifiedFile] | None = None
        self.file: VerifiedFile | None = None
        self.path: Path | None = None
        self.data: bytes | None = None
        if isinstance(model, VerifiedModel):
            self.file = _pick(model, name)
            self.verified = model.files
            self.root: Path | None = Path(model.root)
        elif isinstance(model, VerifiedFile):
            if name is not None and name != model.name:
                raise UsageError("name selects a file of a VerifiedModel", rule="onnx.name")
            self.file = model
            self.verified = {model.name: model}
            parts = len(PurePosixPath(model.name).parts)
            self.root = Path(model.path).parents[parts - 1] if parts else None
        elif isinstance(model, str | os.PathLike):
            self.path = Path(os.fsdecode(model))
            self.root = self.path.parent
        elif isinstance(model, bytes | bytearray | memoryview):
            self.data = bytes(model)
            self.root = None
        else:
            raise UsageError(
                f"cannot run an ONNX model from {type(model).__name__}",
                rule="onnx.model",
                detail="pass a path, bytes, or what safeload.verify returned",
            )
        if self.file is not None:
            self.name = self.file.path or self.file.name
        else:
            self.name = "" if self.path is None else str(self.path)

    @property
    def gate_source(self) -> object:
        return self.file if self.file is not None else self.path


def _pick(model: VerifiedModel, name: str | None) -> VerifiedFile:
    if name is not None:
        try:
            return model.files[name]
        except KeyError:
            raise UsageError(
                f"{name!r} is not a verified file of this model", rule="onnx.name"
            ) from None
    found = [f for n, f in model.files.items() if n.endswith(".onnx")]
    if len(found) != 1:
        raise UsageError(
            f"the verified model holds {len(found)} .onnx files",
            rule="onnx.name",
            detail="pass name='<file>.onnx' to choose one",
        )
    return found[0]


def _read_once(path: Path, limit: int, name: str) -> bytes:
    """The file's bytes, read once: a regular file, at most ``limit`` bytes."""
    try:
        # O_NONBLOCK: a FIFO named like a model must be refused, not hang open().
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(
            f"cannot open {name}", path=name, rule="source.open", detail=exc.strerror
        ) from None
    try:
        return _read_fd(fd, limit, name)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int, name: str) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{name} is not a regular file", path=name, rule="source.file")
    if st.st_size > limit:
        raise LimitExceededError(
            f"file is {st.st_size} bytes", path=name, rule="limits.max_file_bytes"
        )
    with os.fdopen(os.dup(fd), "rb") as f:
        data = f.read(st.st_size + 1)
    if len(data) != st.st_size:
        raise SourceError("file changed size while being read", path=name,
                          rule="source.read")  # fmt: skip
    return data


# -- external data ---------------------------------------------------------------------------
def _external_locations(model: ModelProto) -> set[str]:
    """Every external data location in the model: graphs, subgraphs, functions, attributes.

    The same places the graph check walks; one missed here would make onnxruntime look on disk
    (in an empty folder: it fails, it does not read unchecked bytes).
    """
    found: set[str] = set()

    def tensor(t: TensorProto) -> None:
        if t.data_location == _EXTERNAL:
            found.update(e.value for e in t.external_data if e.key == "location")

    stack = [model.graph]
    stack.extend(g for info in model.training_info for g in (info.initialization, info.algorithm))
    # Attribute lists: each node's, and each function's default values (IR 9), which the
    # runtime gives a node that omits the attribute when it inlines the function.
    attrs = [list(node.attribute) for function in model.functions for node in function.node]
    attrs.extend(list(function.attribute_proto) for function in model.functions)
    while stack or attrs:
        if stack:
            graph = stack.pop()
            for t in graph.initializer:
                tensor(t)
            for sp in graph.sparse_initializer:
                tensor(sp.values)
                tensor(sp.indices)
            attrs.extend(list(node.attribute) for node in graph.node)
            continue
        for attr in attrs.pop():
            if attr.HasField("g"):
                stack.append(attr.g)
            stack.extend(attr.graphs)
            if attr.HasField("t"):
                tensor(attr.t)
            for t in attr.tensors:
                tensor(t)
            sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sp in [*sparse, *attr.sparse_tensors]:
                tensor(sp.values)
                tensor(sp.indices)
    return found


def _external_files(data: bytes, source: _Source, limits: Limits, name: str) -> dict[str, bytes]:
    """Normalized location -> the bytes of that side file, from verified memory or read once.

    Each file is read once however many spellings (``w.bin``, ``./w.bin``) name it, so a
    model cannot multiply one big file in memory by naming it many ways; onnxruntime
    normalizes locations the same way when it looks them up.
    """
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(data)  # parsed fine a moment ago, in check_onnx_graph
    locations = _external_locations(model)
    del model
    files: dict[str, bytes] = {}
    total = len(data)
    for location in sorted(locations):
        key = os.path.normpath(location).replace(os.sep, "/")
        if key not in files:
            if source.verified is not None:
                files[key] = _verified_side_file(source.verified, key, location, name)
            else:
                assert source.root is not None  # the check refuses external data without one
                files[key] = _side_file(source.root, key, limits, name)
            total += len(files[key])
            if total > limits.max_total_bytes:
                raise LimitExceededError(
                    "ONNX model and its external data exceed the size limit",
                    path=name, rule="limits.max_total_bytes",
                )  # fmt: skip
    return files


def _verified_side_file(
    files: Mapping[str, VerifiedFile], key: str, location: str, name: str
) -> bytes:
    entry = files.get(key)
    if entry is None:
        raise PolicyViolation(
            f"ONNX external data {location!r} was not covered by the verification",
            path=name,
            rule="onnx.external_data",
            detail="sign the model folder with its external data files, and pass the "
            "VerifiedModel (not one VerifiedFile) to onnx_session",
        )
    return bytes(entry.buffer())


def _side_file(root: Path, key: str, limits: Limits, name: str) -> bytes:
    """Read one external data file inside ``root``; refuse it if, once open, it is elsewhere.

    The graph check resolved the location inside the folder; a link swapped in since then is
    caught by asking the kernel where the open descriptor really points. A hard link cannot be
    told from the file by any path, so a side file with more than one name is refused.
    """
    real_root = os.path.realpath(root)
    where = f"{name}:{key}"
    try:
        fd = os.open(Path(real_root, key), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(
            "cannot open ONNX external data", path=where, rule="onnx.external_data",
            detail=exc.strerror,
        ) from None  # fmt: skip
    try:
        opened = str(Path(f"/proc/self/fd/{fd}").readlink())
        if os.path.commonpath([real_root, opened]) != real_root:
            raise PolicyViolation(
                "ONNX external data resolves outside the model folder", path=where,
                rule="onnx.external_data", detail="it changed after the graph check",
            )  # fmt: skip
        if os.fstat(fd).st_nlink > 1:
            # A hard link has no "real" path to check: another name may be outside the folder
            # (a tar extracted by Python's tarfile before 3.14 can link to any file of ours).
            raise PolicyViolation(
                "ONNX external data has other names on disk", path=where,
                rule="onnx.external_data",
                detail="it is a hard link (st_nlink > 1), which may lead out of the model "
                "folder; copy it, or sign the folder and pass the VerifiedModel",
            )  # fmt: skip
        return _read_fd(fd, limits.max_file_bytes, where)
    finally:
        os.close(fd)


# -- providers -------------------------------------------------------------------------------
def _providers(
    providers: Sequence[str], unsafe_allow: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The providers to use, and the ones that only ``unsafe_allow_providers`` let through."""
    import onnxruntime as ort

    if isinstance(providers, str) or isinstance(unsafe_allow, str):
        raise UsageError("providers are a sequence of names, not one string",
                         rule="onnx.providers")  # fmt: skip
    chosen = tuple(providers)
    if not chosen or not all(isinstance(p, str) for p in chosen):
        raise UsageError("providers must be a non-empty sequence of provider names",
                         rule="onnx.providers")  # fmt: skip
    available = set(ort.get_available_providers())
    extra = tuple(p for p in chosen if p != _CPU)
    for p in extra:
        if p not in unsafe_allow:
            raise UsageError(
                f"execution provider {p!r} is not allowed",
                rule="onnx.providers",
                detail="only CPUExecutionProvider runs by default; other providers load native "
                "libraries and some reach the network: name them in unsafe_allow_providers",
            )
        if p not in available:
            raise UsageError(
                f"execution provider {p!r} is not available in this onnxruntime",
                rule="onnx.providers", detail=f"available: {', '.join(sorted(available))}",
            )  # fmt: skip
    return chosen, extra


# -- the session -----------------------------------------------------------------------------
def onnx_session(
    model: str | os.PathLike[str] | bytes | VerifiedFile | VerifiedModel,
    *,
    policy: Policy | str | os.PathLike[str] | None = None,
    providers: Sequence[str] = (_CPU,),
    intra_op_num_threads: int | None = None,
    unsafe_allow_providers: Sequence[str] = (),
    name: str | None = None,
) -> GuardedSession:
    """An onnxruntime session for ``model``, created from the bytes that were checked.

    ``model`` is a ``.onnx`` path, its bytes (no external data then), or what
    ``safeload.verify`` returned: a ``VerifiedModel`` (its one ``.onnx`` file, or the one
    ``name`` selects; external data comes from its verified files) or a single
    ``VerifiedFile`` (then the model may not use external data). The policy (as in
    ``safeload.load``) must allow the ``onnx`` format; its ``onnx`` section checks the graph.
    Providers other than ``CPUExecutionProvider`` must also be listed in
    ``unsafe_allow_providers``; each such session is audited. Raises a
    :class:`~safeload.errors.RefusedError` subclass for a refused model, and
    :class:`~safeload.errors.UsageError` for refused options, before any session exists.
    """
    from safeload.policy import audit_unsafe_option, needs_sandbox, policy_gate

    chosen, extra = _providers(providers, unsafe_allow_providers)
    options = hardened_session_options(intra_op_num_threads=intra_op_num_threads)
    source = _Source(model, name)
    gate = policy_gate(policy, None, source=source.gate_source)
    label = source.name or "<buffer>"
    _sandbox_rule(gate, source, label, needs_sandbox)
    limits = gate.limits
    if source.file is not None:
        data = bytes(source.file.buffer())
        if len(data) > limits.max_file_bytes:
            raise LimitExceededError(f"file is {len(data)} bytes", path=label,
                                     rule="limits.max_file_bytes")  # fmt: skip
    elif source.path is not None:
        data = _read_once(source.path, limits.max_file_bytes, label)
    else:
        assert source.data is not None
        data = source.data
    info = check_onnx_graph(data, policy=gate.policy.onnx, model_dir=source.root, name=label)
    unsafe = ("unsafe_allow_providers",) if extra else ()
    decision = gate.check(data, name=source.name, fmt="onnx", unsafe_options=unsafe)
    digest = decision.candidate.digest or hashlib.sha256(data).hexdigest()
    if extra:
        audit_unsafe_option(
            "unsafe_allow_providers", f"onnxruntime providers: {', '.join(extra)}",
            path=label, policy=gate.policy,
        )  # fmt: skip
        logger.warning("onnx_session: non-CPU providers on request (unsafe_allow_providers): "
                       "%s", ", ".join(extra))  # fmt: skip
    side = _external_files(data, source, limits, label) if info.external_data else {}
    session = _create(data, options, chosen, side, label)
    del side  # onnxruntime copied the side files into its initializers
    return GuardedSession(session, info, digest.removeprefix("sha256:"), gate.policy, label)


def _sandbox_rule(gate: PolicyGate, source: _Source, label: str, needs: Any) -> None:
    """onnxruntime parses the model in this process; a policy that wants untrusted parsing in
    the sandbox worker gets a refusal (enforce) or a warning (audit), never a silent pass."""
    verified = gate.verified and source.file is not None
    if not needs(gate.policy, verified=verified):
        return
    message = (
        f"sandbox mode {gate.policy.sandbox.mode!r} requires untrusted models to be parsed "
        "in the sandbox worker, and onnxruntime runs in this process"
    )
    if gate.policy.mode == "enforce":
        raise PolicyViolation(
            f"refused by policy: {message}", path=label, rule="sandbox.mode",
            detail="verify the model with a trusted signer and pass what safeload.verify "
            "returned (sandbox.mode 'untrusted' trusts verified models)",
        )  # fmt: skip
    from safeload.policy import audit_event

    logger.warning("policy in audit mode: %s (%s)", message, label)
    audit_event("onnx_session.sandbox_mode", gate.policy, level=logging.WARNING, path=label,
                detail=message)  # fmt: skip


def _create(
    data: bytes,
    options: ort.SessionOptions,
    providers: tuple[str, ...],
    side: Mapping[str, bytes],
    label: str,
) -> ort.InferenceSession:
    import numpy as np

    # External data comes from memory; anything onnxruntime would still look for on disk is
    # looked for in an empty folder of ours, and fails.
    empty = tempfile.mkdtemp(prefix="safeload-ort-")
    try:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", empty
        )
        try:
            if side:
                names = list(side)
                buffers = [np.frombuffer(side[n], dtype=np.uint8) for n in names]
                options.add_external_initializers_from_files_in_memory(
                    names, buffers, [len(b) for b in buffers]
                )
            session = inference_session_class()(data, options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own family
            raise FormatError(
                "onnxruntime cannot load the checked model", path=label,
                rule="onnx.session", detail=f"{type(exc).__name__}: {exc}"[:500],
            ) from None  # fmt: skip
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    session.disable_fallback()
    used = set(session.get_providers())
    if not used <= set(providers):
        raise UsageError(
            "onnxruntime enabled providers that were not asked for", path=label,
            rule="onnx.providers", detail=", ".join(sorted(used - set(providers))),
        )  # fmt: skip
    return session


class _Ticket:
    __slots__ = ("done", "fired", "options")

    def __init__(self, options: ort.RunOptions) -> None:
        self.options = options
        self.done = False
        self.fired = False


class _Watchdog:
    """One daemon thread for every session's deadlines: a heap of (deadline, ticket).

    A thread (``threading.Timer``) per call cost ~0.5 ms, a hundred times a small model's
    run. Here a call costs a lock and a heap push; finished tickets are dropped lazily, and
    the heap is rebuilt once most of it is finished ones, so it stays as large as the calls
    in flight. When a deadline passes, the call's own ``RunOptions.terminate`` is set and
    onnxruntime stops at its next kernel boundary.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Fresh state; also in a forked child, where the lock may have been held mid-fork."""
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Ticket]] = []
        self._order = itertools.count()
        self._finished = 0
        self._thread: threading.Thread | None = None

    def watch(self, options: ort.RunOptions, timeout: float) -> _Ticket:
        ticket = _Ticket(options)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="safeload-onnx-watchdog", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + timeout, next(self._order), ticket))
            if self._heap[0][2] is ticket:
                self._cond.notify()
        return ticket

    def release(self, ticket: _Ticket) -> None:
        with self._cond:
            ticket.done = True
            self._finished += 1
            if self._finished > 64 and 2 * self._finished > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].done]
                heapq.heapify(self._heap)
                self._finished = 0

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    _, _, ticket = heapq.heappop(self._heap)
                    if ticket.done:
                        self._finished = max(0, self._finished - 1)
                    else:
                        ticket.fired = True
                        ticket.options.terminate = True
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG._reset)


class GuardedSession:
    """An onnxruntime session over checked bytes; ``run`` checks every input first.

    ``info`` is what the graph check saw, ``sha256`` the hex digest of the model bytes that
    were checked and loaded. Each ``run`` is bounded by ``policy.onnx.run_timeout_seconds``.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        info: OnnxGraphInfo,
        sha256: str,
        policy: Policy,
        name: str,
    ) -> None:
        self._session = session
        self.info = info
        self.sha256 = sha256
        self.name = name
        self._limits = policy.limits
        self._timeout = float(policy.onnx.run_timeout_seconds)
        self._inputs = {i.name: i for i in session.get_inputs()}
        self._outputs = [o.name for o in session.get_outputs()]

    def __repr__(self) -> str:
        return f"GuardedSession({self.name!r}, sha256={self.sha256[:16]}...)"

    def get_inputs(self) -> list[Any]:
        return list(self._session.get_inputs())

    def get_outputs(self) -> list[Any]:
        return list(self._session.get_outputs())

    def get_providers(self) -> list[str]:
        return list(self._session.get_providers())

    def get_modelmeta(self) -> Any:
        """The model's metadata (producer, graph name, custom metadata map) as onnxruntime
        reports it: strings from the file, to display, never to act on."""
        return self._session.get_modelmeta()

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray[Any, Any]]
    ) -> list[Any]:
        """Check ``input_feed`` against the model's declared inputs, then run with a watchdog.

        Raises :class:`~safeload.errors.UsageError` (rules ``onnx.input_name``,
        ``onnx.input_type``, ``onnx.input_dtype``, ``onnx.input_shape``, ``onnx.output_name``)
        or :class:`~safeload.errors.LimitExceededError` (``limits.max_tensor_elements``,
        ``limits.max_total_bytes``, ``onnx.run_timeout_seconds``).
        """
        import onnxruntime as ort

        outputs = self._check_outputs(output_names)
        feed = self._check_inputs(input_feed)
        options = ort.RunOptions()
        options.log_severity_level = 4  # failures are raised, with detail; no stderr noise
        ticket = _WATCHDOG.watch(options, self._timeout)
        try:
            return list(self._session.run(outputs, feed, options))
        except Exception as exc:  # onnxruntime raises its own family
            if ticket.fired:
                raise LimitExceededError(
                    "ONNX inference ran past its time limit", path=self.name,
                    rule="onnx.run_timeout_seconds", detail=f"{self._timeout:g} s",
                ) from None  # fmt: skip
            if isinstance(exc, SafeloadError):
                raise
            raise FormatError(
                "onnxruntime failed to run the model", path=self.name, rule="onnx.run",
                detail=f"{type(exc).__name__}: {exc}"[:500],
            ) from None  # fmt: skip
        finally:
            _WATCHDOG.release(ticket)

    def _check_outputs(self, output_names: Sequence[str] | None) -> list[str] | None:
        if output_names is None:
            return None
        if isinstance(output_names, str):
            raise UsageError("output_names is a list of names", rule="onnx.output_name")
        names = list(output_names)
        for n in names:
            if n not in self._outputs:
                raise UsageError(f"{n!r} is not an output of this model", path=self.name,
                                 rule="onnx.output_name",
                                 detail=f"outputs: {', '.join(self._outputs)}")  # fmt: skip
        return names

    def _check_inputs(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        if not isinstance(feed, Mapping):
            raise UsageError("input_feed must map input names to NumPy arrays",
                             rule="onnx.input_name")  # fmt: skip
        unknown = sorted(str(k) for k in feed if k not in self._inputs)
        missing = sorted(k for k in self._inputs if k not in feed)
        if unknown or missing:
            raise UsageError(
                "inputs do not match the model's inputs", path=self.name, rule="onnx.input_name",
                detail=f"unknown: {unknown or '-'}; missing: {missing or '-'}",
            )  # fmt: skip
        total = 0
        out: dict[str, Any] = {}
        for key, value in feed.items():
            if type(value) is not np.ndarray:
                raise UsageError(f"input {key!r} is a {type(value).__name__}, not a NumPy array",
                                 path=self.name, rule="onnx.input_type")  # fmt: skip
            declared = self._inputs[key]
            self._check_dtype(key, str(declared.type), value)
            self._check_shape(key, declared.shape, value.shape)
            if value.size > self._limits.max_tensor_elements:
                raise LimitExceededError(f"input {key!r} has {value.size} elements",
                                         path=self.name,
                                         rule="limits.max_tensor_elements")  # fmt: skip
            total += value.nbytes
            if total > self._limits.max_total_bytes:
                raise LimitExceededError("inputs exceed the total size limit", path=self.name,
                                         rule="limits.max_total_bytes",
                                         detail=f"more than {self._limits.max_total_bytes} "
                                         "bytes")  # fmt: skip
            out[key] = value
        return out

    def _check_dtype(self, key: str, declared: str, value: np.ndarray[Any, Any]) -> None:
        if declared == _STRING:
            ok = value.dtype.kind == "U" or (
                value.dtype.kind == "O" and all(type(v) is str for v in value.flat)
            )
        else:
            want = _ORT_DTYPES.get(declared)
            if want is None:
                raise UsageError(f"input {key!r} has type {declared}, which safeload does not "
                                 "feed from NumPy", path=self.name,
                                 rule="onnx.input_type")  # fmt: skip
            ok = value.dtype.name == want and value.dtype.isnative
        if not ok:
            raise UsageError(f"input {key!r} must be {declared}, got {value.dtype}",
                             path=self.name, rule="onnx.input_dtype")  # fmt: skip

    def _check_shape(self, key: str, declared: Any, shape: tuple[int, ...]) -> None:
        if declared is None:  # no declared shape: any rank
            return
        dims = list(declared)
        if len(dims) != len(shape):
            raise UsageError(f"input {key!r} must have rank {len(dims)}, got shape {shape}",
                             path=self.name, rule="onnx.input_shape")  # fmt: skip
        for i, (want, got) in enumerate(zip(dims, shape, strict=True)):
            if type(want) is int and want >= 0 and want != got:
                raise UsageError(
                    f"input {key!r} dimension {i} must be {want}, got {got}", path=self.name,
                    rule="onnx.input_shape", detail=f"declared {dims}, got {list(shape)}",
                )  # fmt: skip
