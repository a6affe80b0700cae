"""Checkpoints inside pickles: ``torch.storage._load_from_bytes``.

``pickle.dumps(tensor)`` (plain pickle, not ``torch.save``) saves each storage by calling
``torch.save(storage, _use_new_zipfile_serialization=False)`` and pickling the resulting bytes
as the argument of ``_load_from_bytes``, which torch later feeds to ``torch.load(...,
weights_only=False)``. We instead hand those bytes to safeload's own legacy reader, with the
same limits, pickle runner and safe globals as the outer file, and accept only what
``Storage.__reduce__`` writes: a checkpoint whose whole value is one storage.

The reader for the current file is found through a context variable that ``formats.read`` /
``analyze`` set for the duration of one parse, so the pickle VM needs no new parameter and a
bare ``run_pickle`` (no container reader around it) refuses the global. Nesting is bounded to
one level: bytes inside the embedded checkpoint naming ``_load_from_bytes`` again are refused.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING

from safeload.errors import FormatError, LimitExceededError, UnsafeModelError
from safeload.formats._types import StorageRef

if TYPE_CHECKING:
    from collections.abc import Iterator

    from safeload.formats._torch_zip import PickleRunner
    from safeload.policy._limits import Limits

__all__ = ["MAX_NESTING", "NestedStorages", "nested_scope", "read_nested_storage"]

MAX_NESTING = 1
"""Embedded checkpoints may not embed checkpoints themselves."""

_GLOBAL = "torch.storage._load_from_bytes"


class NestedStorages:
    """The storages found in embedded checkpoints of one file, keyed so they cannot collide.

    Keys look like ``bytes0/<key>``; a ``/`` never appears in a container's own storage keys
    (``check_storage_pid`` refuses it), so an outer storage cannot be shadowed.
    """

    def __init__(self, *, run: PickleRunner, limits: Limits, name: str, depth: int = 0) -> None:
        self.run = run
        self.limits = limits
        self.name = name
        self.depth = depth
        self.storages: dict[str, memoryview] = {}
        self.count = 0

    def read(self, blob: bytes) -> StorageRef:
        from safeload.formats._torch_legacy import parse_torch_legacy

        if self.depth >= MAX_NESTING:
            raise UnsafeModelError(
                f"{_GLOBAL} inside an embedded checkpoint",
                rule="pickle.nested",
                code="SL103",
                detail=f"embedded checkpoints are read {MAX_NESTING} level deep at most",
            )
        if len(self.storages) >= self.limits.max_tensors:
            raise LimitExceededError(
                f"more than {self.limits.max_tensors} embedded storages",
                path=self.name or None,
                rule="limits.max_tensors",
            )
        label = f"bytes{self.count}"
        self.count += 1
        inner_name = f"{self.name}:<{label}>"
        inner = NestedStorages(
            run=self.run, limits=self.limits, name=inner_name, depth=self.depth + 1
        )
        with nested_scope(inner):
            tp = parse_torch_legacy(
                memoryview(blob), limits=self.limits, name=inner_name, run=self.run
            )
        ref = tp.value
        if type(ref) is not StorageRef or set(tp.storages) != {ref.key}:
            raise FormatError(
                f"{_GLOBAL}: the embedded checkpoint is not a single storage",
                path=self.name or None,
                rule="pickle.nested",
                detail="only what Storage.__reduce__ writes is read",
            )
        key = f"{label}/{ref.key}"
        self.storages[key] = tp.storages[ref.key]
        return replace(ref, key=key)


_CURRENT: ContextVar[NestedStorages | None] = ContextVar("safeload_nested", default=None)


@contextmanager
def nested_scope(reader: NestedStorages) -> Iterator[NestedStorages]:
    """Make ``reader`` the one ``_load_from_bytes`` reconstructions use while parsing a file."""
    token = _CURRENT.set(reader)
    try:
        yield reader
    finally:
        _CURRENT.reset(token)


def read_nested_storage(blob: bytes) -> StorageRef:
    """The ``_load_from_bytes`` reconstruction: the embedded storage, read by our reader."""
    reader = _CURRENT.get()
    if reader is None:
        raise UnsafeModelError(
            f"{_GLOBAL} outside a file reader",
            rule="pickle.nested",
            code="SL103",
            detail="embedded checkpoints are only read through safeload.formats.read/analyze",
        )
    return reader.read(blob)
