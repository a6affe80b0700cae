"""The parent side: get a worker, hold the deadline, read its reply as untrusted input.

Each job gets a fresh worker forked from the fork server (:mod:`._forkserver`: a ``python -I``
started with ``posix_spawn``, never a fork of the caller, so no inherited locks, threads, or
secrets in memory), in its own session, so the deadline can kill the whole group. Its only
inputs are descriptors: a socket carrying the request and the already-open input files, and
memfds for the log, the reply and the result. Everything that comes back is checked before use:
the reply is bounded JSON whose error types come from a fixed list, and the result goes through
:func:`safeload.sandbox._transport.decode_result`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import math
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
import types
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from safeload import errors
from safeload.errors import LimitExceededError, SafeloadError, SandboxError, SourceError
from safeload.policy import Limits
from safeload.sandbox import _forkserver, _layers, _transport, _worker
from safeload.sandbox._layers import LayerReport
from safeload.sandbox._rlimits import RlimitPlan

__all__ = [
    "SandboxInput",
    "SandboxResult",
    "WorkerSlot",
    "prewarm",
    "run_in_sandbox",
    "sandboxed_read",
]

_log = logging.getLogger(__name__)
_audit = logging.getLogger("safeload.audit")

_GiB = 1 << 30
_MiB = 1 << 20
_BASE_ADDRESS_SPACE = 2 * _GiB  # interpreter + numpy + safetensors, with room for a parser
_MAX_REPLY = 1 << 20
_LOG_TAIL = 2000
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """What a sandboxed task returned, and how the worker was confined while it ran."""

    value: object
    """The task's value (a state dict...), arrays/tensors built over the result mapping."""
    tensors: Mapping[str, Any]
    """Every array in ``value``, by its transport name."""
    meta: Mapping[str, Any]
    """Small JSON facts from the task (the detected format...)."""
    layers: tuple[LayerReport, ...]
    """One report per layer, in the order the worker applied them."""
    worker_max_rss: int
    """The worker's peak resident set, in bytes, from ``wait4`` in the fork server (whose
    child it is); 0 when the worker said it was done and was let go without waiting for its
    exit. It counts pages shared with the fork server that the worker touched."""
    seconds: float
    """Wall time from spawn to a validated result."""
    worker_memory: Mapping[str, int] = field(default_factory=dict)
    """What the worker says of its own memory (``VmHWM``, ``RssAnon``, ``RssFile`` in bytes):
    untrusted, for measurements only (``bench_sandbox``), never for a decision."""


def _memfd(name: str, *, sealable: bool = False) -> int:
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealable else 0)
    return os.memfd_create(f"safeload-{name}", flags)


def _read_fd(fd: int, limit: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, min(size, limit), 0) if size else b""


def _tail(fd: int) -> str:
    size = os.fstat(fd).st_size
    start = max(0, size - _LOG_TAIL)
    return os.pread(fd, size - start, start).decode("utf-8", "replace").strip()


@dataclass(frozen=True, slots=True)
class SandboxInput:
    """An input the caller already opened, and maybe already read into its own memory.

    ``run_in_sandbox`` sends ``fd`` to the worker (it never closes it: the caller owns it).
    ``buffer``, when given, must hold exactly the bytes behind ``fd`` (the caller read them, or
    wrote ``fd`` from them): result tensors then view this buffer, so they have the memory of an
    in-process load (private, and unchanged if the file changes later), with no second copy.
    ``known_crcs`` are CRC-32s of byte ranges of ``buffer`` computed while reading it, which
    spare the worker from reading tensor data at all. ``path`` is only for Landlock (a task
    that reopens its input through ``/proc/self/fd``); None for an anonymous memfd.
    """

    fd: int
    name: str
    buffer: memoryview | None = None
    known_crcs: Mapping[tuple[int, int], int] | None = None
    path: Path | None = None


def _open_one(path: Path, limits: Limits) -> int:
    try:
        # O_NONBLOCK: a FIFO planted as "model.pt" must not hang us in open().
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        why = ("a symbolic link: resolve it through safeload.source, which decides "
               "which links to follow" if exc.errno == errno.ELOOP else None)  # fmt: skip
        raise SourceError(f"cannot open sandbox input: {exc.strerror}", path=str(path),
                          rule="sandbox.inputs", detail=why) from exc  # fmt: skip


def _open_inputs(
    inputs: Sequence[Path | SandboxInput], limits: Limits
) -> tuple[list[int], list[int], int]:
    """-> descriptors to send (in input order), the ones we opened (to close), total bytes."""
    fds: list[int] = []
    opened: list[int] = []
    total = 0
    try:
        for item in inputs:
            if isinstance(item, SandboxInput):
                fd, label = item.fd, item.name
            else:
                fd, label = _open_one(Path(item), limits), str(item)
                opened.append(fd)
            fds.append(fd)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError("sandbox input is not a regular file", path=label,
                                  rule="sandbox.inputs")  # fmt: skip
            held = item.buffer if isinstance(item, SandboxInput) else None
            if held is not None and held.nbytes != st.st_size:
                raise SandboxError("a sandbox input's buffer is not its file's size",
                                   path=label, rule="sandbox.inputs")  # fmt: skip
            if st.st_size > limits.max_file_bytes:
                raise LimitExceededError(
                    "file is larger than limits.max_file_bytes",
                    path=label,
                    rule="limits.max_file_bytes",
                )
            total += st.st_size
        if total > limits.max_total_bytes:
            raise LimitExceededError(
                "inputs exceed limits.max_total_bytes", rule="limits.max_total_bytes"
            )
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return fds, opened, total


def _input_entry(item: Path | SandboxInput) -> dict[str, Any]:
    if not isinstance(item, SandboxInput):
        path = Path(item)
        return {"name": path.name, "path": str(path.resolve())}
    return {"name": item.name, "path": "" if item.path is None else str(item.path)}


def _encode_request(request: dict[str, Any], inputs: Sequence[Path | SandboxInput]) -> bytes:
    """The request, with as many CRC hints as fit in one message, the biggest members first.

    The request is a single socket message of at most ``_worker.MAX_REQUEST`` bytes. Hints are
    only a saving (a member without one is checked by the worker reading it), so a checkpoint
    with thousands of members keeps the hints for its largest ones, which cost the most to
    read, and the rest are left to the worker.
    """
    room = _worker.MAX_REQUEST - len(json.dumps(request)) - 64
    for entry, item in zip(request["inputs"], inputs, strict=True):
        if not isinstance(item, SandboxInput) or not item.known_crcs:
            continue
        kept: list[list[int]] = []
        for (off, size), crc in sorted(item.known_crcs.items(), key=lambda h: -h[0][1]):
            cost = len(f"[{off}, {size}, {crc}], ")
            if cost > room:
                break
            kept.append([off, size, crc])
            room -= cost
        if kept:
            entry["crcs"] = kept
    return json.dumps(request).encode()


@contextlib.contextmanager
def _closing(fds: list[int]) -> Iterator[list[int]]:
    try:
        yield fds
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Worker:
    """One forked worker waiting on its socket for exactly one job."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.pidfd: int | None = None
        self.sock, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.status, status_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log_fd: int | None = _memfd("log")
        self.reply_fd: int | None = _memfd("reply")
        self.result_fd: int | None = _memfd("result", sealable=True)
        fds = [child_end.fileno(), self.log_fd, self.reply_fd, self.result_fd, status_end.fileno()]
        try:
            self.pid, self.pidfd = _fork_worker(fds)
        except BaseException:
            self.close()
            raise
        finally:
            child_end.close()
            status_end.close()

    def usable(self) -> bool:
        """Still waiting for its job, and ours (not a copy inherited through fork)."""
        if self.owner != os.getpid() or self.pidfd is None:
            return False
        return not _forkserver.exited(self.pidfd)

    def send(self, request: bytes, fds: Sequence[int]) -> None:
        if len(request) > _worker.MAX_REQUEST or len(fds) > _worker.MAX_INPUTS:
            raise SandboxError("sandbox request too large", rule="sandbox.spawn",
                               detail=f"{len(request)} bytes, {len(fds)} inputs")  # fmt: skip
        try:
            socket.send_fds(self.sock, [request], list(fds))
            self.sock.shutdown(socket.SHUT_WR)  # our side stays open to hear DONE
        except OSError as exc:
            # A worker that died before its job left a reply saying why (or an exit status);
            # waiting for it reports that instead of a broken pipe.
            _log.debug("sandbox worker did not take its job: %s", exc)

    def wait(self, timeout: float) -> tuple[int, Any, bool]:
        """Wait for DONE, the worker's exit, or the deadline. -> status, rusage, timed out.

        DONE (after the reply is written) lets the parent go on while the kernel tears down
        the worker's address space (tens of milliseconds for a big mapped input): the worker
        is killed, the fork server reaps it, and the status is reported as 0 with no rusage.
        Nothing is lost by not waiting: the result memfd is sealed before it is read, so a
        worker that lied about being done can no longer change it. Past the deadline the
        whole session is killed. The exit status and ``wait4`` usage come from the fork
        server (the worker is its child), on the job's own status socket.
        """
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.status, select.POLLIN)
        poller.register(self.sock, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            events = dict(poller.poll(max(0, int(left * 1000)))) if left > 0 else {}
            if not events:
                break
            if self.status.fileno() in events:
                return (*self._exit_status(), False)
            try:
                said = self.sock.recv(16)
            except OSError:
                said = b""
            if said == _worker.DONE:
                self._let_go()
                return 0, None, False
            poller.unregister(self.sock)  # end of file or noise: wait for the exit
        self._kill()
        return (*self._exit_status(), True)

    def _exit_status(self) -> tuple[int, Any]:
        self.status.settimeout(_REAP_TIMEOUT)
        try:
            facts = json.loads(self.status.recv(4096))
            usage = types.SimpleNamespace(
                ru_utime=float(facts["utime"]), ru_stime=float(facts["stime"]),
                ru_maxrss=int(facts["maxrss"]),
            )  # fmt: skip
            return int(facts["status"]), usage
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SandboxError(
                "cannot collect the sandbox worker's exit status",
                rule="sandbox.crash",
                detail=f"the fork server did not report it: {exc}",
            ) from exc

    def _kill(self) -> None:
        if self.usable():  # still running, so its pid (and session id) cannot be reused yet
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # its session: anything it started goes too
        self._let_go()

    def _let_go(self) -> None:
        """Kill a worker that has answered (it only had to exit); the fork server reaps it."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def discard(self) -> None:
        """Let an unused worker go at once: it holds no input, so killing it loses nothing."""
        self.sock.close()
        if self.owner == os.getpid():
            self._let_go()
        self.close()

    def close(self) -> None:
        self.sock.close()
        self.status.close()
        for fd in (self.log_fd, self.reply_fd, self.result_fd, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.log_fd = self.reply_fd = self.result_fd = self.pidfd = None


_REAP_TIMEOUT = 10.0
"""Seconds to wait for the fork server's report of a worker's exit after it ended."""

_server: _forkserver.ForkServer | None = None
_server_lock = threading.Lock()


def _running_server_locked() -> _forkserver.ForkServer:
    """The live fork server, replacing a dead or stale one (hold ``_server_lock``)."""
    global _server
    if _server is not None and not _server.alive():
        _server.stop()
        _server = None
    if _server is None:
        _server = _forkserver.ForkServer()
    return _server


def _fork_worker(fds: list[int]) -> tuple[int, int]:
    """A new worker from the fork server (started, or restarted once, as needed)."""
    for attempt in (1, 2):
        with _server_lock:
            server = _running_server_locked()
        try:
            return server.fork(fds)
        except SandboxError:
            if attempt == 2 or server.alive():
                raise  # a live server that cannot fork: say so, do not loop
    raise AssertionError("unreachable")


def prewarm(keep: bool = True) -> None:
    """Start the fork server now (``keep=True``), or stop it (``keep=False``).

    The first sandboxed job of a process starts the server (an interpreter importing NumPy and
    the readers, about 0.15 s of CPU); every job after that forks a fresh worker from it in a
    few milliseconds. Call ``prewarm()`` at start-up to take that first cost off the first
    load. ``prewarm(False)`` ends the server now (the next job starts a new one). The server is
    used only by the process that started it and only while the environment a worker would
    get is unchanged; it is stopped at exit, and a forked child forgets it.
    """
    global _server
    with _server_lock:
        if keep:
            _running_server_locked()
        elif _server is not None:
            _server.stop()
            _server = None


def prewarm_quietly() -> None:
    """``prewarm()`` for callers that know a sandboxed job is coming (``patch()``,
    ``from_pretrained``): best effort, since a server that cannot start here is reported by
    the job itself, with the reason."""
    if sys.platform != "linux":
        return
    try:
        prewarm()
    except SandboxError as exc:
        _log.debug("could not start the sandbox fork server ahead of a job: %s", exc)


def _take_worker() -> _Worker:
    return _Worker()


class WorkerSlot:
    """A worker asked for *before* the caller prepares its inputs.

    ``safeload.load`` takes one, then reads the file into its own memory while the worker
    gets ready, then hands both to :func:`run_in_sandbox`. The request to the fork server goes
    out on a thread: for a process's first job the server is still importing (about 0.15 s of
    CPU, on the other core), and the caller reads meanwhile instead of waiting for it. A slot
    that was never used is discarded on exit: its worker saw no input and never gets one.
    """

    def __init__(self) -> None:
        self._worker: _Worker | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _fetch(self) -> None:
        try:
            self._worker = _take_worker()
        except BaseException as exc:  # noqa: BLE001 - re-raised to the caller by take()
            self._error = exc

    def __enter__(self) -> WorkerSlot:
        if sys.platform == "linux":
            self._thread = threading.Thread(target=self._fetch, name="safeload-sandbox-slot",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        return self

    def take(self) -> _Worker | None:
        """The worker (waiting for it if it is not ready yet); None if there is none."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        worker, self._worker = self._worker, None
        return worker

    def __exit__(self, *exc: object) -> None:
        try:
            worker = self.take()
        except Exception as err:  # noqa: BLE001 - never mask the caller's own exception
            _log.debug("the unused sandbox worker slot failed: %s", err)
            return
        if worker is not None:
            worker.discard()


@atexit.register
def _at_exit() -> None:
    prewarm(False)


def _forget_server_in_child() -> None:
    """After fork, in the child: the server belongs to the parent; close our copies, no kill."""
    global _server, _server_lock
    _server_lock = threading.Lock()  # another thread may have held it at fork time
    if _server is not None:
        _server.forget()
    _server = None


if sys.platform == "linux":
    os.register_at_fork(after_in_child=_forget_server_in_child)


def _raise_for_status(status: int, usage: Any, timed_out: bool, plan: RlimitPlan, log: str) -> None:
    detail = f"worker log: {log}" if log else None
    if timed_out:
        raise SandboxError("the sandbox worker missed its deadline and was killed",
                           rule="sandbox.timeout", detail=detail)  # fmt: skip
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        cpu = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= plan.cpu_seconds):
            raise LimitExceededError(
                f"the worker used its {plan.cpu_seconds} s of CPU time and was stopped",
                rule="sandbox.cpu_seconds",
                detail="stopped by the rlimits layer (RLIMIT_CPU)",
            )
        if sig == signal.SIGXFSZ:
            raise LimitExceededError(
                "the worker tried to write more than its output limit",
                rule="sandbox.max_output_bytes",
                detail="stopped by the rlimits layer (RLIMIT_FSIZE)",
            )
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGSYS:
            detail = "killed by the seccomp layer (wrong architecture or ABI)"
        raise SandboxError(f"the sandbox worker was killed by {name}", rule="sandbox.crash",
                           detail=detail)  # fmt: skip
    code = os.WEXITSTATUS(status)
    if code != 0:
        raise SandboxError(f"the sandbox worker exited with status {code}", rule="sandbox.crash",
                           detail=detail)  # fmt: skip


_ERROR_TYPES: dict[str, type[SafeloadError]] = {
    name: cls
    for name in errors.__all__
    if isinstance(cls := getattr(errors, name), type) and issubclass(cls, SafeloadError)
}


def _rebuild_error(raw: object, path: str | None) -> SafeloadError:
    """Re-raise the worker's refusal as the same class; anything odd is a SandboxError."""
    if not isinstance(raw, dict):
        return SandboxError("worker sent a malformed error", rule="sandbox.protocol")
    cls = _ERROR_TYPES.get(str(raw.get("type")), SandboxError)

    def text(key: str) -> str | None:
        value = raw.get(key)
        return value[:2000] if isinstance(value, str) else None

    offset = raw.get("offset")
    exc = cls(
        text("message") or "the sandbox worker refused the input",
        path=text("path") or path,
        rule=text("rule"),
        offset=offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
        detail=text("detail"),
        code=text("code"),
    )
    return exc


def _parse_reply(fd: int, log_fd: int) -> dict[str, Any]:
    try:
        reply = json.loads(_read_fd(fd, _MAX_REPLY))
    except (ValueError, RecursionError) as exc:
        raise SandboxError("the sandbox worker sent no valid reply", rule="sandbox.protocol",
                           detail=_tail(log_fd) or None) from exc  # fmt: skip
    if not isinstance(reply, dict) or not isinstance(reply.get("layers"), list):
        raise SandboxError("the sandbox worker sent a malformed reply", rule="sandbox.protocol")
    return reply


def _memory_report(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items()
            if k in ("VmHWM", "RssAnon", "RssFile") and type(v) is int and v >= 0}  # fmt: skip


def _audit_skip(task: str, skip: Collection[str]) -> None:
    event = {"event": "sandbox.unsafe_skip_layers", "task": task, "layers": sorted(skip)}
    _audit.warning(json.dumps(event))
    _log.warning("sandbox layers skipped on request (unsafe_skip_layers): %s", sorted(skip))


def _default_plan(
    limits: Limits,
    total_in: int,
    n_inputs: int,
    timeout: float,
    memory_bytes: int | None,
    cpu_seconds: int | None,
    max_output_bytes: int | None,
) -> RlimitPlan:
    out = max_output_bytes
    if out is None:
        out = min(4 * total_in + 64 * _MiB, max(limits.max_total_bytes, 64 * _MiB))
    return RlimitPlan(
        address_space=memory_bytes or (_BASE_ADDRESS_SPACE + 2 * total_in),
        cpu_seconds=cpu_seconds or max(1, math.ceil(timeout)),
        file_size=out,
        open_files=_worker.FIRST_INPUT_FD + n_inputs + 32,
    )


def run_in_sandbox(
    task: str,
    inputs: Sequence[Path | SandboxInput],
    *,
    limits: Limits,
    required_layers: Collection[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    framework: Literal["numpy", "torch"] = "numpy",
    output_dir: Path | None = None,
    params: Mapping[str, Any] | None = None,
    memory_bytes: int | None = None,
    cpu_seconds: int | None = None,
    max_output_bytes: int | None = None,
    unsafe_skip_layers: Collection[str] = (),
    preload: Sequence[str] = (),
    sys_path: Sequence[str] = (),
    slot: WorkerSlot | None = None,
) -> SandboxResult:
    """Run registered ``task`` on ``inputs`` in a fresh, confined worker; validate what returns.

    Every layer this machine offers is applied; ``required_layers`` (policy
    ``sandbox.required_layers``) must all be applied or this raises ``SandboxError`` with
    ``rule="sandbox.required_layers"`` before any input byte is parsed. ``memory_bytes``,
    ``cpu_seconds`` and ``max_output_bytes`` override the worker's rlimits (defaults scale with
    the input size). ``inputs`` are paths (opened here, without following links) or
    :class:`SandboxInput` descriptors the caller opened (and maybe read: then result tensors view
    the caller's buffer). ``slot`` is a worker taken earlier with :class:`WorkerSlot`, so that
    its start-up overlapped the caller's own reading. ``preload`` names modules the worker
    imports before its first layer (a task that needs torch, say), looked up also in the
    folders ``sys_path`` lists (the worker runs ``python -I``: no ``PYTHONPATH``, no current
    folder): the caller's choice, never a model file's. ``unsafe_skip_layers``
    exists for tests of the layers themselves: it is logged to the ``safeload.audit`` logger
    every time it is used.
    """
    started = time.monotonic()
    if sys.platform != "linux":
        raise SandboxError("the sandbox worker needs Linux", rule="sandbox.platform",
                           detail=f"this is {sys.platform}")  # fmt: skip
    required = _layers.check_layer_names(required_layers, "sandbox.required_layers")
    skip = _layers.check_layer_names(unsafe_skip_layers, "sandbox.unsafe_skip_layers")
    if required & skip:
        raise SandboxError(
            "a required sandbox layer cannot also be skipped",
            rule="sandbox.required_layers",
            detail=f"{', '.join(sorted(required & skip))}: listed in unsafe_skip_layers",
        )
    if skip:
        _audit_skip(task, skip)
    for report in _layers.detect_all():
        if report.name in required and not report.available:
            raise SandboxError(
                f"required sandbox layer {report.name!r} is not available on this machine",
                rule="sandbox.required_layers",
                detail=f"{report.name}: {report.reason}",
            )
    out_dir = None if output_dir is None else Path(output_dir).resolve()
    input_fds, opened, total_in = _open_inputs(inputs, limits)
    entries = [_input_entry(item) for item in inputs]
    buffers = [item.buffer if isinstance(item, SandboxInput) else None for item in inputs]
    plan = _default_plan(
        limits, total_in, len(inputs), timeout, memory_bytes, cpu_seconds, max_output_bytes
    )
    request = {
        "version": _worker.PROTOCOL_VERSION,
        "task": task,
        "inputs": entries,
        "output_dir": None if out_dir is None else str(out_dir),
        "limits": limits.model_dump(),
        "rlimits": asdict(plan),
        "required_layers": sorted(required),
        "skip_layers": sorted(skip),
        "params": dict(params or {}),
        "preload": [str(name) for name in preload],
        "sys_path": [os.fspath(p) for p in sys_path],
    }
    first = entries[0]["name"] if entries else None
    if inputs and not isinstance(inputs[0], SandboxInput):
        first = str(inputs[0])
    with _closing(opened):
        worker = (slot.take() if slot is not None else None) or _take_worker()
        if not worker.usable():  # died waiting (killed from outside): one fresh try
            worker.discard()
            worker = _take_worker()
        maps = _transport.InputMaps(input_fds, buffers)
        stop = threading.Event()
        prefetch = threading.Thread(target=maps.prefetch, args=(stop,), daemon=True,
                                    name="safeload-sandbox-prefetch")  # fmt: skip
        try:
            worker.send(_encode_request(request, inputs), input_fds)
            if maps.needs_prefetch:  # map the inputs while the worker parses them (we only wait)
                prefetch.start()
            try:
                status, usage, timed_out = worker.wait(timeout)
            finally:
                stop.set()  # a refusal must not wait for a big file's pages; decode finishes
                if prefetch.is_alive():
                    prefetch.join()
            assert worker.log_fd is not None and worker.reply_fd is not None
            assert worker.result_fd is not None
            if usage is not None:  # None: the worker said DONE and is being let go
                _raise_for_status(status, usage, timed_out, plan, _tail(worker.log_fd))
            reply = _parse_reply(worker.reply_fd, worker.log_fd)
            reports = tuple(LayerReport.from_dict(r) for r in reply["layers"])
            if reply.get("ok") is not True:
                raise _rebuild_error(reply.get("error"), first)
            applied = {r.name for r in reports if r.applied}
            if not required <= applied:  # the worker should have refused already; never trust
                raise SandboxError("the worker ran without a required layer",
                                   rule="sandbox.required_layers",
                                   detail=", ".join(sorted(required - applied)))  # fmt: skip
            _transport.seal(worker.result_fd)
            value, tensors, meta = _transport.decode_result(
                worker.result_fd, limits=limits, framework=framework, max_bytes=plan.file_size,
                inputs=input_fds, name=entries[0]["name"] if entries else "", maps=maps,
            )
        finally:
            worker.close()
    return SandboxResult(
        value=value,
        tensors=tensors,
        meta=meta,
        layers=reports,
        worker_max_rss=0 if usage is None else int(usage.ru_maxrss) * 1024,
        seconds=time.monotonic() - started,
        worker_memory=_memory_report(reply.get("memory")),
    )


def sandboxed_read(
    path: Path | str,
    *,
    limits: Limits,
    framework: Literal["torch", "numpy"] = "torch",
    required_layers: Collection[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> object:
    """``safeload.formats.read`` of one file, done in the worker; returns the loaded object.

    The low-level form: the worker maps the file and checks every CRC itself, and the tensors
    are copy-on-write views of the file. ``safeload.load(path, sandbox=True)`` reads the file
    into private memory on every core while the worker starts, and is the call to use.
    """
    result = run_in_sandbox(
        "read",
        [Path(path)],
        limits=limits,
        required_layers=required_layers,
        timeout=timeout,
        framework=framework,
    )
    return result.value
