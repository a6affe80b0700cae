"""Namespace layer: a fresh user namespace and an empty network namespace for the worker.

``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` leaves the worker with only a loopback interface
that is down, so nothing can be reached even if a socket could be made, and its capabilities
exist only inside its own user namespace. The kernel refuses this for multi-threaded callers,
so the worker applies it before anything starts a thread. Distributions may forbid
unprivileged user namespaces (sysctls, AppArmor); ``detect`` reads those knobs and the worker
reports what the kernel actually allowed.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from safeload.sandbox._landlock import libc

__all__ = ["apply", "detect"]

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def detect() -> tuple[bool, str]:
    if libc is None:
        return False, "libc not loadable through ctypes"
    if not Path("/proc/self/ns/user").exists():
        return False, "kernel built without user namespaces"
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        return False, "user.max_user_namespaces = 0"
    unprivileged = os.geteuid() != 0
    if unprivileged and _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        return False, "kernel.unprivileged_userns_clone = 0"
    if unprivileged and _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
        return False, "AppArmor restricts unprivileged user namespaces"
    return True, "unshare(CLONE_NEWUSER | CLONE_NEWNET) permitted by sysctls"


def apply() -> str:
    if libc is None:
        raise OSError(errno.ENOSYS, "libc not loadable through ctypes")
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUSER|CLONE_NEWNET): {os.strerror(err)}")
    return "new user namespace (no mapped ids) and empty network namespace"
