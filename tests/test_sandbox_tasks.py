"""Hostile code the sandbox tests run *inside* the worker, on purpose.

The worker loads this file only when the parent's environment names it in
``SAFELOAD_SANDBOX_TEST_TASKS`` (the tests set it; a model file cannot). Each task tries one
thing the sandbox must stop and reports what happened as plain data, so the test can say which
layer stopped it: the errno, and the step that failed. No pytest import: this runs in the worker.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from safeload.sandbox._worker import TaskContext

Outcome = tuple[object, dict[str, Any]]


def _blocked(step: str, exc: OSError) -> Outcome:
    return {"blocked": True, "step": step, "errno": exc.errno}, {}


def _passed(step: str) -> Outcome:
    return {"blocked": False, "step": step, "errno": None}, {}


def attempt_exec(ctx: TaskContext) -> Outcome:
    try:
        os.execv("/bin/true", ["/bin/true"])
    except OSError as exc:
        return _blocked("execve", exc)
    raise AssertionError("unreachable: execv returned")  # pragma: no cover


def attempt_fork(ctx: TaskContext) -> Outcome:
    try:
        pid = os.fork()
    except OSError as exc:
        return _blocked("fork", exc)
    if pid == 0:  # pragma: no cover - the child must never exist
        os._exit(0)
    os.waitpid(pid, 0)
    return _passed("fork")


def attempt_socket(ctx: TaskContext) -> Outcome:
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return _blocked("socket", exc)
    with sock:
        try:
            sock.connect(("127.0.0.1", int(ctx.params["port"])))
        except OSError as exc:
            return _blocked("connect", exc)
    return _passed("connect")


def attempt_read_outside(ctx: TaskContext) -> Outcome:
    try:
        Path(ctx.params["path"]).read_bytes()
    except OSError as exc:
        return _blocked("open", exc)
    return _passed("open")


def attempt_write(ctx: TaskContext) -> Outcome:
    try:
        Path(ctx.params["path"]).write_bytes(b"written from the sandbox")
    except OSError as exc:
        return _blocked("open", exc)
    return _passed("open")


def attempt_signal_parent(ctx: TaskContext) -> Outcome:
    """Signal the caller (its pid comes in the params) and the fork server (our parent)."""
    outcomes = []
    for pid in (int(ctx.params["caller"]), os.getppid()):
        try:
            os.kill(pid, 0)  # signal 0: a probe, harmless if it ever got through
        except OSError as exc:
            outcomes.append(_blocked("kill", exc)[0])
        else:
            outcomes.append(_passed("kill")[0])
    if outcomes[0] != outcomes[1]:
        return {"blocked": "mixed", "step": "kill", "errno": None}, {}
    return outcomes[0], {}


def attempt_signal_self(ctx: TaskContext) -> Outcome:
    os.kill(os.getpid(), 0)
    return _passed("kill")


def attempt_allocate(ctx: TaskContext) -> Outcome:
    try:
        block = bytearray(int(ctx.params["bytes"]))
    except MemoryError:
        return {"blocked": True, "step": "allocate", "errno": None}, {}
    return _passed(f"allocate {len(block)}")  # pragma: no cover


def attempt_spin(ctx: TaskContext) -> Outcome:
    while True:
        pass


def attempt_sleep(ctx: TaskContext) -> Outcome:
    time.sleep(3600)
    return _passed("sleep")  # pragma: no cover


def read_own_input(ctx: TaskContext) -> Outcome:
    data = bytes(ctx.data(0))
    by_path = ctx.paths[0].read_bytes()
    return {"same": data == by_path, "size": len(data)}, {}


def echo_structure(ctx: TaskContext) -> Outcome:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    value = {
        "weights": arr,
        "same_again": arr,
        "transposed": arr.T,
        "state": {0: {"step": 3, "exp_avg": np.ones(2, dtype=np.float64)}},
        "nested": [1, 2.5, float("nan"), None, True, "text", b"\x00\x01", (1, "a")],
        "empty": np.zeros((0, 3), dtype=np.int64),
        "big_endian": np.arange(3, dtype=">i4"),
        "scalar": np.float32(1.5),
        "structured": np.array([(1, (2.0, 3.0))], dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
        "text": np.array(["ab", "cde"]),
        "complex": np.array([1 + 2j], dtype=np.complex64),
        "odd": [1 + 2j, frozenset({1}), {2, 3}, slice(1, None, 2), bytearray(b"x")],
    }
    return value, {"kind": "echo"}


def echo_modules(ctx: TaskContext) -> Outcome:
    """Which modules the worker has loaded (start-up cost and attack surface)."""
    import sys

    return sorted(sys.modules), {}


def attempt_write_input(ctx: TaskContext) -> Outcome:
    """Change the bytes the parent will load: write to the input, then map it shared writable."""
    import mmap

    fd = ctx.fds[0]
    try:
        os.pwrite(fd, b"X", 0)
    except OSError as write_exc:
        try:
            mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as map_exc:
            errnos = [write_exc.errno, map_exc.errno]
            return {"blocked": True, "step": "write+mmap", "errno": errnos}, {}
        mm[0] = ord("X")
        return _passed("mmap")
    return _passed("pwrite")


def echo_pid(ctx: TaskContext) -> Outcome:
    """The worker's own pid (as its parent, the fork server, sees it: pid namespaces stay off)."""
    return os.getpid(), {}


def echo_crash(ctx: TaskContext) -> Outcome:
    """Die without a reply (and without DONE): the parent must rely on the exit status."""
    os._exit(3)


def attempt_prlimit_other(ctx: TaskContext) -> Outcome:
    """Rewrite another process's limits (the caller's pid in ``params``, then the fork server's).

    It writes back the values it read, so a pass changes nothing; only the reach is tested.
    """
    import resource

    out = {}
    for label, pid in (("caller", int(ctx.params["pid"])), ("server", os.getppid())):
        try:
            now = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, now)
        except OSError as exc:
            out[label] = exc.errno
        else:
            out[label] = None
    return out, {}


def attempt_robust_list_other(ctx: TaskContext) -> Outcome:
    """Read the caller's robust-futex list head (an address in its libc TLS: a layout leak)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    head, size = ctypes.c_void_p(), ctypes.c_size_t()
    nr = {"x86_64": 274, "aarch64": 100}[os.uname().machine]
    rc = libc.syscall(nr, int(ctx.params["pid"]), ctypes.byref(head), ctypes.byref(size))
    if rc != 0:
        return {"blocked": True, "step": "get_robust_list", "errno": ctypes.get_errno()}, {}
    return _passed("get_robust_list")


def attempt_prlimit_self(ctx: TaskContext) -> Outcome:
    """Read and rewrite its own limits, as getrlimit/setrlimit (prlimit64 on pid 0) do."""
    import resource

    try:
        now = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, now)
        resource.prlimit(os.getpid(), resource.RLIMIT_NOFILE)
    except OSError as exc:
        return _blocked("prlimit self", exc)
    return _passed("prlimit self")


def echo_open_fds(ctx: TaskContext) -> Outcome:
    """Every descriptor the worker holds (probed with fstat, which Landlock does not gate)."""
    import stat

    found = {}
    for fd in range(4096):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        kind = "sock" if stat.S_ISSOCK(mode) else "reg" if stat.S_ISREG(mode) else "other"
        found[str(fd)] = [kind, os.fstat(fd).st_dev]
    return found, {}


def attempt_read_granted_path(ctx: TaskContext) -> Outcome:
    """Read the input by the *path* the parent named, which may not be the file behind fd 5."""
    try:
        data = ctx.paths[0].read_bytes()
    except OSError as exc:
        return _blocked("open path", exc)
    return {"blocked": False, "step": "open path", "errno": None, "data": data.decode()}, {}


def attempt_done_early(ctx: TaskContext) -> Outcome:
    """Say DONE before any reply exists, then keep running: the parent must neither wait for
    it nor trust the empty reply, and the worker must not outlive the job."""
    os.write(0, b"done")
    time.sleep(60)
    return _passed("done early")


TASKS = {
    name: fn
    for name, fn in globals().items()
    if callable(fn) and name.startswith(("attempt_", "read_own", "echo_"))
}
