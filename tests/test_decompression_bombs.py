"""Decompression bombs: a few megabytes on disk that inflate past what this machine holds.

The bombs are real deflate streams built here: a block of zeros compressed once after a full
flush compresses to the same bytes every time, so repeating those bytes gives a valid stream
of any length without compressing gigabytes. A scaled-down copy is inflated with the standard
library to prove the construction. Nothing is inflated past the limit by safeload.
"""

from __future__ import annotations

import gzip
import io
import struct
import tomllib
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from safeload import LimitExceededError, Limits
from safeload.formats import analyze, detect

_BLOCK = 1 << 20
_CLAIM = 5 << 30  # 5 GiB: more than the 4 GiB default, far less than on disk


def _deflate_zeros(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, in O(1) compression work."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.compress(b"\x00" * _BLOCK)  # the first block differs (no flush before it); drop it
    c.flush(zlib.Z_FULL_FLUSH)
    unit = c.compress(b"\x00" * _BLOCK) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(b"\x00" * _BLOCK) + c.flush(zlib.Z_FULL_FLUSH)
    assert unit == again, "a full flush makes every zero block compress alike"
    return unit * mib + c.flush(zlib.Z_FINISH)


def _gzip_zeros(mib: int, *, crc: int = 0) -> bytes:
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + _deflate_zeros(mib) + struct.pack("<2I", crc, (mib * _BLOCK) & 0xFFFFFFFF)


def _zip64_member(name: bytes, deflated: bytes, usize: int) -> bytes:
    """A one-member zip whose deflated member declares ``usize`` (zip64 sizes)."""
    crc, big = 0, 0xFFFFFFFF  # the CRC is never reached: the size claim is refused first
    extra = struct.pack("<2H2Q", 1, 16, usize, len(deflated))
    local = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 45, 0, 8, 0, 0x21, crc, big, big, len(name), len(extra)
    )
    central_at = len(local) + len(name) + len(extra) + len(deflated)
    central = struct.pack(
        "<4s6H3L5H2L",
        b"PK\x01\x02", 45, 45, 0, 8, 0, 0x21, crc, big, big, len(name), len(extra), 0, 0, 0, 0, 0,
    ) + name + extra
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), central_at, 0)
    return local + name + extra + deflated + central + end


def test_the_bomb_construction_is_a_real_deflate_stream() -> None:
    small = _gzip_zeros(3, crc=zlib.crc32(b"\x00" * (3 * _BLOCK)))
    assert gzip.decompress(small) == b"\x00" * (3 * _BLOCK)
    big = _zip64_member(b"arr_0.npy", _deflate_zeros(5 * 1024), _CLAIM)
    assert len(big) < 8 << 20
    (info,) = zipfile.ZipFile(io.BytesIO(big)).infolist()
    assert (info.file_size, info.compress_type) == (_CLAIM, zipfile.ZIP_DEFLATED)


def test_default_limit_fits_this_kind_of_machine() -> None:
    """64 GiB let a ~64 MB bomb exhaust a 24 GiB host; 4 GiB is the default in code and file."""
    assert Limits().max_decompressed_bytes == 4 << 30
    with (Path(__file__).resolve().parent.parent / "policies" / "default.toml").open("rb") as f:
        assert tomllib.load(f)["limits"]["max_decompressed_bytes"] == 4 << 30


def test_zip_member_claiming_5_gib_is_refused_before_inflating() -> None:
    """Under the default limits, from the central directory alone: no byte is inflated."""
    bomb = _zip64_member(b"arr_0.npy", _deflate_zeros(5 * 1024), _CLAIM)
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceededError) as info:
            analyze(bomb, name="bomb.npz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.rule == "limits.max_decompressed_bytes"
    assert peak < 64 << 20, f"{peak} bytes allocated for a refusal from metadata"


def test_zip_members_together_are_bounded_not_each_alone() -> None:
    """Each deflated member under the limit, all of them over it: a reader that keeps every
    member (a .npz, a checkpoint's storages) would hold members x limit bytes."""
    buf = io.BytesIO()
    np.savez_compressed(buf, *(np.zeros(96 * 1024, np.uint8) for _ in range(4)))
    limits = Limits(max_decompressed_bytes=256 * 1024)
    with pytest.raises(LimitExceededError) as info:
        analyze(buf.getvalue(), name="four.npz", limits=limits)
    assert info.value.rule == "limits.max_decompressed_bytes"
    analyze(buf.getvalue(), name="four.npz", limits=Limits(max_decompressed_bytes=1 << 20))


def test_gzip_bomb_of_5_gib_streams_into_a_bounded_buffer() -> None:
    """A 5 GiB gzip (about 5 MB here) under a 64 MiB limit: refused once the output passes
    the limit, with memory a small multiple of the limit, never the whole inflated stream."""
    bomb = _gzip_zeros(5 * 1024)
    assert len(bomb) < 8 << 20
    limit = 64 << 20
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceededError) as info:
            detect(bomb, limits=Limits(max_decompressed_bytes=limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.rule == "limits.max_decompressed_bytes"
    assert peak < 4 * limit, f"peak {peak} bytes for a {limit}-byte limit"
