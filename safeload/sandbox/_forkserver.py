"""The parent's handle on the fork server: one imported interpreter that forks each worker.

Starting a worker from scratch costs an interpreter plus NumPy and the readers (about 0.15 s of
CPU); forking an interpreter that already imported them costs a few milliseconds. So the first
sandboxed job of a process starts one *fork server* (``python -I _bootstrap.py
--fork-server``, spawned exactly as a worker used to be: ``posix_spawn``, a scrubbed
environment, its own session) and every job, the first included, is a fresh child of it: single
use, its own session, its layers applied after it has its request. The server never sees a
model byte, holds no secret (it was spawned, not forked from the caller), and dies when this
process closes its socket or exits.

What forking from one server shares between workers: the address-space layout and the hash
seed. A worker that an exploit takes over learns both for the workers after it; they hold no
secrets and each is confined by its own layers, and the caller's process shares neither.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

from safeload.errors import SandboxError
from safeload.sandbox import _worker

if sys.platform != "win32":  # the sandbox is Linux-only; importing safeload is not
    import fcntl

__all__ = ["ForkServer", "exited", "worker_env"]

_BOOTSTRAP = str(Path(__file__).resolve().with_name("_bootstrap.py"))
_ANSWER_TIMEOUT = 30.0  # a fork takes milliseconds; only a wedged server takes this long
_LOG_TAIL = 2000
_RESET = tuple(
    getattr(signal, name)
    for name in ("SIGCHLD", "SIGXCPU", "SIGXFSZ", "SIGTERM", "SIGINT")
    if hasattr(signal, name)  # importing safeload.sandbox works anywhere; running it needs Linux
)


def exited(pidfd: int) -> bool:
    """Whether the process behind ``pidfd`` has ended (a pidfd polls readable then)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def worker_env() -> dict[str, str]:
    """The whole environment of the server and its workers: no tokens, no proxies."""
    env = {
        "PATH": os.defpath,
        "LANG": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }
    extra = os.environ.get(_worker.TEST_TASKS_ENV)
    if extra:
        env[_worker.TEST_TASKS_ENV] = extra
    return env


class ForkServer:
    """One running fork server, owned by the process that started it."""

    def __init__(self) -> None:
        self.env = worker_env()
        self.owner = os.getpid()
        self._lock = threading.Lock()
        self.ctl, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log_fd = os.memfd_create("safeload-forkserver-log", os.MFD_CLOEXEC)
        self.pidfd: int | None = None
        self._closed = False
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in (child_end.fileno(),
                                                                       self.log_fd)]  # fmt: skip
        try:
            actions: list[tuple[Any, ...]] = [
                (os.POSIX_SPAWN_DUP2, high[0], _worker.FD_REQUEST),
                (os.POSIX_SPAWN_DUP2, high[1], 1),
                (os.POSIX_SPAWN_DUP2, high[1], 2),
            ]
            argv = [sys.executable, "-I", _BOOTSTRAP, "--fork-server"]
            # Nothing of the caller's signal state: an ignored SIGCHLD would let the kernel reap
            # workers before the server reads their status; a blocked mask would be inherited.
            self.pid = os.posix_spawn(sys.executable, argv, self.env, file_actions=actions,
                                      setsid=True, setsigmask=(), setsigdef=_RESET)  # fmt: skip
        except OSError as exc:
            self.ctl.close()
            os.close(self.log_fd)
            raise SandboxError("could not start the sandbox fork server", rule="sandbox.spawn",
                               detail=str(exc)) from exc  # fmt: skip
        finally:
            for fd in high:
                os.close(fd)
            child_end.close()
        self.pidfd = os.pidfd_open(self.pid)

    def alive(self) -> bool:
        """Running, in this process, with the environment a new server would get."""
        if self.owner != os.getpid() or self.env != worker_env() or self.pidfd is None:
            return False
        return not exited(self.pidfd)

    def log_tail(self) -> str:
        try:
            size = os.fstat(self.log_fd).st_size
            start = max(0, size - _LOG_TAIL)
            return os.pread(self.log_fd, size - start, start).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def fork(self, fds: list[int]) -> tuple[int, int]:
        """A new worker on ``fds`` (job socket, log, reply, result, status) -> (pid, pidfd)."""
        with self._lock:  # one request, one answer, in order
            try:
                socket.send_fds(self.ctl, [_worker.FORK], fds)
                self.ctl.settimeout(_ANSWER_TIMEOUT)
                msg, got, _flags, _addr = socket.recv_fds(self.ctl, 16, 1)
            except OSError as exc:
                raise SandboxError(
                    "the sandbox fork server did not answer", rule="sandbox.spawn",
                    detail=f"{exc}; server log: {self.log_tail()}",
                ) from exc  # fmt: skip
        if len(msg) != 8 or len(got) != 1:
            for fd in got:
                os.close(fd)
            raise SandboxError("the sandbox fork server gave no worker", rule="sandbox.spawn",
                               detail=self.log_tail() or None)  # fmt: skip
        (pid,) = struct.unpack("<q", msg)
        return pid, got[0]

    def stop(self) -> None:
        """End the server (it holds no job, so killing it loses nothing) and reap it."""
        self.ctl.close()
        if self.owner == os.getpid() and self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self.forget()

    def forget(self) -> None:
        """Close our descriptors without touching the server (a forked child of the caller)."""
        self.ctl.close()
        if self._closed:
            return
        self._closed = True
        for fd in (self.log_fd, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.pidfd = None
