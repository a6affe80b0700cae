"""The user's own allowlist: classes a caller vouches for, each with a stated reason.

Mirrors ``torch.serialization.add_safe_globals`` / ``safe_globals`` so code moves over easily,
with two differences that keep it honest: every entry carries a non-empty reason (it ends up
in the audit trail), and only classes are accepted. An allowlisted class is instantiated by
the pickle VM with ``cls.__new__`` and then given plain-data attributes; its ``__init__``,
``__reduce__`` and ``__setstate__`` are never called, so vouching for a class does not vouch
for arbitrary methods running at load time.

Process-wide entries live behind a lock; the ``safe_globals`` context manager layers extra
entries through a ``ContextVar`` so threads and asyncio tasks do not see each other's scopes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from safeload.errors import FormatError, UnsafeModelError, UsageError

__all__ = [
    "SafeGlobal",
    "SafeGlobalEntry",
    "add_safe_globals",
    "build_instance",
    "clear_safe_globals",
    "get_safe_globals",
    "instantiate",
    "resolve_entries",
    "safe_globals",
]

if TYPE_CHECKING:
    from safeload.formats._allowlist import Ctx

SafeGlobalEntry = tuple[type, str] | tuple[type, str, str]
"""``(cls, reason)`` or ``(cls, "module.qualname", reason)``."""


@dataclass(frozen=True, slots=True)
class SafeGlobal:
    """A resolved user entry, as the pickle VM receives it."""

    name: str
    """The exact ``"module.qualname"`` a pickle must name."""
    cls: type
    reason: str


_lock = threading.Lock()
_process: dict[str, SafeGlobal] = {}
_scoped: ContextVar[Mapping[str, SafeGlobal]] = ContextVar(
    "safeload_safe_globals", default=MappingProxyType({})
)


def _resolve(entry: object) -> SafeGlobal:
    if type(entry) is not tuple or len(entry) not in (2, 3):
        raise UsageError(
            f"safe global entry {entry!r} must be (cls, reason) or "
            "(cls, 'module.qualname', reason)",
            rule="safe_globals.entry",
        )
    cls = entry[0]
    if not isinstance(cls, type):
        raise UsageError(
            f"safe global {cls!r} is not a class; functions and builtins cannot be allowlisted",
            rule="safe_globals.entry",
            detail="only classes can be rebuilt from plain data without running their code",
        )
    if issubclass(cls, type) or cls.__module__ == "builtins":
        raise UsageError(
            f"{cls.__module__}.{cls.__qualname__} cannot be allowlisted",
            rule="safe_globals.entry",
            detail="metaclasses build new classes and builtins are covered by safeload's own "
            "table; allowlist your own data classes",
        )
    name = entry[1] if len(entry) == 3 else f"{cls.__module__}.{cls.__qualname__}"
    reason = entry[-1]
    if type(name) is not str or "." not in name or "<" in name:
        raise UsageError(
            f"safe global name {name!r} must be an exact 'module.qualname'",
            rule="safe_globals.entry",
            detail="pass (cls, 'module.qualname', reason) for local or renamed classes",
        )
    if type(reason) is not str or not reason.strip():
        raise UsageError(
            f"safe global {name} needs a reason saying why it is safe",
            rule="safe_globals.reason",
        )
    from safeload.formats._allowlist import ALLOWLIST

    if name in ALLOWLIST:
        raise UsageError(
            f"{name} is already handled by safeload's built-in allowlist",
            rule="safe_globals.entry",
            detail="a user entry may not replace a built-in reconstruction",
        )
    return SafeGlobal(name=name, cls=cls, reason=reason.strip())


def resolve_entries(entries: Iterable[SafeGlobalEntry]) -> dict[str, SafeGlobal]:
    """Validate entries and key them by name, without registering them anywhere."""
    if isinstance(entries, (str, bytes, tuple)):
        raise UsageError("safe globals must be given as a list of entries", rule="safe_globals")
    return {sg.name: sg for sg in map(_resolve, entries)}


def add_safe_globals(entries: Iterable[SafeGlobalEntry]) -> None:
    """Allow these classes in every later load of this process."""
    resolved = resolve_entries(entries)
    with _lock:
        _process.update(resolved)


@contextmanager
def safe_globals(entries: Iterable[SafeGlobalEntry]) -> Iterator[None]:
    """Allow these classes only inside the ``with`` block (this thread/task only)."""
    merged = dict(_scoped.get())
    merged.update(resolve_entries(entries))
    token = _scoped.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _scoped.reset(token)


def get_safe_globals() -> dict[str, SafeGlobal]:
    """Everything allowed right here: process-wide entries plus the current scope's."""
    with _lock:
        out = dict(_process)
    out.update(_scoped.get())
    return out


def clear_safe_globals() -> None:
    """Forget every process-wide entry (scoped entries end with their ``with`` block)."""
    with _lock:
        _process.clear()


def instantiate(sg: SafeGlobal, args: tuple[object, ...], ctx: Ctx) -> object:
    """``cls.__new__(cls, *plain_args)``: the trusted class's allocator, never ``__init__``."""
    from safeload.formats._allowlist import check_plain

    check_plain(args, ctx, f"arguments of {sg.name}")
    try:
        obj = sg.cls.__new__(sg.cls, *args)
    except Exception as exc:
        raise FormatError(
            f"could not allocate {sg.name}",
            rule="pickle.reconstruct",
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc
    if type(obj) is not sg.cls:
        raise UnsafeModelError(
            f"{sg.name}.__new__ returned another type", rule="pickle.reconstruct", code="SL103"
        )
    return obj


def build_instance(obj: object, state: object, ctx: Ctx) -> None:
    """Apply pickle BUILD state as plain attributes; never the class's ``__setstate__``.

    Accepts ``dict`` state or the ``(dict | None, slots dict)`` pair pickle uses for
    ``__slots__`` classes. Names may not be dunders, values must be plain data.
    """
    from safeload.formats._allowlist import check_plain

    slots: object = None
    if type(state) is tuple and len(state) == 2:
        state, slots = state
    for part in (state, slots):
        if part is None:
            continue
        if type(part) is not dict or not all(
            type(k) is str and not k.startswith("__") for k in part
        ):
            raise UnsafeModelError(
                "BUILD state must map attribute names to data", rule="pickle.build", code="SL103"
            )
        check_plain(part, ctx, f"state of {type(obj).__name__}")
        for k, v in part.items():
            try:
                object.__setattr__(obj, k, v)
            except (AttributeError, TypeError) as exc:
                raise FormatError(
                    f"cannot set attribute {k!r}", rule="pickle.build", detail=str(exc)
                ) from exc
