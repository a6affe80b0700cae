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


def _zlib_stream(src: memoryview, wbits: int, out: bytearray, bound: int) -> memoryview:
    dec = zlib.decompressobj(wbits=wbits)
    pos = 0
    while not dec.eof:
        data: bytes | memoryview = dec.unconsumed_tail
        if not data and pos < len(src):
            data = src[pos : pos + _CHUNK]
            pos += len(data)
        chunk = dec.decompress(data, bound + 1 - len(out))
        out += chunk
        if len(out) > bound:
            raise _BombError
        if not data and not chunk:
            raise EOFError("stream ends before its end marker")
    return memoryview(dec.unused_data + bytes(src[pos:]))


def _buffered_stream(
    src: memoryview, dec: bz2.BZ2Decompressor | lzma.LZMADecompressor, out: bytearray, bound: int
) -> memoryview:
    pos = 0
    while not dec.eof:
        data: bytes | memoryview = b""
        if dec.needs_input:
            if pos >= len(src):
                raise EOFError("stream ends before its end marker")
            data = src[pos : pos + _CHUNK]
            pos += len(data)
        out += dec.decompress(data, bound + 1 - len(out))
        if len(out) > bound:
            raise _BombError
    return memoryview(dec.unused_data + bytes(src[pos:]))


class _BombError(Exception):
    pass


def _one(kind: str, src: memoryview, out: bytearray, bound: int) -> memoryview:
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
    try:
        while True:
            rest = _one(kind, src, out, bound)
            if len(rest) and sniff_wrapper(rest) == kind:
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
