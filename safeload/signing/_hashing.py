"""Hash a model folder: every file once, on every core, into memory the caller then loads.

Threat model for the reads below: the attacker controls the *content* and *size* of every
file and may rewrite or replace a file while we hash it. So (1) reads go into fixed-size
buffers or into one private buffer per file sized from ``fstat`` on the descriptor we
hash, never into "read the whole thing" calls sized by the file; (2) a file that is shorter
or longer than its ``fstat`` size by the time we finish is refused as changed; (3) in the
default ``keep="copy"`` mode the digest is computed over the very bytes that stay in our
private anonymous memory, so what is later loaded is exactly what was hashed, whatever
happens to the file afterwards. ``keep="mmap"`` (``unsafe_mmap``) maps the file instead and
therefore trusts that nobody writes to it in place after verification.

Parallelism: hashlib and blake3 release the GIL, so plain threads use every core. Files
are work items; with the OMS ``shards`` serialization each shard is its own work item, so one
big file is spread over all cores too.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from safeload.errors import LimitExceededError, SourceError
from safeload.signing._manifest import (
    DEFAULT_SHARD_SIZE,
    HashType,
    Manifest,
    Method,
    Resource,
    Serialization,
)
from safeload.source import ModelEntry, list_model_files, path_matcher

__all__ = [
    "DEFAULT_IGNORE_PATHS",
    "FileResult",
    "Keep",
    "Progress",
    "hash_entries",
    "hash_model",
    "shard_ranges",
]

Keep = Literal["none", "copy", "mmap"]
Progress = Callable[[int, int], None]
"""Called with (bytes hashed so far, total bytes), from worker threads."""

_CHUNK = 8 << 20
"""Read/hash granularity: large enough to amortise syscalls, small enough for steady progress."""

DEFAULT_IGNORE_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
"""Folders/files a signer leaves out by default, as model_signing does (recorded in the
signed statement, so verifiers know)."""


class _Hasher(Protocol):
    def update(self, data: memoryview | bytes, /) -> object: ...
    def digest(self) -> bytes: ...


def _new_hasher(hash_type: HashType, *, threads: bool = False) -> _Hasher:
    if hash_type == "sha256":
        return hashlib.sha256()
    import blake3  # optional dependency; imported only when asked for

    hasher: _Hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if threads else 1)
    return hasher


def shard_ranges(size: int, shard_size: int) -> list[tuple[int, int]]:
    """Shard boundaries; an empty file still gets one ``(0, 0)`` range so it is covered."""
    if size == 0:
        return [(0, 0)]
    return [(s, min(s + shard_size, size)) for s in range(0, size, shard_size)]


@dataclass(frozen=True, slots=True)
class FileResult:
    """Digests of one file and, when kept, the exact bytes they were computed over."""

    name: str
    path: str
    size: int
    resources: tuple[Resource, ...]
    data: memoryview | None
    owner: mmap.mmap | None = None
    """The writable private memory behind ``data``: anonymous (``copy``) or copy-on-write
    over the file (``mmap``)."""


class _Open:
    """One open file: its descriptor, authoritative size and (optional) kept buffer."""

    def __init__(self, entry: ModelEntry, keep: Keep) -> None:
        # The listing resolved links already (``entry.path`` is the checked target), so the
        # last component must not be one now; O_NONBLOCK keeps a FIFO swapped in since the
        # listing from blocking ``open`` until a writer appears (regular files ignore it).
        flags = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
        try:
            self.fd = os.open(entry.path, flags)
        except OSError as exc:
            raise SourceError("cannot open model file", path=str(entry.path),
                              detail=str(exc)) from exc
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError("not a regular file", path=str(entry.path),
                                  rule="source.file_type")
            if entry.identity is not None and entry.identity != (st.st_dev, st.st_ino):
                raise SourceError("file was replaced after the folder was listed",
                                  path=str(entry.path), rule="source.changed",
                                  detail=f"listed {entry.identity}, "
                                         f"opened {(st.st_dev, st.st_ino)}")
            self.size = st.st_size
            self.buffer: mmap.mmap | None = None
            if keep == "copy" and self.size:
                self.buffer = _private_memory(self.size)
            elif keep == "mmap" and self.size:
                # Copy-on-write: a loader may own writable tensors over it (no copy) and a
                # tensor write never reaches the file; pages not yet written still follow it.
                self.buffer = mmap.mmap(self.fd, self.size, flags=mmap.MAP_PRIVATE,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.entry = entry
        self.keep = keep

    def close(self) -> None:
        os.close(self.fd)


class _Progress:
    def __init__(self, total: int, callback: Progress | None) -> None:
        self.total, self.done, self.callback = total, 0, callback
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.callback is None:
            return
        with self.lock:
            self.done += n
            done = self.done
        self.callback(done, self.total)


_local = threading.local()


def _scratch() -> memoryview:
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(_CHUNK))
    return buf


def _private_memory(size: int) -> mmap.mmap:
    """Anonymous, private memory for one file's bytes: nothing outside this process can change it.

    Filling fresh memory costs a page fault per 4 KiB page, which measured as much as the hash
    itself (verify+load ~2x hash-only). Asking for transparent huge pages (THP is in
    ``madvise`` mode on common distributions) cuts the faults 512-fold and the worker threads
    take them as they read, spread over the cores. Pre-faulting instead (``MAP_POPULATE`` or
    ``MADV_POPULATE_WRITE``) measured slower than not pre-faulting at all, and pre-faulting huge
    pages slowest (see benchmarks/README.md). It is only a speed-up: without THP it is ignored.
    ``MAP_PRIVATE`` is explicit because ``mmap.mmap(-1, n)`` defaults to ``MAP_SHARED``, which is
    shmem: no THP there (``shmem_enabled`` is usually ``never``) and no use for sharing.
    """
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None and size >= _HUGE_PAGE:
        with contextlib.suppress(OSError):
            buf.madvise(advice)
    return buf


_HUGE_PAGE = 2 << 20


def _hash_range(f: _Open, start: int, end: int, hasher: _Hasher, progress: _Progress) -> None:
    """Feed bytes [start, end) of ``f`` to ``hasher``, keeping them if ``f`` keeps bytes."""
    if f.keep == "mmap" and f.buffer is not None:
        view = memoryview(f.buffer)
        for off in range(start, end, _CHUNK):
            hasher.update(view[off:min(off + _CHUNK, end)])
            progress.add(min(off + _CHUNK, end) - off)
        return
    off = start
    while off < end:
        want = min(_CHUNK, end - off)
        target = memoryview(f.buffer)[off:off + want] if f.buffer is not None else _scratch()[:want]
        n = os.preadv(f.fd, [target], off)
        if n <= 0:
            raise SourceError("file shrank while it was being hashed", path=str(f.entry.path),
                              rule="source.changed")
        hasher.update(target[:n])
        progress.add(n)
        off += n


def hash_entries(
    entries: Sequence[ModelEntry],
    *,
    serialization: Serialization,
    keep: Keep = "none",
    workers: int | None = None,
    progress: Progress | None = None,
    max_file_bytes: int | None = None,
    max_total_bytes: int | None = None,
) -> dict[str, FileResult]:
    """Hash ``entries`` as ``serialization`` says; one :class:`FileResult` per file name."""
    opened: list[_Open] = []
    try:
        total = 0
        for entry in entries:
            f = _Open(entry, keep)
            opened.append(f)
            if max_file_bytes is not None and f.size > max_file_bytes:
                raise LimitExceededError("model file is larger than allowed",
                                         path=entry.name, rule="limits.max_file_bytes")
            total += f.size
            if max_total_bytes is not None and total > max_total_bytes:
                raise LimitExceededError("model is larger than allowed", path=entry.name,
                                         rule="limits.max_total_bytes")
        if keep == "copy" and total > _physical_memory():
            raise LimitExceededError(
                "model is larger than this machine's memory", rule="signing.keep_bytes",
                detail="verify with keep_bytes=False (verification only), or load file by file",
            )
        return _run(opened, serialization, workers, _Progress(total, progress))
    finally:
        for f in opened:
            f.close()


def _run(opened: list[_Open], ser: Serialization, workers: int | None,
         progress: _Progress) -> dict[str, FileResult]:
    # (file index, start, end, resource name): biggest first so the pool stays busy.
    tasks: list[tuple[int, int, int, str]] = []
    for i, f in enumerate(opened):
        if ser.method == "shards":
            assert ser.shard_size is not None
            for start, end in shard_ranges(f.size, ser.shard_size):
                tasks.append((i, start, end, f"{f.entry.name}:{start}:{end}"))
        else:
            tasks.append((i, 0, f.size, f.entry.name))
    tasks.sort(key=lambda t: t[1] - t[2])
    n_workers = max(1, min(workers or _cpu_count(), len(tasks)))
    single_big = n_workers == 1 or len(tasks) == 1

    def work(task: tuple[int, int, int, str]) -> tuple[int, Resource]:
        i, start, end, name = task
        hasher = _new_hasher(ser.hash_type, threads=single_big)
        _hash_range(opened[i], start, end, hasher, progress)
        return i, Resource(name, ser.resource_algorithm, hasher.digest())

    if n_workers == 1:
        done = [work(t) for t in tasks]
    else:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="safeload-hash") as ex:
            done = list(ex.map(work, tasks))
    per_file: dict[int, list[Resource]] = {}
    for i, res in done:
        per_file.setdefault(i, []).append(res)
    out: dict[str, FileResult] = {}
    for i, f in enumerate(opened):
        if f.keep != "mmap" and os.pread(f.fd, 1, f.size):
            raise SourceError("file grew while it was being hashed", path=str(f.entry.path),
                              rule="source.changed")
        data = memoryview(f.buffer).toreadonly() if f.buffer is not None else None
        if data is None and f.keep != "none":
            data = memoryview(b"")
        resources = tuple(sorted(per_file.get(i, []), key=lambda r: _start_of(r.name, ser)))
        owner = f.buffer
        out[f.entry.name] = FileResult(f.entry.name, str(f.entry.path), f.size, resources, data,
                                       owner)
    return out


def _start_of(name: str, ser: Serialization) -> int:
    return int(name.rsplit(":", 2)[1]) if ser.method == "shards" else 0


def _physical_memory() -> int:
    """RAM in bytes; keeping more than this in private memory would end in the OOM killer."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def _cpu_count() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def hash_model(
    path: str | os.PathLike[str],
    *,
    method: Method = "shards",
    hash_type: HashType = "sha256",
    shard_size: int = DEFAULT_SHARD_SIZE,
    ignore_paths: Iterable[str] = DEFAULT_IGNORE_PATHS,
    allow_symlinks: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Hash a model folder into an OMS :class:`Manifest` (what a signer signs).

    ``ignore_paths`` are relative to the folder and are recorded in the manifest, as the OMS
    format does; a verifier reports files they cover rather than silently trusting them.
    """
    root = Path(path)
    ignored = tuple(dict.fromkeys(ignore_paths))
    ser = Serialization(method, hash_type, allow_symlinks, ignored,
                        shard_size if method == "shards" else None)
    entries = list_model_files(root, allow_symlinks=allow_symlinks, exclude=path_matcher(ignored))
    results = hash_entries(entries, serialization=ser, workers=workers, progress=progress)
    resources = tuple(r for fr in results.values() for r in fr.resources)
    name = root.resolve().name or "model"
    return Manifest(name, ser, resources)
