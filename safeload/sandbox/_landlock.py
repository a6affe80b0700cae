"""Landlock layer: the worker may read its input files and write its output folder, nothing else.

Landlock is an unprivileged LSM (Linux >= 5.13). A ruleset *handles* access rights; any handled
right not granted by a rule is denied. We handle every right of the reviewed list
``_FS_RIGHTS_BY_ABI`` that the running kernel's ABI knows, and grant only reads of the input
files and writes under the output folder. From ABI 4 outbound/inbound TCP is denied, from
ABI 6 signals to processes outside the sandbox and abstract unix sockets are denied too.
Syscalls 444-446 are the same on x86_64 and aarch64.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Sequence
from pathlib import Path

__all__ = ["abi_version", "apply", "detect", "libc"]


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):  # pragma: no cover - Windows, or not a glibc/musl process
        return None


libc = _load_libc()

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# Filesystem access rights (linux/landlock.h), by the ABI that introduced them.
_EXECUTE = 1 << 0
_WRITE_FILE = 1 << 1
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_CHAR = 1 << 6
_MAKE_DIR = 1 << 7
_MAKE_REG = 1 << 8
_MAKE_SOCK = 1 << 9
_MAKE_FIFO = 1 << 10
_MAKE_BLOCK = 1 << 11
_MAKE_SYM = 1 << 12
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3
_IOCTL_DEV = 1 << 15  # ABI 5
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: _REFER, 3: _TRUNCATE, 5: _IOCTL_DEV}
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

# Rights that may be granted on a regular file (the kernel refuses directory rights there).
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_INPUT_RIGHTS = _READ_FILE
_OUTPUT_RIGHTS = (
    _WRITE_FILE | _READ_FILE | _READ_DIR | _REMOVE_FILE | _REMOVE_DIR | _MAKE_DIR | _MAKE_REG
    | _TRUNCATE
)  # fmt: skip


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is missing or disabled."""
    if libc is None:
        return 0
    rc = int(libc.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION))
    return rc if rc > 0 else 0


def detect() -> tuple[bool, str]:
    if libc is None:
        return False, "libc not loadable through ctypes"
    abi = abi_version()
    if abi <= 0:
        err = ctypes.get_errno()
        why = "not built into this kernel" if err == errno.ENOSYS else "disabled at boot"
        return False, f"Landlock unavailable ({why}: {os.strerror(err)})"
    return True, f"Landlock ABI {abi}{_features(abi)}"


def _features(abi: int) -> str:
    extra = []
    if abi >= 4:
        extra.append("TCP denied")
    if abi >= 6:
        extra.append("signals and abstract sockets scoped")
    return f" ({', '.join(extra)})" if extra else ""


def _handled_fs(abi: int) -> int:
    return sum(rights for level, rights in _FS_RIGHTS_BY_ABI.items() if level <= abi)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _add_path(ruleset_fd: int, path: Path, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not path.is_dir():
            rights &= _FILE_RIGHTS
        attr = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr is packed
        assert libc is not None
        _check(
            libc.syscall(_SYS_ADD_RULE, ruleset_fd, _RULE_PATH_BENEATH, attr, 0),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(fd)


def apply(inputs: Sequence[Path], output_dir: Path | None) -> str:
    """Restrict the calling process (no_new_privs must already be set); returns a summary."""
    abi = abi_version()
    if abi <= 0 or libc is None:
        raise OSError(errno.ENOSYS, "Landlock unavailable")
    handled_fs = _handled_fs(abi)
    handled_net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset_fd = _check(
        libc.syscall(_SYS_CREATE_RULESET, attr, size, 0), "landlock_create_ruleset"
    )
    try:
        for path in inputs:
            _add_path(ruleset_fd, path, _INPUT_RIGHTS)
        if output_dir is not None:
            _add_path(ruleset_fd, output_dir, _OUTPUT_RIGHTS)
        _check(libc.syscall(_SYS_RESTRICT_SELF, ruleset_fd, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset_fd)
    granted = f"read {len(inputs)} input file(s)"
    if output_dir is not None:
        granted += ", write the output folder"
    return f"Landlock ABI {abi}{_features(abi)}: {granted}; everything else denied"
