"""The five isolation layers, in the order the worker applies them, each detected and reported.

Order matters: limits first (they bound everything after), then ``no_new_privs`` (Landlock and
seccomp require it, and it makes set-uid binaries inert), then namespaces (the kernel wants a
single-threaded caller), then -- after the worker has imported everything it will ever need --
Landlock and finally seccomp, which also forbids undoing any of the above.

Every layer yields a :class:`LayerReport`; a layer named in ``required_layers`` that cannot be
applied stops the worker before it reads a byte (fail closed). Optional layers that fail are
reported, never silently assumed.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safeload.errors import SandboxError
from safeload.sandbox import _landlock, _namespaces, _rlimits, _seccomp
from safeload.sandbox._landlock import libc

__all__ = [
    "LAYERS",
    "LayerReport",
    "apply_landlock",
    "apply_namespaces",
    "apply_no_new_privs",
    "apply_rlimits",
    "apply_seccomp",
    "check_layer_names",
    "detect_all",
    "detect_no_new_privs",
    "skipped",
]

LAYERS: tuple[str, ...] = ("rlimits", "no_new_privs", "namespaces", "landlock", "seccomp")
"""Every layer name, in the order applied; the values ``sandbox.required_layers`` accepts."""

_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39


@dataclass(frozen=True, slots=True)
class LayerReport:
    """What one layer did: could this machine do it, was it done, and why (not)."""

    name: str
    available: bool
    applied: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: object) -> LayerReport:
        """Rebuild a report sent by the worker; the worker is untrusted, so check every field."""
        if not isinstance(raw, dict) or set(raw) != {"name", "available", "applied", "reason"}:
            raise SandboxError("worker sent a malformed layer report", rule="sandbox.protocol")
        name, available, applied, reason = (
            raw["name"], raw["available"], raw["applied"], raw["reason"]
        )  # fmt: skip
        if (
            name not in LAYERS
            or not isinstance(available, bool)
            or not isinstance(applied, bool)
            or not isinstance(reason, str)
        ):
            raise SandboxError("worker sent a malformed layer report", rule="sandbox.protocol")
        return cls(name, available, applied, reason[:500])


def check_layer_names(names: Collection[str], rule: str) -> frozenset[str]:
    unknown = sorted(set(names) - set(LAYERS))
    if unknown:
        raise SandboxError(
            f"unknown sandbox layer(s): {', '.join(unknown)}",
            rule=rule,
            detail=f"known layers: {', '.join(LAYERS)}",
        )
    return frozenset(names)


def detect_no_new_privs() -> tuple[bool, str]:
    if libc is None:
        return False, "libc not loadable through ctypes"
    if libc.prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) < 0:
        return False, f"prctl(PR_GET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}"
    return True, "prctl(PR_SET_NO_NEW_PRIVS)"


_DETECTORS: dict[str, Callable[[], tuple[bool, str]]] = {
    "rlimits": _rlimits.detect,
    "no_new_privs": detect_no_new_privs,
    "namespaces": _namespaces.detect,
    "landlock": _landlock.detect,
    "seccomp": _seccomp.detect,
}


def detect_all() -> tuple[LayerReport, ...]:
    """What this machine offers, checked in the calling process without changing it."""
    reports = []
    for name in LAYERS:
        try:
            available, reason = _DETECTORS[name]()
        except OSError as exc:  # a probe failing means "not available", never a crash
            available, reason = False, f"probe failed: {exc}"
        reports.append(LayerReport(name, available, False, reason))
    return tuple(reports)


# --- apply (run inside the worker only) ------------------------------------------------------


def _run(name: str, action: Callable[[], str], required: Collection[str]) -> LayerReport:
    try:
        reason = action()
    except OSError as exc:
        if name in required:
            raise SandboxError(
                f"required sandbox layer {name!r} could not be applied",
                rule="sandbox.required_layers",
                detail=f"{name}: {exc.strerror or exc}",
            ) from exc
        return LayerReport(name, exc.errno != errno.ENOSYS, False, str(exc.strerror or exc))
    return LayerReport(name, True, True, reason)


def skipped(name: str, required: Collection[str], why: str) -> LayerReport:
    """A layer deliberately not applied (an audited ``unsafe_skip_layers`` entry)."""
    if name in required:
        raise SandboxError(
            f"required sandbox layer {name!r} was skipped",
            rule="sandbox.required_layers",
            detail=f"{name}: {why}",
        )
    return LayerReport(name, True, False, why)


def apply_rlimits(plan: _rlimits.RlimitPlan, required: Collection[str]) -> LayerReport:
    return _run("rlimits", lambda: _rlimits.apply(plan), required)


def _no_new_privs() -> str:
    if libc is None:
        raise OSError(errno.ENOSYS, "libc not loadable through ctypes")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    return "set-uid/file capabilities can no longer raise privileges"


def apply_no_new_privs(required: Collection[str]) -> LayerReport:
    return _run("no_new_privs", _no_new_privs, required)


def apply_namespaces(required: Collection[str]) -> LayerReport:
    return _run("namespaces", _namespaces.apply, required)


def apply_landlock(
    inputs: Sequence[Path], output_dir: Path | None, required: Collection[str]
) -> LayerReport:
    return _run("landlock", lambda: _landlock.apply(inputs, output_dir), required)


def apply_seccomp(required: Collection[str]) -> LayerReport:
    return _run("seccomp", _seccomp.apply, required)
