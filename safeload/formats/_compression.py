"""gzip / bz2 / lzma / zlib wrappers, recognised by magic bytes and unwrapped with a bound.

An attacker controls the compressed stream, so every decompressor is asked for at most
``limits.max_decompressed_bytes + 1`` bytes: a zip-bomb style wrapper is refused after
producing one byte more than allowed, not after exhausting memory. Output lands in a private
``bytearray`` so tensors built over it are writable without another copy.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

from safeload.errors import FormatError, LimitExceededError
from safeload.policy import Limits

__all__ = ["MAX_WRAPPERS", "decompress", "sniff_wrapper"]

MAX_WRAPPERS = 3
"""Most nested wrappers we unwrap (gzip of bz2 of ...) before refusing."""

_CHUNK = 1 << 24
_FIRST_CHUNK = 1 << 10
"""Input is fed from 1 KiB, doubling up to ``_CHUNK``: a decompressor copies whatever follows
its stream's end into ``unused_data``, so a big first chunk would copy most of the file once
per tiny concatenated member."""


_MEMBERS_MIN, _MEMBER_BYTES = 16, 4096
"""Concatenated members allowed: pigz/pbzip2 write one per ~128 KiB-900 KiB block; a file of
empty 20-byte members costs a decompressor each (linear, but slow per byte)."""


def _feed(src: memoryview, pos: int) -> memoryview:
    """The next input chunk: as big as what was already fed, between 1 KiB and 16 MiB."""
    return src[pos : pos + min(_CHUNK, max(_FIRST_CHUNK, pos))]


def sniff_wrapper(data: bytes | memoryview) -> str | None:
    """The wrapper name (``gzip``, ``bz2``, ``lzma``, ``zlib``) or None, from magic bytes only."""
    head = bytes(data[:16])
    if head[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "lzma"
    # .lzma "alone" (what joblib writes): properties byte 0x5D and a dictionary size whose low
    # bytes are zero. A pickle cannot start with "]\x00".
    if len(head) >= 13 and head[0] == 0x5D and head[1] == 0 and head[2] == 0:
        return "lzma"
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    return None


def _zlib_stream(src: memoryview, wbits: int, out: bytearray, bound: int) -> int:
    dec = zlib.decompressobj(wbits=wbits)
    pos = 0
    while not dec.eof:
        data: bytes | memoryview = dec.unconsumed_tail
        if not data and pos < len(src):
            data = _feed(src, pos)
            pos += len(data)
        chunk = dec.decompress(data, bound + 1 - len(out))
        out += chunk
        if len(out) > bound:
            raise _BombError
        if not data and not chunk:
            raise EOFError("stream ends before its end marker")
    return pos - len(dec.unused_data)


def _buffered_stream(
    src: memoryview, dec: bz2.BZ2Decompressor | lzma.LZMADecompressor, out: bytearray, bound: int
) -> int:
    pos = 0
    while not dec.eof:
        data: bytes | memoryview = b""
        if dec.needs_input:
            if pos >= len(src):
                raise EOFError("stream ends before its end marker")
            data = _feed(src, pos)
            pos += len(data)
        out += dec.decompress(data, bound + 1 - len(out))
        if len(out) > bound:
            raise _BombError
    return pos - len(dec.unused_data)


class _BombError(Exception):
    pass


def _one(kind: str, src: memoryview, out: bytearray, bound: int) -> int:
    """Decompress the stream at the start of ``src`` into ``out``; return where it ended.

    An offset, not the rest as a copy: a file of a million empty gzip members would otherwise
    copy its remaining bytes once per member (quadratic time from a few megabytes)."""
    if kind == "gzip":
        return _zlib_stream(src, 31, out, bound)
    if kind == "zlib":
        return _zlib_stream(src, 15, out, bound)
    if kind == "bz2":
        return _buffered_stream(src, bz2.BZ2Decompressor(), out, bound)
    if kind == "lzma":
        return _buffered_stream(src, lzma.LZMADecompressor(format=lzma.FORMAT_AUTO), out, bound)
    raise FormatError(f"unknown compression wrapper {kind!r}", rule="formats.wrapper")


def decompress(data: bytes | memoryview, kind: str, *, limits: Limits, name: str = "") -> bytearray:
    """Unwrap one (possibly multi-member) compressed stream into private memory, bounded."""
    bound = limits.max_decompressed_bytes
    out = bytearray()
    src = memoryview(data).cast("B")
    members = 0
    try:
        while True:
            rest = src[_one(kind, src, out, bound) :]
            members += 1
            if len(rest) and sniff_wrapper(rest) == kind:
                if members > _MEMBERS_MIN + len(data) // _MEMBER_BYTES:
                    raise FormatError(
                        f"too many concatenated {kind} members",
                        path=name or None,
                        rule="formats.wrapper",
                        detail=f"more than one per {_MEMBER_BYTES} bytes on average",
                    )
                src = rest  # concatenated members (gzip -c a b, pbzip2, ...)
                continue
            if bytes(rest).strip(b"\x00"):
                raise FormatError(
                    f"data after the end of the {kind} stream",
                    path=name or None,
                    rule="formats.wrapper",
                    detail=f"{len(rest)} trailing bytes",
                )
            return out
    except _BombError:
        raise LimitExceededError(
            f"{kind} stream decompresses past the limit",
            path=name or None,
            rule="limits.max_decompressed_bytes",
            detail=f"more than {bound} bytes",
        ) from None
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise FormatError(
            f"corrupt {kind} stream", path=name or None, rule="formats.wrapper", detail=str(exc)
        ) from None
