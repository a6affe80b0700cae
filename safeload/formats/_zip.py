"""Strict zip reading for PyTorch checkpoints and ``.npz`` archives.

``zipfile`` is lenient on purpose (it trusts the central directory, tolerates prepended and
appended bytes, and never compares local headers with the directory); those gaps are exactly
where container-desync attacks live (one tool sees one ``data.pkl``, another sees a different
one). Here the attacker controls every byte, so the archive is accepted only when it is
unambiguous: the members, their local headers, data descriptors, the central directory and the
end records tile the whole file with no gap, overlap or trailing byte; names are unique and
plain; methods are stored or deflate; nothing is encrypted. Stored members are returned as
zero-copy slices of the caller's buffer, CRC-checked the first time they are read.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from safeload.errors import FormatError, LimitExceededError, UnsupportedFormatError
from safeload.policy import Limits

__all__ = ["ChunkedCrc", "StreamingCrc", "ZipArchive", "ZipMember", "central_entries", "is_zip"]

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_LOC64 = b"PK\x06\x07"
_DESCRIPTOR = b"PK\x07\x08"
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
_STORED, _DEFLATED = 0, 8

try:  # ISA-L's CRC-32 is 5-10x zlib's; same polynomial, same results
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency, zlib the fallback
    from zlib import crc32 as _crc32

_crc32_combine: Callable[[int, int, int], int] | None
try:  # joins CRCs of consecutive parts, so reader threads can each CRC their own chunk
    from isal.isal_zlib import crc32_combine as _crc32_combine
except ImportError:  # pragma: no cover
    _crc32_combine = None
_PARALLEL_MIN = 1 << 20
_CRC_THREADS = 2


def is_zip(data: bytes | memoryview) -> bool:
    """True when the bytes start like a zip archive (a local header or an empty archive)."""
    head = bytes(data[:4])
    return head in (_LOCAL, _EOCD)


@dataclass(frozen=True, slots=True)
class ZipMember:
    """One validated member: where its data is and what it must decompress and hash to."""

    name: str
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    data_offset: int
    end_offset: int
    """End of the member's bytes in the file, data descriptor included."""


class ZipArchive:
    """A zip archive validated up front; members are read (and CRC-checked) on demand."""

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        *,
        limits: Limits,
        name: str = "",
        known_crcs: Mapping[tuple[int, int], int] | None = None,
    ) -> None:
        self._buf = memoryview(data).cast("B")
        self._limits = limits
        self._path = name or None
        self._checked: set[str] = set()
        self.members: dict[str, ZipMember] = {}
        self._parse()
        if known_crcs:
            # CRCs computed over exact byte ranges of this same buffer while it was being
            # filled (see StreamingCrc); they count only for a member whose validated data
            # range is exactly that range, and they must still equal the directory's CRC.
            for m in self.members.values():
                crc = known_crcs.get((m.data_offset, m.compressed_size))
                if crc is not None and m.method == _STORED and crc == m.crc:
                    self._checked.add(m.name)  # else read() computes the CRC itself

    # -- errors --------------------------------------------------------------------------
    def _bad(
        self, message: str, rule: str, offset: int | None = None, detail: str | None = None
    ) -> FormatError:
        return FormatError(
            message, path=self._path, rule=f"zip.{rule}", offset=offset, detail=detail
        )

    # -- parsing -------------------------------------------------------------------------
    def _unpack(self, fmt: str, offset: int) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self._buf):
            raise self._bad("zip structure runs past the end of the file", "truncated", offset)
        return struct.unpack_from(fmt, self._buf, offset)

    def _parse(self) -> None:
        buf = self._buf
        n = len(buf)
        tail_start = max(0, n - 22 - _U16)
        eocd = bytes(buf[tail_start:]).rfind(_EOCD)
        if eocd < 0:
            raise self._bad("no end of central directory record", "eocd")
        eocd += tail_start
        (_, disk, cd_disk, count_disk, count, cd_size, cd_offset, comment_len) = self._unpack(
            "<4s4H2LH", eocd
        )
        if eocd + 22 + comment_len != n:
            raise self._bad(
                "bytes after the end of the zip archive",
                "trailing_data",
                eocd + 22 + comment_len,
                detail="a zip must end with its end-of-central-directory record",
            )
        end_of_cd = eocd
        if eocd >= 20 and bytes(buf[eocd - 20 : eocd - 16]) == _LOC64:
            _, loc_disk, eocd64, total_disks = self._unpack("<4sLQL", eocd - 20)
            if loc_disk != 0 or total_disks not in (0, 1):
                raise UnsupportedFormatError(
                    "multi-disk zip archives are not supported",
                    path=self._path,
                    rule="zip.multidisk",
                )
            rec = self._unpack("<4sQ2H2L4Q", eocd64)
            if rec[0] != _EOCD64 or eocd64 + 12 + rec[1] != eocd - 20:
                raise self._bad("zip64 end record is inconsistent", "eocd64", eocd64)
            _, _, _, _, disk64, cd_disk64, count_disk64, count64, cd_size64, cd_offset64 = rec
            for small, big in (
                (count, count64),
                (count_disk, count_disk64),
                (cd_size, cd_size64),
                (cd_offset, cd_offset64),
            ):
                if small not in (_U16, _U32) and small != big:
                    raise self._bad("zip64 and classic end records disagree", "eocd64", eocd64)
            disk, cd_disk, count_disk, count, cd_size, cd_offset = (
                disk64,
                cd_disk64,
                count_disk64,
                count64,
                cd_size64,
                cd_offset64,
            )
            end_of_cd = eocd64
        if disk != 0 or cd_disk != 0 or count_disk != count:
            raise UnsupportedFormatError(
                "multi-disk zip archives are not supported", path=self._path, rule="zip.multidisk"
            )
        if count > self._limits.max_zip_members:
            raise LimitExceededError(
                f"zip lists {count} members",
                path=self._path,
                rule="limits.max_zip_members",
                detail=f"limit is {self._limits.max_zip_members}",
            )
        if cd_offset + cd_size != end_of_cd:
            raise self._bad(
                "central directory does not end where the end records start", "layout", cd_offset
            )
        self._parse_central(cd_offset, count, end_of_cd)
        # The members must tile [0, cd_offset) exactly: no prefix, gap or overlap.
        pos = 0
        for m in sorted(self.members.values(), key=lambda m: m.header_offset):
            if m.header_offset != pos:
                if m.header_offset < pos:
                    what, kind = "overlaps the previous member", "overlap"
                else:
                    what, kind = "leaves unaccounted bytes before it", "gap"
                raise self._bad(f"zip member {m.name!r} {what}", kind, m.header_offset)
            pos = m.end_offset
        if pos != cd_offset:
            raise self._bad("bytes between the last member and the central directory", "gap", pos)

    def _parse_central(self, offset: int, count: int, end: int) -> None:
        pos = offset
        inflated = 0
        for _ in range(count):
            (
                sig,
                _vmade,
                _vneed,
                flags,
                method,
                _t,
                _d,
                crc,
                csize,
                usize,
                nlen,
                elen,
                clen,
                disk,
                _ia,
                _ea,
                loff,
            ) = self._unpack("<4s6H3L5H2L", pos)
            if sig != _CENTRAL:
                raise self._bad("bad central directory entry", "central", pos)
            raw_name = bytes(self._buf[pos + 46 : pos + 46 + nlen])
            extra = bytes(self._buf[pos + 46 + nlen : pos + 46 + nlen + elen])
            pos += 46 + nlen + elen + clen
            if pos > end:
                raise self._bad("central directory entry runs past its end", "central", pos)
            usize, csize, loff = self._zip64(extra, usize, csize, loff, disk)
            name = self._name(raw_name, flags)
            if flags & 0x41:
                raise UnsupportedFormatError(
                    f"zip member {name!r} is encrypted", path=self._path, rule="zip.encryption"
                )
            if method not in (_STORED, _DEFLATED):
                raise UnsupportedFormatError(
                    f"zip member {name!r} uses compression method {method}",
                    path=self._path,
                    rule="zip.method",
                    detail="only stored and deflate are read",
                )
            if method == _STORED and csize != usize:
                raise self._bad(f"stored zip member {name!r} has two different sizes", "sizes")
            if method == _DEFLATED:
                # All members together: readers keep every member, so a per-member bound
                # alone would let N members hold N times the limit in memory.
                inflated += usize
                if inflated > self._limits.max_decompressed_bytes:
                    raise LimitExceededError(
                        f"zip member {name!r} would bring deflated members to {inflated} bytes",
                        path=self._path,
                        rule="limits.max_decompressed_bytes",
                        detail=f"more than {self._limits.max_decompressed_bytes} bytes",
                    )
            if name in self.members:
                raise self._bad(f"duplicate zip member name {name!r}", "duplicate_name")
            self.members[name] = self._local(name, raw_name, flags, method, crc, csize, usize, loff)
        if pos != end:
            raise self._bad("central directory size does not match its entries", "central", pos)

    def _zip64(
        self, extra: bytes, usize: int, csize: int, loff: int, disk: int
    ) -> tuple[int, int, int]:
        if _U32 not in (usize, csize, loff) and disk != _U16:
            return usize, csize, loff
        pos = 0
        while pos + 4 <= len(extra):
            tag, size = struct.unpack_from("<2H", extra, pos)
            body = extra[pos + 4 : pos + 4 + size]
            pos += 4 + size
            if tag != 1:
                continue
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            out = []
            for v in (usize, csize, loff):
                if v == _U32:
                    if not values:
                        raise self._bad("zip64 extra field is too short", "zip64")
                    v = values.pop(0)
                out.append(v)
            return out[0], out[1], out[2]
        raise self._bad("zip64 sizes announced but no zip64 extra field", "zip64")

    def _name(self, raw: bytes, flags: int) -> str:
        try:
            name = raw.decode("utf-8") if flags & 0x800 else raw.decode("cp437")
        except UnicodeDecodeError:
            raise self._bad("zip member name is not valid UTF-8", "name") from None
        parts = name.split("/")
        if (
            not name
            or "\\" in name
            or "\x00" in name
            or name.startswith("/")
            or (len(name) > 1 and name[1] == ":")
            or any(p in ("..", ".") for p in parts)
            or "" in parts[:-1]
        ):
            raise self._bad(
                f"unsafe zip member name {name!r}",
                "name",
                detail="no absolute, '..', backslash or empty parts",
            )
        return name

    def _local(
        self,
        name: str,
        raw_name: bytes,
        flags: int,
        method: int,
        crc: int,
        csize: int,
        usize: int,
        loff: int,
    ) -> ZipMember:
        (sig, _v, lflags, lmethod, _t, _d, lcrc, lcsize, lusize, nlen, elen) = self._unpack(
            "<4s5H3L2H", loff
        )
        if sig != _LOCAL:
            raise self._bad(f"no local header for zip member {name!r}", "local_header", loff)
        if bytes(self._buf[loff + 30 : loff + 30 + nlen]) != raw_name:
            raise self._bad(
                f"local header name differs from central directory name {name!r}", "desync", loff
            )
        if lmethod != method or (lflags & 0x849) != (flags & 0x849):
            raise self._bad(
                f"local header of {name!r} disagrees with the central directory", "desync", loff
            )
        data_offset = loff + 30 + nlen + elen
        end = data_offset + csize
        if end > len(self._buf):
            raise self._bad(f"zip member {name!r} runs past the end of the file", "truncated", loff)
        if flags & 0x08:
            if (lcrc, lcsize, lusize) != (0, 0, 0) and (lcrc, lcsize, lusize) != (
                crc,
                csize,
                usize,
            ):
                raise self._bad(
                    f"local header of {name!r} disagrees with the central directory", "desync", loff
                )
            end = self._descriptor(name, end, crc, csize, usize)
        else:
            lextra = bytes(self._buf[loff + 30 + nlen : data_offset])
            lusize, lcsize, _ = self._zip64(lextra, lusize, lcsize, 0, 0)
            if (lcrc, lcsize, lusize) != (crc, csize, usize):
                raise self._bad(
                    f"local header of {name!r} disagrees with the central directory", "desync", loff
                )
        return ZipMember(name, method, crc, csize, usize, loff, data_offset, end)

    def _descriptor(self, name: str, pos: int, crc: int, csize: int, usize: int) -> int:
        candidates = []
        for sig in (True, False):
            for wide in (False, True):
                fmt = ("<4s" if sig else "<") + ("L2Q" if wide else "3L")
                size = struct.calcsize(fmt)
                if pos + size > len(self._buf):
                    continue
                vals = struct.unpack_from(fmt, self._buf, pos)
                if sig and vals[0] != _DESCRIPTOR:
                    continue
                if tuple(vals[-3:]) == (crc, csize, usize):
                    candidates.append(pos + size)
        if not candidates:
            raise self._bad(
                f"data descriptor of {name!r} disagrees with the central directory", "desync", pos
            )
        return candidates[0]

    # -- reading -------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.members)

    def read(self, name: str) -> memoryview:
        """A member's bytes: a zero-copy slice if stored, a bounded private copy if deflated."""
        m = self.members.get(name)
        if m is None:
            raise self._bad(f"zip has no member {name!r}", "missing_member")
        raw = self._buf[m.data_offset : m.data_offset + m.compressed_size]
        if m.method == _STORED:
            data = raw
        else:
            dec = zlib.decompressobj(wbits=-15)
            try:
                out = bytearray(dec.decompress(raw, m.size + 1))
            except zlib.error as exc:
                raise self._bad(
                    f"corrupt deflate data in {name!r}", "deflate", m.data_offset, str(exc)
                ) from None
            if len(out) != m.size or not dec.eof or dec.unused_data or dec.unconsumed_tail:
                raise self._bad(
                    f"zip member {name!r} does not decompress to its declared size",
                    "deflate",
                    m.data_offset,
                )
            data = memoryview(out)
        if name not in self._checked:
            if _crc32(data) & _U32 != m.crc:
                raise self._bad(f"CRC mismatch in zip member {name!r}", "crc", m.data_offset)
            self._checked.add(name)
        return data

    def head(self, name: str, n: int) -> bytes:
        """Up to ``n`` leading bytes of a member, without reading (or CRC-checking) the rest."""
        m = self.members.get(name)
        if m is None:
            raise self._bad(f"zip has no member {name!r}", "missing_member")
        if m.method == _STORED:
            return bytes(self._buf[m.data_offset : m.data_offset + min(n, m.size)])
        dec = zlib.decompressobj(wbits=-15)
        raw = self._buf[m.data_offset : m.data_offset + m.compressed_size]
        try:
            return dec.decompress(raw, min(n, m.size))
        except zlib.error as exc:
            raise self._bad(
                f"corrupt deflate data in {name!r}", "deflate", m.data_offset, str(exc)
            ) from None

    def read_many(self, names: list[str]) -> dict[str, memoryview]:
        """Several members at once; CRCs of large stored members are checked on two threads.

        ``zlib.crc32`` releases the GIL, so a multi-GB checkpoint's CRC pass overlaps across
        cores instead of adding its full time to the load.
        """
        todo = [n for n in names if n in self.members and n not in self._checked]
        big = [
            n
            for n in todo
            if self.members[n].method == _STORED and self.members[n].size >= _PARALLEL_MIN
        ]
        if len(big) > 1 and sum(self.members[n].size for n in big) >= 4 * _PARALLEL_MIN:
            with ThreadPoolExecutor(max_workers=_CRC_THREADS) as pool:
                crcs = dict(zip(big, pool.map(self._stored_crc, big), strict=True))
            for n in big:
                if crcs[n] != self.members[n].crc:
                    raise self._bad(
                        f"CRC mismatch in zip member {n!r}", "crc", self.members[n].data_offset
                    )
                self._checked.add(n)
        return {n: self.read(n) for n in names}

    def _stored_crc(self, name: str) -> int:
        m = self.members[name]
        return _crc32(self._buf[m.data_offset : m.data_offset + m.compressed_size]) & _U32

    def verify_all(self) -> None:
        """Read every member once, so every CRC and deflate stream is checked."""
        for name in self.members:
            self.read(name)


# -- CRCs while reading --------------------------------------------------------------------------
def central_entries(pread: Callable[[int, int], bytes], size: int) -> list[tuple[int, int]]:
    """Best-effort (local header offset, compressed size) of each stored member, from the end
    records and central directory alone, so CRCs can be computed while the file is read.

    Only a hint: anything odd returns ``[]`` and the strict validator later decides everything
    (a hint that does not match a validated member is simply unused).
    """
    try:
        tail_len = min(size, 22 + _U16 + 20 + 56)
        tail = pread(size - tail_len, tail_len)
        eocd = tail.rfind(_EOCD)
        if eocd < 0:
            return []
        _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack_from("<4s4H2LH", tail, eocd)
        if eocd >= 20 and tail[eocd - 20 : eocd - 16] == _LOC64:
            _, _, eocd64, _ = struct.unpack_from("<4sLQL", tail, eocd - 20)
            rec = struct.unpack("<4sQ2H2L4Q", pread(eocd64, 56))
            if rec[0] != _EOCD64:
                return []
            count, cd_size, cd_offset = rec[7], rec[8], rec[9]
        if count > 100_000 or cd_size > 64 << 20 or cd_offset + cd_size > size:
            return []
        cd = pread(cd_offset, cd_size)
        out, pos = [], 0
        for _ in range(count):
            f = struct.unpack_from("<4s6H3L5H2L", cd, pos)
            if f[0] != _CENTRAL:
                return []
            method, csize, usize, nlen, elen, clen, loff = (
                f[4],
                f[8],
                f[9],
                f[10],
                f[11],
                f[12],
                f[16],
            )
            if _U32 in (csize, usize, loff):
                extra = cd[pos + 46 + nlen : pos + 46 + nlen + elen]
                vals = [usize, csize, loff]
                ext = _zip64_values(extra)
                for i in range(3):
                    if vals[i] == _U32 and ext:
                        vals[i] = ext.pop(0)
                usize, csize, loff = vals
            if method == _STORED and loff + csize <= size:  # else no member: not a hint
                out.append((loff, csize))
            pos += 46 + nlen + elen + clen
        return sorted(out)
    except (struct.error, ValueError, OverflowError, OSError):  # offsets past 2**63: pread
        return []


def _zip64_values(extra: bytes) -> list[int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<2H", extra, pos)
        if tag == 1:
            body = extra[pos + 4 : pos + 4 + size]
            return list(struct.unpack_from(f"<{len(body) // 8}Q", body))
        pos += 4 + size
    return []


class StreamingCrc:
    """CRC-32 of each stored member's data, computed chunk by chunk as the buffer fills.

    ``feed(end)`` is called (on one worker thread, in order) once bytes ``[0, end)`` of the
    buffer are final; it resolves local headers that are now complete and folds the newly
    available part of each member's data into its running CRC while it is still in cache.
    """

    def __init__(self, buf: memoryview, entries: list[tuple[int, int]]) -> None:
        self._buf = buf
        self._pending = list(reversed(entries))  # popped in file order
        self._active: list[list[int]] = []  # [data_offset, size, crc]
        self._done: dict[tuple[int, int], int] = {}
        self._fed = 0

    def feed(self, end: int) -> None:
        while self._pending and self._pending[-1][0] + 30 <= end:
            loff, csize = self._pending[-1]
            head = self._buf[loff : loff + 30]
            if bytes(head[:4]) != _LOCAL:
                self._pending.pop()
                continue
            nlen, elen = struct.unpack_from("<2H", head, 26)
            if loff + 30 + nlen + elen > end:
                break
            self._pending.pop()
            if loff + 30 + nlen + elen >= self._fed:  # else part of its data went by unhashed
                self._active.append([loff + 30 + nlen + elen, csize, 0])
        still = []
        for item in self._active:
            start, size, crc = item
            lo, hi = max(start, self._fed), min(start + size, end)
            if hi > lo:
                crc = _crc32(self._buf[lo:hi], crc)
            if start + size <= end:
                self._done[(start, size)] = crc & _U32
            else:
                item[2] = crc
                still.append(item)
        self._active = still
        self._fed = end

    def result(self) -> dict[tuple[int, int], int]:
        return dict(self._done)


class ChunkedCrc:
    """CRC-32 of each stored member's data, computed by the threads that fill the buffer.

    The data ranges come from the local headers, read before the fill starts, so each reader
    thread folds the parts of its own chunk while they are still in its cache, in parallel;
    ``result`` combines the parts in file order (``crc32_combine``). The ranges are only hints
    from bytes the attacker wrote: ``ZipArchive`` accepts a CRC only for a member whose validated
    data range is exactly the same range, and it must still equal the directory's CRC.
    """

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self._ranges = sorted(set(ranges))
        self._starts = [start for start, _ in self._ranges]
        self._parts: dict[tuple[int, int], list[tuple[int, int, int]]] = {
            r: [] for r in self._ranges
        }

    @classmethod
    def from_entries(
        cls, pread: Callable[[int, int], bytes], entries: list[tuple[int, int]]
    ) -> ChunkedCrc | None:
        """None where the combine step is unavailable (then use :class:`StreamingCrc`)."""
        if _crc32_combine is None:  # pragma: no cover - isal is a dependency
            return None
        ranges = []
        for loff, csize in entries:
            head = pread(loff, 30)
            if len(head) < 30 or head[:4] != _LOCAL:
                continue  # not a member ZipArchive will accept; it refuses the file itself
            nlen, elen = struct.unpack_from("<2H", head, 26)
            ranges.append((loff + 30 + nlen + elen, csize))
        return cls(ranges)

    def feed(self, buf: memoryview, start: int, end: int) -> None:
        """Fold bytes ``[start, end)`` (final in ``buf``) into every member range they touch."""
        # Ranges may overlap (hostile archives); start from the first that can reach `start`.
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while i > 0 and self._ranges[i - 1][0] + self._ranges[i - 1][1] > start:
            i -= 1
        for rng in self._ranges[i:]:
            lo_r, size = rng
            if lo_r >= end:
                break
            lo, hi = max(lo_r, start), min(lo_r + size, end)
            if hi > lo:
                self._parts[rng].append((lo, _crc32(buf[lo:hi]) & _U32, hi - lo))

    def result(self) -> dict[tuple[int, int], int]:
        assert _crc32_combine is not None
        done: dict[tuple[int, int], int] = {}
        for (lo_r, size), parts in self._parts.items():
            parts.sort()
            crc, pos = 0, lo_r
            for lo, part, n in parts:
                if lo != pos:
                    break  # a gap: leave this member to ZipArchive's own CRC pass
                crc = _crc32_combine(crc, part, n) & _U32
                pos += n
            if pos == lo_r + size:
                done[(lo_r, size)] = crc
        return done
