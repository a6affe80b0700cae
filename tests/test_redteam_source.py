"""Red-team findings in model folder listing and in how files are opened after it.

Each test builds the hostile folder for real (deep trees, odd names, FIFOs) in ``tmp_path``.
"""

from __future__ import annotations

import errno
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import safeload
from safeload.signing._hashing import hash_entries
from safeload.signing._manifest import Serialization
from safeload.source import ModelEntry, check_relative_name, list_model_files


def test_deeply_nested_folder_is_listed_not_a_recursion_error(tmp_path: Path) -> None:
    """The recursive walk raised a bare ``RecursionError`` on a folder 1100 levels deep (a
    cloned repo can be shaped like that): a crash instead of a ``SafeloadError``.

    The tree here is only a few hundred deep, listed under a recursion limit lowered to match,
    which overflows any one-frame-per-level walk just the same. A 1100-deep tree left behind
    by an interrupted run broke every later pytest session: pytest purges old temp folders at
    exit with the recursive ``shutil.rmtree`` (Python 3.11), which hit ``RecursionError`` and
    leaked a ``ScandirIterator`` (``ResourceWarning``). A shallow leftover it removes fine."""
    depth, here = 400, os.getcwd()
    os.chdir(tmp_path)
    try:
        for _ in range(depth):
            os.mkdir("a")
            os.chdir("a")
        Path("w.bin").write_bytes(b"x")
        os.chdir(tmp_path)
        old_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(len(inspect.stack(0)) + 150)
        try:
            (entry,) = list_model_files(tmp_path)
        finally:
            sys.setrecursionlimit(old_limit)
        assert entry.name == "a/" * depth + "w.bin"
    finally:
        os.chdir(here)


@pytest.mark.parametrize(
    "raw", [b"model\n[ok] evil.bin", b"model\x1b[2J.bin", b"\xff\xfe.bin", b"tab\there.bin"]
)
def test_names_with_control_characters_or_invalid_utf8_are_refused(
    tmp_path: Path, raw: bytes
) -> None:
    """A newline in a file name forged extra lines in reports and audit logs; bytes that are
    not UTF-8 became lone surrogates no manifest can carry. Both are refused when listed."""
    (tmp_path / "ok.bin").write_bytes(b"x")
    with open(os.path.join(os.fsencode(tmp_path), raw), "wb") as fh:
        fh.write(b"x")
    with pytest.raises(safeload.SourceError, match="control characters or is not UTF-8"):
        list_model_files(tmp_path)


@pytest.mark.parametrize("bad", ["a\nb", "x/\x7f", "\udcff"])
def test_relative_names_from_manifests_refuse_control_characters(bad: str) -> None:
    with pytest.raises(safeload.SourceError):
        check_relative_name(bad)


@pytest.mark.parametrize(
    ("one", "two"),
    [("Model.safetensors", "model.safetensors"), ("caf\u00e9.bin", "cafe\u0301.bin")],
)
def test_names_that_merge_on_other_file_systems_are_refused(
    tmp_path: Path, one: str, two: str
) -> None:
    """macOS and Windows merge case, and HFS+ normalises Unicode: a folder holding both names
    verifies here, and a copy of it holds a different file under a verified name."""
    (tmp_path / one).write_bytes(b"1")
    (tmp_path / two).write_bytes(b"2")
    with pytest.raises(safeload.SourceError, match="case or Unicode") as info:
        list_model_files(tmp_path)
    assert info.value.rule == "source.name_collision"


def test_ordinary_unicode_names_still_list(tmp_path: Path) -> None:
    (tmp_path / "modèle-权重.bin").write_bytes(b"1")
    assert [e.name for e in list_model_files(tmp_path)] == ["modèle-权重.bin"]


# --- opening: a FIFO where a file was ---------------------------------------------------------
@contextmanager
def _unblocker(fifo: Path) -> Iterator[Callable[[], bool]]:
    """Opens the FIFO's write end if a reader blocks on it (so a hang becomes a failure);
    yields a function saying whether it had to."""
    stop, rescued = threading.Event(), threading.Event()

    def run() -> None:
        deadline = time.monotonic() + 1.5
        while not stop.is_set():
            if time.monotonic() > deadline:
                try:  # succeeds only while someone holds the read end open
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    rescued.set()
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
            stop.wait(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield rescued.is_set
    finally:
        stop.set()
        t.join()


def test_load_refuses_a_fifo_instead_of_hanging(tmp_path: Path) -> None:
    """A FIFO named ``model.pt`` in a shared cache hung ``safeload.load`` in ``open()`` (the
    ``S_ISREG`` check came after); found here and fixed in ``_load.py`` (O_NONBLOCK open)."""
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with _unblocker(fifo) as rescued, pytest.raises(safeload.SafeloadError):
        safeload.load(fifo)
    assert not rescued(), "load blocked in open() until a writer appeared"


def test_hashing_refuses_a_fifo_swapped_in_after_listing(tmp_path: Path) -> None:
    """Between ``list_model_files`` (which refuses FIFOs) and hashing, a co-tenant replaces
    ``model.bin`` with a FIFO: ``verify`` blocked forever in ``open()``. Fixed as for load:
    ``_Open`` opens with ``O_NONBLOCK`` and the ``S_ISREG`` check follows. The entry is
    rebuilt without the listing's identity so the file-type check alone is exercised."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"w" * 64)
    (entry,) = list_model_files(tmp_path)
    target.unlink()
    os.mkfifo(target)  # the swap
    ser = Serialization(method="files", hash_type="sha256")
    with _unblocker(target) as rescued, pytest.raises(safeload.SourceError):
        hash_entries([ModelEntry(entry.name, entry.path, entry.size)], serialization=ser)
    assert not rescued(), "hashing blocked in open() until a writer appeared"


def test_hashing_refuses_a_regular_file_swapped_in_after_listing(tmp_path: Path) -> None:
    """Same race with an ordinary file of the same size: the (device, inode) the listing saw
    no longer matches the descriptor, so hashing refuses instead of hashing the newcomer."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"w" * 64)
    entries = list_model_files(tmp_path)
    replacement = tmp_path / "other.bin"
    replacement.write_bytes(b"e" * 64)
    os.replace(replacement, target)  # the swap: same name and size, another inode
    ser = Serialization(method="files", hash_type="sha256")
    with pytest.raises(safeload.SourceError) as info:
        hash_entries(entries, serialization=ser)
    assert info.value.rule == "source.changed"


def test_hashing_accepts_the_file_it_listed(tmp_path: Path) -> None:
    """The identity check must not refuse the untouched file (nor a listed symlink target)."""
    (tmp_path / "model.bin").write_bytes(b"w" * 64)
    (tmp_path / "link.bin").symlink_to("model.bin")
    entries = list_model_files(tmp_path, allow_symlinks=True)
    assert all(e.identity is not None for e in entries)
    ser = Serialization(method="files", hash_type="sha256")
    hash_entries(entries, serialization=ser)


# --- Hugging Face cache refs --------------------------------------------------------------------
def _cache_with_ref(cache: Path) -> Path:
    repo = cache / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    return repo / "refs" / "main"


def test_hf_ref_that_is_a_fifo_is_refused_not_a_hang(tmp_path: Path) -> None:
    """``refs/main`` was read with ``read_text``: a FIFO planted in a shared cache blocked
    ``resolve_hf_ref`` (and so ``from_pretrained`` / ``verify org/name``) forever."""
    from safeload.source import resolve_hf_ref

    ref = _cache_with_ref(tmp_path)
    os.mkfifo(ref)
    with _unblocker(ref) as rescued, pytest.raises(safeload.SourceError, match="regular"):
        resolve_hf_ref("org/tiny", cache_dir=tmp_path)
    assert not rescued()


def test_hf_ref_is_read_in_bounded_bytes(tmp_path: Path) -> None:
    from safeload.source import resolve_hf_ref

    ref = _cache_with_ref(tmp_path)
    ref.write_bytes(b"a" * (1 << 20))  # read as its first 128 bytes, which are not a commit
    with pytest.raises(safeload.SourceError, match="malformed cache ref"):
        resolve_hf_ref("org/tiny", cache_dir=tmp_path)
    ref.write_text("a" * 40 + "\n")
    assert resolve_hf_ref("org/tiny", cache_dir=tmp_path).name == "a" * 40
