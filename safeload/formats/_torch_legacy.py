"""Legacy PyTorch checkpoints (``_use_new_zipfile_serialization=False``): five pickles, then raw
storages.

Layout: magic number, protocol version (1001), ``sys_info``, the main object (storages named by
persistent id), the list of storage keys, then for each key an 8-byte little-endian element
count followed by the storage's bytes. All five pickles run through safeload's pickle VM. The
element count written in the file must equal what the pickle claimed for that key, the tail
must be consumed exactly, and only little-endian files are read. The legacy *tar* format is
detected elsewhere and refused: torch has not written it since 2018, its loader is the path
behind CVE-2025-32434, and ``torch.load(weights_only=True)`` refuses it too.
"""

from __future__ import annotations

import struct

from safeload.errors import FormatError, UnsupportedFormatError
from safeload.formats._detect import LEGACY_MAGIC
from safeload.formats._dtypes import lookup
from safeload.formats._torch_zip import PickleRunner, TorchParse, check_storage_pid
from safeload.formats._types import StorageRef
from safeload.policy import Limits

__all__ = ["PROTOCOL_VERSION", "parse_torch_legacy"]

PROTOCOL_VERSION = 1001


def parse_torch_legacy(
    data: memoryview, *, limits: Limits, name: str, run: PickleRunner
) -> TorchParse:
    """Run the legacy pickles through the VM and slice each storage out of the tail."""
    path = name or None

    def bad(message: str, offset: int | None = None, detail: str | None = None) -> FormatError:
        return FormatError(
            message, path=path, rule="torch_legacy.layout", offset=offset, detail=detail
        )

    magic, pos = run(data, 0, None, f"{name}:magic")
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise bad("not a legacy PyTorch checkpoint (bad magic number)", 0)
    protocol, pos = run(data, pos, None, f"{name}:protocol")
    if type(protocol) is not int or protocol != PROTOCOL_VERSION:
        raise UnsupportedFormatError(
            f"legacy checkpoint protocol {protocol!r} is not supported",
            path=path,
            rule="torch_legacy.protocol",
        )
    sys_info, pos = run(data, pos, None, f"{name}:sys_info")
    if type(sys_info) is not dict:
        raise bad("sys_info is not a dict", pos)
    if sys_info.get("little_endian") is not True:
        raise UnsupportedFormatError(
            "big-endian legacy checkpoint",
            path=path,
            rule="torch.byteorder",
            detail="only little-endian files are read",
        )

    claims: dict[str, tuple[str, int]] = {}

    def persistent_load(pid: object) -> object:
        key, dtype, numel, location = check_storage_pid(pid, path)
        previous = claims.setdefault(key, (dtype, numel))
        if previous != (dtype, numel):
            raise FormatError(
                f"storage {key!r} is named with two different types or sizes",
                path=path,
                rule="torch.storage_size",
            )
        return StorageRef(key, dtype, numel, location)

    value, pos = run(data, pos, persistent_load, f"{name}:main")
    keys, pos = run(data, pos, None, f"{name}:storage_keys")
    if (
        type(keys) is not list
        or not all(type(k) is str for k in keys)
        or len(set(keys)) != len(keys)
    ):
        raise bad("storage key list is malformed", pos)
    if len(keys) > limits.max_tensors:
        raise bad(f"{len(keys)} storages", pos)
    storages: dict[str, memoryview] = {}
    offsets: dict[str, int] = {}
    for key in keys:
        if key not in claims:
            raise bad(f"storage {key!r} is listed but no tensor names it", pos)
        dtype, numel = claims[key]
        if pos + 8 > len(data):
            raise bad("file ends inside the storage table", pos)
        (count,) = struct.unpack_from("<q", data, pos)
        if count != numel:
            raise FormatError(
                f"storage {key!r} holds {count} elements, the pickle claims {numel}",
                path=path,
                rule="torch.storage_size",
                offset=pos,
            )
        pos += 8
        nbytes = count * lookup(dtype).itemsize
        if pos + nbytes > len(data):
            raise bad(f"storage {key!r} runs past the end of the file", pos)
        storages[key] = data[pos : pos + nbytes]
        offsets[key] = pos
        pos += nbytes
    missing = set(claims) - set(storages)
    if missing:
        raise FormatError(
            f"tensors name storages the file does not hold: {sorted(missing)[:5]}",
            path=path,
            rule="torch.storage",
        )
    if pos != len(data):
        raise FormatError(
            "bytes after the last storage", path=path, rule="torch_legacy.trailing_data", offset=pos
        )
    return TorchParse(value, storages, offsets, {k: len(v) for k, v in storages.items()})
