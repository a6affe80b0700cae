"""A tiny pickle assembler, so hostile test payloads are readable opcode lists, not blobs.

``asm("PROTO 2"...)`` is not a parser: pass ``(name, arg)`` tuples or bare names, using the
opcode names from :mod:`pickletools`. ``("RAW", b"...")`` splices bytes verbatim (for
truncated or malformed streams). Lists are flattened, so helpers can return several ops.
"""

from __future__ import annotations

import pickletools
import struct
from collections.abc import Iterable
from typing import Any

__all__ = ["OPS", "asm", "call", "glob", "sglobal", "ustr"]

OPS = {op.name: op for op in pickletools.opcodes}

Op = str | tuple[str, Any] | list[Any]


def _arg(kind: str, v: Any) -> bytes:
    if kind == "uint1":
        return bytes([v])
    if kind in ("uint2", "int4", "uint4", "uint8"):
        return struct.pack({"uint2": "<H", "int4": "<i", "uint4": "<I", "uint8": "<Q"}[kind], v)
    if kind == "decimalnl_short":
        if isinstance(v, bool):
            return b"01\n" if v else b"00\n"
        return str(v).encode() + b"\n"
    if kind == "decimalnl_long":
        return str(v).encode() + b"L\n"
    if kind == "stringnl":
        return v + b"\n"  # caller supplies the quotes, so malformed literals can be tested
    if kind == "stringnl_noescape":
        return v.encode() + b"\n"
    if kind == "stringnl_noescape_pair":
        return v[0].encode() + b"\n" + v[1].encode() + b"\n"
    if kind in ("string1", "bytes1"):
        return bytes([len(v)]) + v
    if kind in ("string4", "bytes4"):
        return struct.pack("<I", len(v)) + v
    if kind in ("bytes8", "bytearray8"):
        return struct.pack("<Q", len(v)) + bytes(v)
    if kind == "unicodestringnl":
        return v.encode("raw_unicode_escape") + b"\n"
    if kind.startswith("unicodestring"):
        raw = v.encode("utf-8", "surrogatepass")
        fmt = {"unicodestring1": "<B", "unicodestring4": "<I", "unicodestring8": "<Q"}[kind]
        return struct.pack(fmt, len(raw)) + raw
    if kind == "floatnl":
        return repr(v).encode() + b"\n"
    if kind == "float8":
        return struct.pack(">d", v)
    if kind in ("long1", "long4"):
        raw = v
        if isinstance(v, int):  # two's complement, little-endian, as pickle.encode_long
            raw = v.to_bytes((v.bit_length() >> 3) + 1, "little", signed=True) if v else b""
        return (bytes([len(raw)]) if kind == "long1" else struct.pack("<i", len(raw))) + raw
    raise ValueError(f"no encoder for argument kind {kind}")


def _flat(ops: Iterable[Op]) -> Iterable[str | tuple[str, Any]]:
    for op in ops:
        if isinstance(op, list):
            yield from _flat(op)
        else:
            yield op


def asm(*ops: Op) -> bytes:
    """Assemble opcodes; a trailing STOP is *not* added (tests control the end exactly)."""
    out = bytearray()
    for op in _flat(ops):
        name, arg = (op, None) if isinstance(op, str) else op
        if name == "RAW":
            out += arg
            continue
        info = OPS[name]
        out += info.code.encode("latin-1")
        if info.arg is not None:
            out += _arg(info.arg.name, arg)
    return bytes(out)


def ustr(s: str) -> tuple[str, str]:
    return ("SHORT_BINUNICODE", s) if len(s.encode()) < 256 else ("BINUNICODE", s)


def glob(module: str, name: str) -> tuple[str, tuple[str, str]]:
    """GLOBAL with the two newline-terminated strings."""
    return ("GLOBAL", (module, name))


def sglobal(module: str, name: str) -> list[Op]:
    """STACK_GLOBAL over two pushed strings (the protocol 4+ spelling)."""
    return [ustr(module), ustr(name), "STACK_GLOBAL"]


def call(func: Op, *args: Op) -> list[Op]:
    """``func(*args)`` as MARK ... TUPLE REDUCE."""
    return [func, "MARK", *args, "TUPLE", "REDUCE"]
