"""What a file really is, decided from its bytes alone.

Extensions lie (a torch zip named ``.pkl``, a pickle named ``.bin`` or ``.weights``), and
loaders that dispatch on them are how disguised payloads get through. Every check here reads a
few header bytes, or for zips the validated central directory, and the answer names the
format plus any compression wrappers that were peeled off. Formats safeload recognises but
will not read are still *detected* (so the scanner can report them); readers refuse them.
"""

from __future__ import annotations

import json
import pickletools  # the opcode *decoder*; it never resolves or calls anything
import re
import struct
import tarfile  # header checksum only: the same test torch.load's legacy path applies
from dataclasses import dataclass
from enum import StrEnum

from safeload.errors import FormatError
from safeload.formats._compression import MAX_WRAPPERS, decompress, sniff_wrapper
from safeload.formats._zip import ZipArchive, is_zip
from safeload.policy import Limits

__all__ = ["Detection", "Format", "detect", "unwrap"]


class Format(StrEnum):
    """Format names; the policy's ``formats.allowed`` uses these strings."""

    SAFETENSORS = "safetensors"
    TORCH_ZIP = "torch_zip"
    TORCH_LEGACY = "torch_legacy"
    TORCH_TAR = "torch_tar"
    PICKLE = "pickle"
    NUMPY = "numpy"
    NPZ = "npz"
    ONNX = "onnx"
    GGUF = "gguf"
    JOBLIB = "joblib"
    KERAS = "keras"
    HDF5 = "hdf5"
    TORCHSCRIPT = "torchscript"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Detection:
    """The detected format, the wrappers peeled off (outermost first), and a short why."""

    format: Format
    wrappers: tuple[str, ...] = ()
    detail: str = ""


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_MAGIC_LONG1 = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")
_LEGACY_MAGIC_TEXT = b"L" + str(LEGACY_MAGIC).encode()
_HDF5 = b"\x89HDF\r\n\x1a\n"
_TAR_TORCH_MEMBERS = frozenset({"sys_info", "pickle", "storages", "tensors"})
# Opcodes a protocol 0/1 pickle (which has no PROTO header) can start with.
_P0_FIRST = frozenset(b"(}])cNIJKLMFGSTUVX")
_P0_WINDOW = 4096


def unwrap(
    data: bytes | bytearray | memoryview, *, limits: Limits, name: str = ""
) -> tuple[memoryview, tuple[str, ...]]:
    """Peel gzip/bz2/lzma/zlib wrappers (bounded in size and depth); the inner bytes and names."""
    view = memoryview(data).cast("B")
    wrappers: list[str] = []
    while (kind := sniff_wrapper(view)) is not None:
        if len(wrappers) >= MAX_WRAPPERS:
            raise FormatError(
                "too many nested compression wrappers",
                path=name or None,
                rule="formats.wrapper",
                detail=" > ".join(wrappers),
            )
        view = memoryview(decompress(view, kind, limits=limits, name=name))
        wrappers.append(kind)
    return view, tuple(wrappers)


def detect(
    data: bytes | bytearray | memoryview, *, name: str = "", limits: Limits | None = None
) -> Detection:
    """Detect the format of ``data`` by content; ``name`` is only used in messages."""
    inner, wrappers = unwrap(data, limits=limits or Limits(), name=name)
    fmt, detail = _detect_raw(inner, limits=limits or Limits(), name=name)
    return Detection(fmt, wrappers, detail)


def _detect_raw(data: memoryview, *, limits: Limits, name: str) -> tuple[Format, str]:
    head = bytes(data[:512])
    if is_zip(data):  # torch.load: zip first,
        return _detect_zip(data, limits=limits, name=name)
    if _is_tar(head):  # then tar, before it ever looks at a pickle
        return _detect_tar(data)
    if head[:6] == b"\x93NUMPY":
        return Format.NUMPY, "NumPy .npy magic"
    if head[:4] == b"GGUF":
        return Format.GGUF, "GGUF magic"
    if any(bytes(data[o : o + 8]) == _HDF5 for o in (0, 512, 1024, 2048)):
        return Format.HDF5, "HDF5 signature"
    if _is_safetensors(data):
        return Format.SAFETENSORS, "8-byte header length followed by a JSON header"
    if _is_pickle(data):
        return _detect_pickle(data, head)
    if _is_onnx(data):
        return Format.ONNX, "protobuf ModelProto with ir_version and graph"
    raise FormatError(
        "unrecognised file format",
        path=name or None,
        rule="formats.detect",
        detail=f"first bytes {head[:16].hex()}",
    )


def _is_safetensors(data: memoryview) -> bool:
    if len(data) < 10:
        return False
    (n,) = struct.unpack_from("<Q", data, 0)
    if not 2 <= n <= len(data) - 8 or data[8] != ord("{"):
        return False
    probe = bytes(data[8 : 8 + min(n, 1 << 16)]).rstrip(b" ")
    if n <= 1 << 16:
        try:
            return isinstance(json.loads(probe), dict)
        except ValueError:
            return False
    return probe[:2] in (b'{"', b"{ ")


def _is_tar(head: bytes) -> bool:
    """Whether ``tarfile`` accepts this first block, "ustar" magic or not (old v7 headers have
    none). ``torch.load`` tries a non-zip file as a legacy tar checkpoint *first*, so a pickle,
    ``.npy`` or safetensors file whose first block also checksums as a tar header is what
    torch would unpickle from its members: it must be judged as a tar, never as the benign
    format it also is (a scanner/loader desync)."""
    if len(head) < 512:
        return False
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _is_pickle(data: memoryview) -> bool:
    if len(data) >= 2 and data[0] == 0x80 and data[1] <= 5:
        return True
    if not data or data[0] not in _P0_FIRST:
        return False
    # Protocol 0/1 has no header: accept when the opening opcodes are ones CPython's unpickler
    # would read (up to STOP, or for many opcodes). Text files fail fast.
    return _p0_opcodes(data)


_OPCODES = {op.code.encode("latin-1")[0]: op for op in pickletools.opcodes}
_LENGTH_PREFIX = {-2: struct.Struct("<B"), -3: struct.Struct("<i"), -4: struct.Struct("<I"),
                  -5: struct.Struct("<Q")}  # fmt: skip
# C strtol(s, &end, 0), which _pickle.c's INT tries first: "010" is octal, "0x1f" hex.
_STRTOL = re.compile(rb"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\s*")
_NAME_LINE = re.compile(rb"\S+")


def _p0_opcodes(data: memoryview) -> bool:
    """Whether the first opcodes are what *CPython* accepts, not what ``pickletools`` decodes.

    ``pickletools`` reads INT/LONG in base 10, but ``_pickle.c`` accepts base 0 (``I0x1``,
    ``I010``, ``I1_0``): a pickle opening with one of those was no pickle to detection, so a
    scanner skipped it as text while ``pickle.load`` would run it. Conversely a decode error
    is not "ran off the window" unless the bytes really ran out: a 5 kB licence starting with
    ``Llama`` is text, not a pickle whose first line is too long.
    """
    window = bytes(data[:_P0_WINDOW])
    more = len(data) > _P0_WINDOW
    pos = 0
    for count in range(65):
        if pos >= len(window):
            return more
        op = _OPCODES.get(window[pos])
        if op is None:
            return False
        pos += 1
        if op.name == "STOP":
            return True
        n = op.arg.n if op.arg is not None else 0
        if n > 0:
            pos += n
        elif n in _LENGTH_PREFIX:
            fmt = _LENGTH_PREFIX[n]
            if pos + fmt.size > len(window):
                return more
            (length,) = fmt.unpack_from(window, pos)
            pos += fmt.size
            if not 0 <= length <= len(data) - pos:
                return False  # longer than the whole file: CPython fails too
            pos += length
        elif n == pickletools.UP_TO_NEWLINE:
            lines = 2 if op.name in ("GLOBAL", "INST") else 1
            for _ in range(lines):
                nl = window.find(b"\n", pos)
                if nl < 0:
                    return more
                if not _line_ok(op.name, window[pos:nl]):
                    return False
                pos = nl + 1
        if count >= 64:
            return True
    return True


def _line_ok(name: str, line: bytes) -> bool:
    """CPython's rules for a protocol 0 line argument (``Modules/_pickle.c``), generously."""
    try:
        if name == "INT":
            if not _STRTOL.fullmatch(line):
                int(line, 0)
        elif name == "LONG":
            int(line[:-1] if line.endswith(b"L") else line, 0)
        elif name in ("GET", "PUT"):
            int(line, 10)
        elif name == "FLOAT":
            float(line)
        elif name == "STRING":
            return len(line) >= 2 and line[:1] == line[-1:] and line[:1] in (b"'", b'"')
        elif name == "UNICODE":
            line.decode("raw_unicode_escape")
        elif name in ("GLOBAL", "INST"):
            return _NAME_LINE.fullmatch(line) is not None and line.decode("utf-8") != ""
    except ValueError:  # UnicodeDecodeError included
        return False
    return True


def _detect_pickle(data: memoryview, head: bytes) -> tuple[Format, str]:
    if _LEGACY_MAGIC_LONG1 in head[:64] or _LEGACY_MAGIC_TEXT in head[:64]:
        return Format.TORCH_LEGACY, "pickled PyTorch legacy magic number"
    window = bytes(data[: 1 << 20])
    if b"joblib.numpy_pickle" in window or b"NumpyArrayWrapper" in window:
        return Format.JOBLIB, "pickle naming joblib's NumpyArrayWrapper"
    if head[0] == 0x80:
        return Format.PICKLE, f"pickle protocol {head[1]}"
    return Format.PICKLE, "pickle protocol 0/1 (no PROTO)"


def _detect_tar(data: memoryview) -> tuple[Format, str]:
    names: set[str] = set()
    pos = 0
    while pos + 512 <= len(data) and len(names) < 64:
        block = bytes(data[pos : pos + 512])
        if block == b"\x00" * 512:
            break
        fname = block[:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
        try:
            size = int(block[124:136].split(b"\x00", 1)[0].strip() or b"0", 8)
        except ValueError:
            break
        if block[156:157] not in (b"x", b"g"):
            names.add(fname)
        pos += 512 + (size + 511) // 512 * 512
    if "pickle" in names and names <= _TAR_TORCH_MEMBERS:
        return Format.TORCH_TAR, "tar with PyTorch legacy members " + ", ".join(sorted(names))
    return Format.UNKNOWN, "tar archive"


def _detect_zip(data: memoryview, *, limits: Limits, name: str) -> tuple[Format, str]:
    names = ZipArchive(data, limits=limits, name=name).names()
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) == 1 and all("/" in n for n in names):
        root = next(iter(roots))
        if f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names):
            return Format.TORCHSCRIPT, "zip with constants.pkl / code/ (TorchScript)"
        if f"{root}/data.pkl" in names:
            return Format.TORCH_ZIP, f"zip with {root}/data.pkl"
    if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
        return Format.KERAS, "zip with config.json and model.weights.h5 (Keras v3)"
    if names and all(n.endswith(".npy") for n in names):
        return Format.NPZ, f"zip of {len(names)} .npy members"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return Format.TORCH_ZIP, "zip with a data.pkl record"
    return Format.UNKNOWN, "zip archive of unknown layout"


# ModelProto field numbers -> protobuf wire type.
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _is_onnx(data: memoryview) -> bool:
    """Walk the top-level ModelProto fields; every tag must be a known one with its wire type."""
    if not data or data[0] != 0x08:
        return False
    pos, seen = 0, set()
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            field, wire = tag >> 3, tag & 7
            if _ONNX_FIELDS.get(field) != wire:
                return False
            if wire == 0:
                _, pos = _varint(data, pos)
            else:
                length, pos = _varint(data, pos)
                pos += length
            seen.add(field)
    except ValueError:
        return False
    return pos == len(data) and {1, 7} <= seen
