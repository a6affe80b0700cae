"""The sandboxed worker: a fresh fork of the fork server for every job (see :func:`serve`).

The fork server is a new interpreter (``python -I .../_bootstrap.py --fork-server``, spawned,
never forked from the caller); each worker it forks keeps nothing but five descriptors:

====  ==========================================================================
fd    use
====  ==========================================================================
0     a unix socket: one request (JSON: task, inputs, limits, layers) with the input
      descriptors attached (SCM_RIGHTS); a fresh worker waits here, fully imported;
      the worker writes ``DONE`` here once its reply is written
1, 2  log (a memfd; the parent shows its tail when something goes wrong)
3     reply (a memfd: JSON with the layer reports and either ``ok`` or an error)
4     result (a memfd: safetensors bytes, see :mod:`safeload.sandbox._transport`)
5...  the input files, opened by the parent (the worker never re-opens a path)
====  ==========================================================================

The worker applies the layers (:mod:`safeload.sandbox._layers`) in order, importing every
module it may need *before* Landlock and seccomp (after them, a lazy import could not read its
``.py`` file), then runs one task from a fixed registry. Nothing is ever unpickled: requests
and replies are JSON, results are safetensors.

Tasks are looked up by name in :data:`TASKS`. Tests may add tasks by naming a Python file in
``SAFELOAD_SANDBOX_TEST_TASKS`` in the *parent's* environment; a model file cannot set
environment variables, so it can never reach those.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import json
import mmap
import os
import pkgutil
import re
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import numpy as np

from safeload.errors import LimitExceededError, SafeloadError, SandboxError
from safeload.policy import Limits
from safeload.sandbox import _layers
from safeload.sandbox._rlimits import RlimitPlan

__all__ = [
    "FD_LOG",
    "FD_REPLY",
    "FD_REQUEST",
    "FD_RESULT",
    "FIRST_INPUT_FD",
    "TASKS",
    "TaskContext",
    "main",
    "serve",
]

FD_REQUEST = 0
FD_LOG = 2
FD_REPLY = 3
FD_RESULT = 4
FIRST_INPUT_FD = 5
TEST_TASKS_ENV = "SAFELOAD_SANDBOX_TEST_TASKS"
PROTOCOL_VERSION = 2
MAX_REQUEST = 1 << 16
MAX_INPUTS = 256
DONE = b"done"
"""Written on the request socket after the reply: the parent may go on without our exit."""
_KEEP: list[object] = []


@dataclass
class TaskContext:
    """What a task gets: its inputs as open descriptors, the limits, and its parameters."""

    names: list[str]
    paths: list[Path]
    fds: list[int]
    limits: Limits
    output_dir: Path | None
    params: dict[str, Any]
    known_crcs: list[dict[tuple[int, int], int]] = field(default_factory=list)
    """Per input, CRC-32s of byte ranges the parent computed while reading its own copy (the
    ``known_crcs`` of ``formats.read``): the zip reader accepts one only for a member whose
    validated data range is exactly that range, so the worker need not read tensor data."""
    storages: dict[str, Any] = field(default_factory=dict)
    """Storages by key that :class:`~safeload.formats._types.TensorSpec` values in the result
    view (the ``read`` task sets them); sent once each, as file regions where possible."""
    _maps: dict[int, mmap.mmap] = field(default_factory=dict)

    def data(self, index: int) -> memoryview:
        """Input ``index`` as a read-only memoryview over a shared mapping (no copy)."""
        fd = self.fds[index]
        if os.fstat(fd).st_size == 0:
            return memoryview(b"")
        mm = self._maps.get(index)
        if mm is None:
            mm = self._maps[index] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        return memoryview(mm)

    def regions(self) -> list[tuple[int, int]]:
        """``(address, length)`` of each mapped input, so views into it travel as references."""
        out = []
        for index in range(len(self.fds)):
            mm = self._maps.get(index)
            if mm is None:
                out.append((0, 0))
            else:
                addr = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
                out.append((int(addr), len(mm)))
        return out


TaskResult = tuple[object, dict[str, Any]]
Task = Callable[[TaskContext], TaskResult]


def _task_probe(ctx: TaskContext) -> TaskResult:
    """Do nothing: ``doctor`` uses it to see which layers a real worker gets."""
    return None, {}


def _task_safetensors(ctx: TaskContext) -> TaskResult:
    """Parse one safetensors file with the safetensors library, inside the sandbox."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    with safe_open(f"/proc/self/fd/{ctx.fds[0]}", framework="numpy") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            out[key] = f.get_tensor(key)
        meta = f.metadata() or {}
    return out, {"format": "safetensors", "metadata": meta}


def _task_export_onnx(ctx: TaskContext) -> TaskResult:
    """ONNX export (:mod:`safeload.sandbox._export_task`, which imports torch): the parent
    preloads that module, so this is a ``sys.modules`` hit, never an import under Landlock."""
    module = sys.modules.get("safeload.sandbox._export_task")
    if module is None:
        raise SandboxError("the export task was not preloaded", rule="sandbox.preload")
    result: TaskResult = module.task_export_onnx(ctx)
    return result


def _task_read(ctx: TaskContext) -> TaskResult:
    """``safeload.formats.read`` up to, not including, building tensors.

    Every check ``read`` makes runs here (container, pickle program, CRCs, every view against
    its storage); what comes back is the value with its tensor *placeholders* and the storages
    they view. The parent builds the tensors with the same materialiser an in-process read uses,
    so ``nn.Parameter``, shared storages and quantized tensors come back as they would
    in-process (torch is never imported in the worker). NumPy files give NumPy arrays.
    """
    from safeload.formats import _read

    name, limits = ctx.names[0], ctx.limits
    crcs = ctx.known_crcs[0] if ctx.known_crcs else None
    parsed = _read._parse(ctx.data(0), name=name, limits=limits, known_crcs=crcs)
    fmt = str(getattr(parsed.format, "value", parsed.format))
    meta: dict[str, Any] = {"format": fmt}
    if fmt in ("numpy", "npz"):
        meta["arrays"] = "numpy"  # NumPy files give NumPy arrays whatever the framework
        with _read._fail_closed(name, "tensors could not be built from this file"):
            return _read._build(parsed, limits=limits, name=name, framework="numpy").value, meta
    _read._table(parsed, limits, name)  # refuses bad views and too many tensors, as read does
    ctx.storages = parsed.storages
    return parsed.value, meta


def _task_scan(ctx: TaskContext) -> TaskResult:
    """What ``safeload scan`` learns of one file (:func:`safeload.formats._survey.survey`).

    A refusal is *returned* (with the globals a refused pickle asks for, which scan lists),
    not raised, so the parent gets both; any other error is raised as usual.
    """
    from safeload.formats._survey import survey

    found = survey(ctx.data(0), name=ctx.names[0], limits=ctx.limits)
    if found.format is None:
        return None, {"format": "unknown"}
    fmt = str(found.format.value)
    if found.refused is not None:
        return None, {"refused": _error_dict(found.refused), "format": fmt,
                      "globals": list(found.globals)}  # fmt: skip
    return None, {"format": fmt, "shapes": [list(t.shape) for t in found.tensors]}


TASKS: dict[str, Task] = {
    "export_onnx": _task_export_onnx,
    "probe": _task_probe,
    "read": _task_read,
    "scan": _task_scan,
    "safetensors": _task_safetensors,
}
"""The fixed task registry: the request names one of these, nothing else runs."""


# Standard-library modules reached lazily below the readers (zip member names decode as cp437,
# the decompressors load on first use); after Landlock their source files cannot be read.
_STDLIB_LAZY = (
    "encodings.ascii",
    "encodings.cp437",
    "encodings.latin_1",
    "encodings.raw_unicode_escape",
    "encodings.unicode_escape",
    "encodings.utf_8",
    "encodings.utf_16",
    "encodings.utf_32",
    "zipfile",
    "zlib",
    "gzip",
    "bz2",
    "lzma",
    "tarfile",
    "codecs",
)


_INDENTED_IMPORT = re.compile(
    r"^[ \t]+(?:from[ \t]+([\w.]+)[ \t]+import\b|import[ \t]+([\w.]+(?:[ \t]*,[ \t]*[\w.]+)*))",
    re.MULTILINE,
)
"""An import statement that is not at the top level: inside a function, or TYPE_CHECKING."""


def _lazy_imports(module: ModuleType) -> set[str]:
    """Modules a reader imports inside functions, read from its source (never executed).

    A line scan, not ``ast.parse``: parsing every reader's source cost about 0.1 s of worker
    start-up. The scan may find more than the real imports (an indented example in a docstring);
    those are tried and a failure ignored. It must never find fewer:
    ``tests/test_sandbox.py`` checks it against ``ast`` for every reader module.
    """
    source = getattr(module, "__file__", None)
    if not source or not source.endswith(".py"):
        return set()
    names: set[str] = set()
    for match in _INDENTED_IMPORT.finditer(Path(source).read_text(encoding="utf-8")):
        if match.group(1):
            if not match.group(1).startswith("."):
                names.add(match.group(1))
        else:
            names.update(n.strip() for n in match.group(2).split(","))
    # torch stays out of the worker: it reads with NumPy and the parent builds the tensors.
    return {n for n in names if n and n.split(".")[0] != "torch"}


def _preload() -> None:
    """Import everything a task may touch while the file system is still readable."""
    import ml_dtypes  # noqa: F401
    import numpy  # noqa: F401
    import safetensors
    import safetensors.numpy  # noqa: F401

    import safeload.formats as formats
    import safeload.sandbox._transport  # noqa: F401

    for mod in pkgutil.walk_packages(formats.__path__, prefix="safeload.formats."):
        module = importlib.import_module(mod.name)
        for name in _lazy_imports(module):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    for name in _STDLIB_LAZY:
        importlib.import_module(name)
    extra = os.environ.get(TEST_TASKS_ENV)
    if extra:
        spec = importlib.util.spec_from_file_location("_safeload_test_tasks", extra)
        if spec is None or spec.loader is None:
            raise SandboxError(f"cannot load test tasks from {extra}", rule="sandbox.task")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        TASKS.update(module.TASKS)


def _extend_path(folders: object) -> None:
    """Folders the caller's preload modules live in, searched after the worker's own path (so
    what the worker already imports cannot be shadowed by a file in the caller's folder)."""
    if not isinstance(folders, list) or not all(isinstance(f, str) and f for f in folders):
        raise SandboxError("bad sys_path list from parent", rule="sandbox.protocol")
    sys.path.extend(f for f in folders if f not in sys.path)


def _import_extra(names: object) -> None:
    """Modules the *caller* named for its task (``run_in_sandbox(preload=...)``), imported
    before any layer: after Landlock and seccomp their files could not be read.

    Only the parent's request names them; a model file cannot reach this list.
    """
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SandboxError("bad preload list from parent", rule="sandbox.protocol")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure to import is the caller's error
            raise SandboxError(
                f"the sandbox worker cannot import {name!r}",
                rule="sandbox.preload",
                detail=f"{type(exc).__name__}: {exc}"[:300],
            ) from exc


def _crc_hints(raw: object) -> dict[tuple[int, int], int]:
    """``[[offset, size, crc], ...]`` from the parent's request -> ``{(offset, size): crc}``."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise SandboxError("bad CRC hints from parent", rule="sandbox.protocol")
    out: dict[tuple[int, int], int] = {}
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(type(v) is int and v >= 0 for v in item)
        ):
            raise SandboxError("bad CRC hint from parent", rule="sandbox.protocol")
        out[(item[0], item[1])] = item[2]
    return out


def _read_request() -> dict[str, Any]:
    """Wait for the one request, and the input descriptors with it (SCM_RIGHTS)."""
    sock = socket.socket(fileno=FD_REQUEST)
    try:
        raw, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, MAX_INPUTS)
    finally:
        sock.detach()  # fd 0 stays open: the worker says DONE there when it has answered
    if not raw:  # the parent let a worker go without a job
        os._exit(0)
    request = json.loads(raw)
    if (
        not isinstance(request, dict)
        or request.get("version") != PROTOCOL_VERSION
        or len(fds) != len(request.get("inputs", ()))
    ):
        raise SandboxError("bad request from parent", rule="sandbox.protocol")
    # Park the inputs at fixed numbers (via high numbers, so no move clobbers another).
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1024) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, FIRST_INPUT_FD + i)
        os.close(fd)
    os.closerange(FIRST_INPUT_FD + len(fds), 1 << 16)
    return request


def _write_reply(reply: dict[str, Any]) -> None:
    data = json.dumps(reply).encode()
    os.lseek(FD_REPLY, 0, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(FD_REPLY, view) :]


def _error_dict(exc: SafeloadError) -> dict[str, Any]:
    return {"type": type(exc).__name__, **exc.to_dict()}


def _open_status() -> int | None:
    try:
        return os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _memory(fd: int | None) -> dict[str, int]:
    """This process's own peak and anonymous resident memory, in bytes (for measurements).

    ``wait4``'s ``ru_maxrss`` cannot say it: ``posix_spawn`` runs the child on the parent's
    address space until ``exec``, and the kernel carries that address space's peak into the
    child's. ``VmHWM`` is the peak of the worker's own memory since ``exec``; ``RssAnon`` at the
    end shows what is not file pages (a copy of tensor data would be).
    """
    if fd is None:
        return {}
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in os.pread(fd, 1 << 14, 0).decode("ascii", "replace").splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile") and rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _run(request: dict[str, Any], reports: list[_layers.LayerReport]) -> dict[str, Any]:
    required = frozenset(request["required_layers"])
    skip = frozenset(request["skip_layers"])
    names = [str(i["name"]) for i in request["inputs"]]
    # An input the parent made itself (a memfd of bytes it holds) has no path to grant.
    paths = [Path(i["path"]) for i in request["inputs"] if i["path"]]
    fds = list(range(FIRST_INPUT_FD, FIRST_INPUT_FD + len(names)))
    out_dir = Path(request["output_dir"]) if request["output_dir"] else None

    def layer(name: str, apply: Callable[[], _layers.LayerReport]) -> None:
        if name in skip:
            reports.append(_layers.skipped(name, required, "skipped: unsafe_skip_layers"))
        else:
            reports.append(apply())

    _extend_path(request.get("sys_path", []))
    _import_extra(request.get("preload", []))
    plan = RlimitPlan(**request["rlimits"])
    layer("rlimits", lambda: _layers.apply_rlimits(plan, required))
    layer("no_new_privs", lambda: _layers.apply_no_new_privs(required))
    layer("namespaces", lambda: _layers.apply_namespaces(required))
    status_fd = _open_status()  # before Landlock, which would refuse opening it later
    task = TASKS.get(request["task"])
    if task is None:
        raise SandboxError(f"unknown sandbox task {request['task']!r}", rule="sandbox.task")
    limits = Limits.model_validate(request["limits"])
    # Grant the files behind our descriptors, not the names the parent sent: a name resolved
    # apart from its open() may have been swapped (a symlink to a secret) in between.
    inputs = zip(fds, request["inputs"], strict=True)
    grants = [Path(f"/proc/self/fd/{fd}") for fd, item in inputs if item["path"]]
    layer("landlock", lambda: _layers.apply_landlock(grants, out_dir, required))
    layer("seccomp", lambda: _layers.apply_seccomp(required))
    crcs = [_crc_hints(i.get("crcs")) for i in request["inputs"]]
    ctx = TaskContext(names, paths, fds, limits, out_dir, dict(request["params"]), crcs)
    value, meta = task(ctx)
    from safeload.sandbox._transport import encode_result

    encode_result(FD_RESULT, value, meta, ctx.regions(), ctx.storages)
    # Unmapping a big input takes tens of milliseconds; keep it mapped so that happens at
    # exit, after DONE, while the parent is already checking the result.
    _KEEP.append((ctx, value))
    return {"ok": True, "memory": _memory(status_fd)}


def _answer(first: Callable[[], None]) -> NoReturn:
    """Do ``first`` (the imports), take the one request, reply, say DONE, exit."""
    reports: list[_layers.LayerReport] = []
    try:
        first()
        request = _read_request()
        reply = _run(request, reports)
    except SafeloadError as exc:
        reply = {"ok": False, "error": _error_dict(exc)}
    except MemoryError:
        err: SafeloadError = LimitExceededError(
            "the worker ran out of its memory limit", rule="sandbox.memory_bytes"
        )
        reply = {"ok": False, "error": _error_dict(err)}
    except RecursionError:
        err = LimitExceededError(
            "the worker hit Python's recursion limit", rule="sandbox.recursion"
        )
        reply = {"ok": False, "error": _error_dict(err)}
    except Exception as exc:  # noqa: BLE001 - fail closed: any crash becomes a SandboxError reply
        err = SandboxError(
            "the sandbox task failed", rule="sandbox.task", detail=f"{type(exc).__name__}: {exc}"
        )
        reply = {"ok": False, "error": _error_dict(err)}
    reply["layers"] = [r.to_dict() for r in reports]
    _write_reply(reply)
    sys.stderr.flush()
    with contextlib.suppress(OSError):  # the parent need not wait for our address space to go
        os.write(FD_REQUEST, DONE)
    os._exit(0)


def main() -> None:
    """One worker, spawned for one job (``python -I _bootstrap.py``)."""
    _answer(_preload)  # before the request: the worker is ready when the job arrives


FORK = b"fork"
"""What the parent sends the fork server, with the new worker's five descriptors."""
_MAX_FD = 1 << 16


def _become_worker(fds: list[int], failure: BaseException | None) -> NoReturn:
    """In a child of the fork server: take the job's descriptors at 0-4, drop every other."""
    try:
        os.setsid()  # its own session: the parent's deadline kills the whole group
        job, log, reply, result = fds[:4]
        slots = [job, log, log, reply, result]
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_INPUT_FD) for fd in slots]
        for target, fd in enumerate(high):
            os.dup2(fd, target)  # dup2 clears close-on-exec on the target
        os.closerange(FIRST_INPUT_FD, _MAX_FD)  # the server's socket, other jobs' descriptors
    except BaseException:  # noqa: BLE001 - nothing to answer on: the parent sees the exit
        os._exit(70)

    def replay() -> None:
        if failure is not None:
            raise failure  # the server's imports failed: every job says why

    _answer(replay)


def serve() -> None:
    """The fork server (``python -I _bootstrap.py --fork-server``): import once, fork per job.

    It never reads a model byte: it holds the imports, and for each ``FORK`` message on fd 0
    (with a job socket, log, reply, result and status descriptor) forks a child that becomes a
    fresh single-use worker at fds 0-4, then sends the parent the child's pid and a pidfd for
    it. It reaps each child itself and writes ``{"status", "utime", "stime", "maxrss"}`` (from
    ``wait4``) on that job's status socket. End of file on fd 0 (the parent closed it or died)
    ends the server; running workers are the parent's to kill.
    """
    # posix_spawn keeps ignored signals ignored: a caller that ignores SIGCHLD would make the
    # kernel reap our children before we can read their exit status.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    failure: BaseException | None = None
    try:
        _preload()
    except Exception as exc:  # noqa: BLE001 - reported by each job, as a spawned worker would
        failure = exc
    ctl = socket.socket(fileno=FD_REQUEST)
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status descriptor)
    while True:
        for fd, _events in poller.poll():
            if fd != ctl.fileno():
                pid, status_fd = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                try:
                    _, status, usage = os.wait4(pid, 0)
                except ChildProcessError:  # reaped elsewhere: the parent fails closed on EOF
                    os.close(status_fd)
                    continue
                facts = {"status": status, "utime": usage.ru_utime, "stime": usage.ru_stime,
                         "maxrss": usage.ru_maxrss}  # fmt: skip
                with contextlib.suppress(OSError):  # the parent stopped listening: fine
                    os.write(status_fd, json.dumps(facts).encode())
                os.close(status_fd)
                continue
            try:
                msg, fds, _flags, _addr = socket.recv_fds(ctl, 64, 8)
            except OSError:
                msg, fds = b"", []
            if not msg:
                os._exit(0)
            if msg != FORK or len(fds) != 5:
                for extra in fds:
                    os.close(extra)
                continue
            pid = os.fork()
            if pid == 0:
                _become_worker(fds, failure)
            for job_fd in fds[:4]:
                os.close(job_fd)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = (pid, fds[4])
            poller.register(pidfd, select.POLLIN)
            socket.send_fds(ctl, [struct.pack("<q", pid)], [pidfd])


if __name__ == "__main__":
    main()
