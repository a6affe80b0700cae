"""Seccomp layer: an allowlist BPF filter; the worker may make only the syscalls a parser needs.

Why hand-built BPF instead of a binding: the PyPI bindings are either unmaintained (``pyseccomp``,
last release 2021) or need ``libseccomp`` installed, and the program is about thirty
instructions that are easier to audit here than a dependency chain. The syscall numbers below
were generated once from libseccomp's tables (``seccomp_syscall_resolve_name_arch``).

Shape of the filter (default deny, as every allowlist here):

1. wrong architecture (or x32 ABI on x86_64) -> kill the process: numbers would mean other calls;
2. ``clone`` only with ``CLONE_THREAD`` (threads yes, new processes no); ``clone3`` -> ENOSYS, so
   libc falls back to ``clone``, whose flags the filter can read;
3. ``kill`` / ``tgkill`` / ``prlimit64`` only aimed at the worker itself;
4. the allowlisted calls -> allow; everything else (execve, socket, ptrace, mount, unshare, ...)
   -> EPERM.

Path-based calls (``openat``, ``mkdirat``...) are allowed here and confined by Landlock.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

from safeload.sandbox._landlock import libc

__all__ = ["ARCHES", "apply", "build_filter", "detect"]

# --- kernel ABI constants (linux/seccomp.h, linux/filter.h, linux/audit.h) ---
_PR_SET_SECCOMP = 22
_PR_GET_SECCOMP = 21
_SECCOMP_MODE_FILTER = 2
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_OFF_NR = 0
_OFF_ARCH = 4
_X32_SYSCALL_BIT = 0x40000000
_CLONE_THREAD = 0x00010000


def _off_arg_lo(i: int) -> int:
    return 16 + 8 * i  # seccomp_data.args[i], low 32 bits (little-endian)


def _off_arg_hi(i: int) -> int:
    return 20 + 8 * i


# What the worker needs after lockdown: memory, file descriptors it already holds, files Landlock
# lets it open, threads, time, signals to itself, exiting. Each is allowed for that reason only.
_ALLOWED: tuple[str, ...] = (
    # read input, write the answer, inspect descriptors
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "lseek",
    "close", "close_range", "fstat",
    "newfstatat", "statx", "stat", "lstat", "fstatfs", "fcntl", "dup", "dup2", "dup3",
    "ftruncate", "fallocate", "fsync", "fdatasync",
    # path calls: Landlock decides which paths
    "openat", "open", "access", "faccessat", "faccessat2", "getdents64", "mkdirat", "mkdir",
    "unlinkat", "unlink", "renameat",
    "renameat2", "rename", "rmdir", "readlinkat", "readlink", "getcwd",
    # memory
    "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "msync", "mincore",
    # threads and their synchronisation (numpy may start threads)
    "futex", "futex_waitv", "set_robust_list", "get_robust_list", "rseq", "sched_yield",
    "sched_getaffinity",
    "sched_getparam", "sched_getscheduler", "membarrier", "arch_prctl",
    # identity, time, signals to itself, limits, exit
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn", "sigaltstack", "clock_gettime", "clock_getres", "gettimeofday", "nanosleep",
    "clock_nanosleep",
    "getrandom", "getrlimit", "getrusage", "sysinfo", "uname", "poll", "ppoll",
    "pipe2", "exit", "exit_group",
)  # fmt: skip

# audit arch token -> syscall table (only the names this module refers to).
_X86_64 = {
    "read": 0, "write": 1, "readv": 19, "writev": 20, "pread64": 17, "pwrite64": 18,
    "preadv": 295, "pwritev": 296, "lseek": 8, "close": 3, "close_range": 436, "fstat": 5,
    "newfstatat": 262, "statx": 332, "stat": 4, "lstat": 6, "fstatfs": 138, "openat": 257,
    "open": 2, "access": 21, "faccessat": 269, "faccessat2": 439, "fcntl": 72, "dup": 32,
    "dup2": 33, "dup3": 292, "mmap": 9, "munmap": 11, "mprotect": 10, "mremap": 25,
    "madvise": 28, "brk": 12, "msync": 26, "mincore": 27, "futex": 202, "futex_waitv": 449,
    "set_robust_list": 273, "get_robust_list": 274, "rseq": 334, "sched_yield": 24,
    "sched_getaffinity": 204, "getpid": 39, "gettid": 186, "getppid": 110, "getuid": 102,
    "geteuid": 107, "getgid": 104, "getegid": 108, "rt_sigaction": 13, "rt_sigprocmask": 14,
    "rt_sigreturn": 15, "sigaltstack": 131, "clock_gettime": 228, "clock_getres": 229,
    "gettimeofday": 96, "nanosleep": 35, "clock_nanosleep": 230, "exit": 60, "exit_group": 231,
    "getrandom": 318, "ftruncate": 77, "fallocate": 285, "fsync": 74, "fdatasync": 75,
    "getdents64": 217, "mkdirat": 258, "mkdir": 83, "unlinkat": 263, "unlink": 87,
    "renameat": 264, "renameat2": 316, "rename": 82, "rmdir": 84, "readlinkat": 267,
    "readlink": 89, "getcwd": 79, "prlimit64": 302, "getrlimit": 97, "getrusage": 98,
    "sysinfo": 99, "uname": 63, "poll": 7, "ppoll": 271, "pipe2": 293, "clone": 56,
    "clone3": 435, "kill": 62, "tkill": 200, "tgkill": 234, "membarrier": 324, "arch_prctl": 158,
    "sched_getparam": 143, "sched_getscheduler": 145,
}  # fmt: skip
_AARCH64 = {
    "read": 63, "write": 64, "readv": 65, "writev": 66, "pread64": 67, "pwrite64": 68,
    "preadv": 69, "pwritev": 70, "lseek": 62, "close": 57, "close_range": 436, "fstat": 80,
    "newfstatat": 79, "statx": 291, "fstatfs": 44, "openat": 56, "faccessat": 48,
    "faccessat2": 439, "fcntl": 25, "dup": 23, "dup3": 24, "mmap": 222, "munmap": 215,
    "mprotect": 226, "mremap": 216, "madvise": 233, "brk": 214, "msync": 227, "mincore": 232,
    "futex": 98, "futex_waitv": 449, "set_robust_list": 99, "get_robust_list": 100,
    "rseq": 293, "sched_yield": 124, "sched_getaffinity": 123, "getpid": 172, "gettid": 178,
    "getppid": 173, "getuid": 174, "geteuid": 175, "getgid": 176, "getegid": 177,
    "rt_sigaction": 134, "rt_sigprocmask": 135, "rt_sigreturn": 139, "sigaltstack": 132,
    "clock_gettime": 113, "clock_getres": 114, "gettimeofday": 169, "nanosleep": 101,
    "clock_nanosleep": 115, "exit": 93, "exit_group": 94, "getrandom": 278, "ftruncate": 46,
    "fallocate": 47, "fsync": 82, "fdatasync": 83, "getdents64": 61, "mkdirat": 34,
    "unlinkat": 35, "renameat": 38, "renameat2": 276, "readlinkat": 78, "getcwd": 17,
    "prlimit64": 261, "getrlimit": 163, "getrusage": 165, "sysinfo": 179, "uname": 160,
    "ppoll": 73, "pipe2": 59, "clone": 220, "clone3": 435, "kill": 129, "tkill": 130,
    "tgkill": 131, "membarrier": 283, "sched_getparam": 121, "sched_getscheduler": 120,
}  # fmt: skip

# machine name -> (AUDIT_ARCH_* token, syscall table)
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, _X86_64),
    "aarch64": (0xC00000B7, _AARCH64),
}


def _stmt(code: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> bytes:
    if not (0 <= jt <= 255 and 0 <= jf <= 255):  # pragma: no cover - static program size
        raise ValueError("BPF jump out of range")
    return struct.pack("=HBBI", code, jt, jf, k)


def build_filter(machine: str, self_pid: int) -> bytes:
    """The BPF program (``struct sock_filter[]`` bytes) for ``machine`` and the worker's pid."""
    arch_token, table = ARCHES[machine]
    deny = _RET_ERRNO | errno.EPERM
    allowed = sorted({table[name] for name in _ALLOWED if name in table})
    prog: list[bytes] = [
        _stmt(_LD_W_ABS, _OFF_ARCH),
        _jump(_JEQ_K, arch_token, 1, 0),
        _stmt(_RET_K, _RET_KILL_PROCESS),
        _stmt(_LD_W_ABS, _OFF_NR),
    ]
    if machine == "x86_64":
        # x32 calls reuse the x86_64 audit token with this bit set: refuse them outright.
        prog += [_jump(_JSET_K, _X32_SYSCALL_BIT, 0, 1), _stmt(_RET_K, _RET_KILL_PROCESS)]
    # clone: only threads. Flags are args[0] (low word) on both supported arches.
    prog += [
        _jump(_JEQ_K, table["clone"], 0, 4),
        _stmt(_LD_W_ABS, _off_arg_lo(0)),
        _jump(_JSET_K, _CLONE_THREAD, 0, 1),
        _stmt(_RET_K, _RET_ALLOW),
        _stmt(_RET_K, deny),
        # clone3 passes flags behind a pointer BPF cannot read: ENOSYS makes libc use clone.
        _jump(_JEQ_K, table["clone3"], 0, 1),
        _stmt(_RET_K, _RET_ERRNO | errno.ENOSYS),
    ]
    # kill(pid, sig) and tgkill(tgid, tid, sig): only to this process (both words of the pid).
    for name in ("kill", "tgkill"):
        prog += [
            _jump(_JEQ_K, table[name], 0, 6),
            _stmt(_LD_W_ABS, _off_arg_hi(0)),
            _jump(_JEQ_K, 0, 0, 3),
            _stmt(_LD_W_ABS, _off_arg_lo(0)),
            _jump(_JEQ_K, self_pid, 0, 1),
            _stmt(_RET_K, _RET_ALLOW),
            _stmt(_RET_K, deny),
        ]
    # prlimit64(pid, ...): only pid 0 (itself), as getrlimit/setrlimit call it. Any other pid of
    # the same user would let the worker rewrite the caller's or the fork server's limits.
    prog += [
        _jump(_JEQ_K, table["prlimit64"], 0, 7),
        _stmt(_LD_W_ABS, _off_arg_hi(0)),
        _jump(_JEQ_K, 0, 0, 3),
        _stmt(_LD_W_ABS, _off_arg_lo(0)),
        _jump(_JEQ_K, 0, 2, 0),
        _jump(_JEQ_K, self_pid, 1, 0),
        _stmt(_RET_K, deny),
        _stmt(_RET_K, _RET_ALLOW),
    ]
    # The allowlist: each JEQ jumps forward to the shared ALLOW at the end.
    n = len(allowed)
    for i, nr in enumerate(allowed):
        prog.append(_jump(_JEQ_K, nr, n - i, 0))
    prog += [_stmt(_RET_K, deny), _stmt(_RET_K, _RET_ALLOW)]
    return b"".join(prog)


def detect() -> tuple[bool, str]:
    """Whether this kernel and architecture can take our filter, without installing it."""
    machine = platform.machine()
    if machine not in ARCHES:
        return False, f"no syscall table for architecture {machine!r}"
    if libc is None:
        return False, "libc not loadable through ctypes"
    mode = libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0)
    if mode < 0:
        return False, f"prctl(PR_GET_SECCOMP) failed: {os.strerror(ctypes.get_errno())}"
    return True, f"seccomp-bpf allowlist for {machine}"


def apply() -> str:
    """Install the filter on the calling process (no_new_privs must already be set)."""
    if libc is None:
        raise OSError(errno.ENOSYS, "libc not loadable through ctypes")
    machine = platform.machine()
    if machine not in ARCHES:
        raise OSError(errno.ENOSYS, f"no syscall table for architecture {machine!r}")
    program = build_filter(machine, os.getpid())
    buf = ctypes.create_string_buffer(program, len(program))

    class _SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    rc = libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
    return f"{len(program) // 8} BPF instructions, allowlist of {len(_ALLOWED)} syscalls"
