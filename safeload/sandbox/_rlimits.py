"""Resource-limit layer: the kernel stops a worker that allocates, spins, or writes too much.

The parent's wall-clock deadline is the backstop; these limits act inside the worker and need
no privileges. ``RLIMIT_AS`` turns a hostile "allocate 8 GiB" into ``MemoryError``,
``RLIMIT_CPU`` turns a spin into ``SIGXCPU`` (then ``SIGKILL`` one second later),
``RLIMIT_FSIZE`` bounds what may be written (the result memfd included), ``RLIMIT_NOFILE``
bounds descriptors, ``RLIMIT_NPROC`` bounds processes (root bypasses it; seccomp covers that),
and ``RLIMIT_CORE = 0`` keeps crashed workers from dumping model bytes to disk.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

if sys.platform != "win32":  # the sandbox is Linux-only; importing safeload is not
    import resource

__all__ = ["RlimitPlan", "apply", "detect"]


@dataclass(frozen=True, slots=True)
class RlimitPlan:
    """The limits one worker runs under; computed by the parent, sent in the request."""

    address_space: int
    cpu_seconds: int
    file_size: int
    open_files: int
    processes: int = 256


def detect() -> tuple[bool, str]:
    if sys.platform == "win32":
        return False, "no setrlimit on Windows"
    return True, "setrlimit: AS, CPU, FSIZE, NOFILE, NPROC, CORE"


def _lower(which: int, value: int) -> None:
    # Never raise a hard limit (unprivileged processes cannot, and we never want to).
    _soft, hard = resource.getrlimit(which)
    new_hard = value if hard == resource.RLIM_INFINITY else min(hard, value)
    resource.setrlimit(which, (min(value, new_hard), new_hard))


def apply(plan: RlimitPlan) -> str:
    _lower(resource.RLIMIT_CORE, 0)
    _lower(resource.RLIMIT_AS, plan.address_space)
    # RLIMIT_CPU counts from process start: the job's budget comes on top of the start-up
    # (imports) already spent. Soft limit sends SIGXCPU; the hard limit a second later SIGKILL.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    budget = math.ceil(usage.ru_utime + usage.ru_stime) + plan.cpu_seconds
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    cap = budget + 1
    new_hard = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    resource.setrlimit(resource.RLIMIT_CPU, (min(budget, new_hard), new_hard))
    _lower(resource.RLIMIT_FSIZE, plan.file_size)
    _lower(resource.RLIMIT_NOFILE, plan.open_files)
    _lower(resource.RLIMIT_NPROC, plan.processes)
    return (
        f"AS={plan.address_space >> 20} MiB, CPU={plan.cpu_seconds} s, "
        f"FSIZE={plan.file_size >> 20} MiB, NOFILE={plan.open_files}, NPROC={plan.processes}"
    )
