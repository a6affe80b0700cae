"""PyTorch zip checkpoints (``torch.save`` since 1.6): ``<root>/data.pkl`` plus raw storages.

The archive has already passed the strict zip validator. Here we add what makes it a
checkpoint: exactly one top-level folder, a ``data.pkl`` run through safeload's pickle VM
(never an unpickler), a little-endian ``byteorder``, and for every storage the pickle names a
``<root>/data/<key>`` record whose size is exactly ``numel * itemsize``. Records stay zero-copy
slices of the file buffer; the result is a value tree with :class:`TensorSpec` placeholders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from safeload.errors import FormatError, UnsupportedFormatError
from safeload.formats._dtypes import lookup
from safeload.formats._types import StorageRef, StorageType
from safeload.formats._zip import ZipArchive
from safeload.policy import Limits

__all__ = ["PickleRunner", "TorchParse", "check_storage_pid", "parse_torch_zip"]

PickleRunner = Callable[
    [memoryview, int, Callable[[object], object] | None, str], tuple[object, int]
]
"""Runs one pickle stream through the VM: (bytes, start, persistent_load, name) -> (value, end)."""

_LOCATION = re.compile(r"[a-z_]{1,32}(:[0-9]{1,4})?")
_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def check_storage_pid(pid: object, path: str | None) -> tuple[str, str, int, str]:
    """Validate a ``('storage', StorageType, key, location, numel)`` persistent id exactly."""
    if (
        type(pid) is not tuple
        or len(pid) not in (5, 6)
        or pid[0] != "storage"
        or type(pid[1]) is not StorageType
        or type(pid[2]) is not str
        or type(pid[3]) is not str
        or type(pid[4]) is not int
        or (len(pid) == 6 and pid[5] is not None)
    ):
        raise FormatError(
            "persistent id is not a storage reference",
            path=path,
            rule="torch.persistent_id",
            detail=repr(pid)[:200],
        )
    _, stype, key, location, numel = pid[:5]
    if not _KEY.fullmatch(key) or not _LOCATION.fullmatch(location) or numel < 0:
        raise FormatError(
            "malformed storage reference",
            path=path,
            rule="torch.persistent_id",
            detail=repr(pid)[:200],
        )
    return key, lookup(stype.dtype).name, numel, location


def _root(archive: ZipArchive, path: str | None) -> str:
    names = archive.names()
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or not all("/" in n for n in names):
        raise FormatError(
            "a PyTorch checkpoint must hold exactly one top-level folder",
            path=path,
            rule="torch.layout",
            detail=f"top-level entries: {sorted(roots)[:5]}",
        )
    root = roots.pop()
    if f"{root}/data.pkl" not in archive.members:
        raise FormatError("checkpoint has no data.pkl", path=path, rule="torch.layout")
    return root


@dataclass(frozen=True, slots=True)
class TorchParse:
    """A checkpoint's value tree (with TensorSpec placeholders) and its storages' bytes."""

    value: object
    storages: dict[str, memoryview]
    """Each storage's bytes; empty when the parse was asked not to read tensor data."""
    offsets: dict[str, int]
    """Where each storage starts in the (unwrapped) file; -1 when it was decompressed."""
    sizes: dict[str, int]
    """Each storage's size in bytes (known without reading it)."""


def parse_torch_zip(
    data: memoryview,
    *,
    limits: Limits,
    name: str,
    run: PickleRunner,
    known_crcs: Mapping[tuple[int, int], int] | None = None,
    read_data: bool = True,
) -> TorchParse:
    """Validate the archive and run ``data.pkl``; storages are returned, not materialised.

    With ``read_data=False`` storage records are sized from the directory but neither read nor
    CRC-checked (``inspect``: the tensor table without touching tensor bytes).
    """
    path = name or None
    archive = ZipArchive(data, limits=limits, name=name, known_crcs=known_crcs)
    root = _root(archive, path)
    order = f"{root}/byteorder"
    if order in archive.members:
        order_value = bytes(archive.read(order))
        if order_value != b"little":
            raise UnsupportedFormatError(
                f"checkpoint byte order is {order_value[:16]!r}",
                path=path,
                rule="torch.byteorder",
                detail="only little-endian checkpoints are read",
            )
    records: dict[str, str] = {}
    offsets: dict[str, int] = {}
    sizes: dict[str, int] = {}

    def persistent_load(pid: object) -> object:
        key, dtype, numel, location = check_storage_pid(pid, path)
        record = f"{root}/data/{key}"
        member = archive.members.get(record)
        if member is None:
            raise FormatError(
                f"storage {key!r} has no record {record!r}", path=path, rule="torch.storage"
            )
        expected = numel * lookup(dtype).itemsize
        if member.size != expected:
            raise FormatError(
                f"storage {key!r} record is {member.size} bytes, the pickle claims {expected}",
                path=path,
                rule="torch.storage_size",
            )
        if key not in records:
            records[key] = record
            offsets[key] = member.data_offset if member.method == 0 else -1
            sizes[key] = member.size
        return StorageRef(key, dtype, numel, location)

    pkl = archive.read(f"{root}/data.pkl")
    value, end = run(pkl, 0, persistent_load, f"{name}:{root}/data.pkl")
    if end != len(pkl):
        raise FormatError(
            "bytes after the end of data.pkl", path=path, rule="torch.trailing_data", offset=end
        )
    storages: dict[str, memoryview] = {}
    if read_data:
        data_by_record = archive.read_many(list(records.values()))  # CRC-checks every storage
        storages = {key: data_by_record[record] for key, record in records.items()}
    return TorchParse(value, storages, offsets, sizes)
