"""List the files of a model folder, refusing anything that could escape it.

The listing is what the verifier compares against a signed manifest, so it must be exact and
hostile-proof: a name is always a normalised POSIX path relative to the model folder, symlinks
are refused unless policy allows them (and then only links that stay inside the folder, or
inside the same Hugging Face cache repo, whose snapshots are symlink farms into ``blobs/``),
and anything that is not a regular file or a folder (FIFOs, sockets, devices) is refused
rather than skipped, because a skipped file is an unverified file.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from safeload.errors import SourceError

__all__ = ["ModelEntry", "check_relative_name", "list_model_files", "path_matcher"]

_HF_REPO_PREFIXES = ("models--", "datasets--", "spaces--")
_UNPRINTABLE = frozenset({"Cc", "Cs"})
"""Unicode categories refused in names: control characters and lone surrogates."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One regular file of a model folder."""

    name: str
    """POSIX path relative to the model folder (``"sub/model.safetensors"``)."""
    path: Path
    """Where to open it: the path itself, or the checked target when it is a symlink."""
    size: int
    """Size at listing time; readers re-check with ``fstat`` on the descriptor they hash."""
    is_link: bool = False
    identity: tuple[int, int] | None = None
    """``(st_dev, st_ino)`` at listing time, so a file swapped in before hashing is refused;
    ``None`` for entries built by hand."""


def check_relative_name(name: str, *, what: str = "path") -> str:
    """Return ``name`` if it is a clean relative POSIX path, else raise ``SourceError``.

    Names come from signed manifests and from the command line; both are checked the same way
    so that neither can point outside the model folder.
    """
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise SourceError(f"{what} {name!r} is not a relative path", rule="source.path")
    if any(unicodedata.category(c) in _UNPRINTABLE for c in name):
        # Newlines forge report and audit lines; lone surrogates (bytes that are not UTF-8)
        # cannot be written into a manifest the way they were read back.
        raise SourceError(
            f"{what} {name!a} has control characters or is not UTF-8", rule="source.path"
        )
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise SourceError(
            f"{what} {name!r} is not a normalised relative path", rule="source.path"
        )
    return name


def path_matcher(paths: Iterable[str]) -> Callable[[str], bool]:
    """A predicate true for a name equal to, or inside, any of ``paths`` (relative names)."""
    prefixes = tuple(sorted({str(PurePosixPath(p)) for p in paths if p not in ("", ".")}))

    def matches(name: str) -> bool:
        return any(name == p or name.startswith(p + "/") for p in prefixes)

    return matches


def _hf_repo_root(root: Path) -> Path | None:
    """The ``models--org--name`` folder when ``root`` is one of its snapshots."""
    parent = root.parent
    if parent.name == "snapshots" and parent.parent.name.startswith(_HF_REPO_PREFIXES):
        return parent.parent
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def list_model_files(
    root: str | os.PathLike[str],
    *,
    allow_symlinks: bool = False,
    exclude: Callable[[str], bool] | None = None,
) -> list[ModelEntry]:
    """Every regular file under ``root``, sorted by name; raise ``SourceError`` on an escape.

    ``exclude`` sees each relative name (folders too) and drops it without looking inside;
    it is how signature files and verifier-side ignore paths stay out of the listing.
    """
    top = Path(root)
    try:
        st = top.stat()
    except OSError as exc:
        raise SourceError("model folder cannot be read", path=str(top), detail=str(exc)) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError("model path is not a folder", path=str(top), rule="source.folder")
    real_top = top.resolve()
    allowed_area = _hf_repo_root(real_top) or _hf_repo_root(top.absolute())
    areas = [real_top] if allowed_area is None else [real_top, allowed_area.resolve()]
    out: list[ModelEntry] = []
    _walk(top, out, allow_symlinks=allow_symlinks, exclude=exclude, areas=areas)
    out.sort(key=lambda e: PurePosixPath(e.name).parts)
    _refuse_lookalikes(out)
    return out


def _refuse_lookalikes(entries: list[ModelEntry]) -> None:
    """Two names one file system keeps apart but another merges (``Model.bin``/``model.bin``,
    NFC/NFD ``café``) mean a copy of the folder holds a different file under a verified name;
    such a folder is ambiguous, so it is refused rather than listed."""
    seen: dict[str, str] = {}
    for e in entries:
        key = unicodedata.normalize("NFC", e.name).casefold()
        other = seen.setdefault(key, e.name)
        if other != e.name:
            raise SourceError(
                "two file names differ only in case or Unicode normalisation",
                path=e.name,
                rule="source.name_collision",
                detail=f"{other!a} and {e.name!a}",
            )


def _walk(
    top: Path,
    out: list[ModelEntry],
    *,
    allow_symlinks: bool,
    exclude: Callable[[str], bool] | None,
    areas: list[Path],
) -> None:
    """Iterative, so a hostile folder nested thousands deep is listed, not a RecursionError."""
    todo: list[tuple[Path, str]] = [(top, "")]
    while todo:
        folder, prefix = todo.pop()
        _scan_folder(folder, prefix, out, todo, allow_symlinks=allow_symlinks, exclude=exclude,
                     areas=areas)


def _scan_folder(
    folder: Path,
    prefix: str,
    out: list[ModelEntry],
    todo: list[tuple[Path, str]],
    *,
    allow_symlinks: bool,
    exclude: Callable[[str], bool] | None,
    areas: list[Path],
) -> None:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        raise SourceError("folder cannot be listed", path=str(folder), detail=str(exc)) from exc
    for de in entries:
        name = f"{prefix}{de.name}"
        if exclude is not None and exclude(name):
            continue
        check_relative_name(name, what="file name")
        path = Path(de.path)
        if de.is_symlink():
            out.append(_checked_link(path, name, allow_symlinks=allow_symlinks, areas=areas))
            continue
        st = de.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            todo.append((path, name + "/"))
        elif stat.S_ISREG(st.st_mode):
            out.append(ModelEntry(name=name, path=path, size=st.st_size,
                                  identity=(st.st_dev, st.st_ino)))
        else:
            raise SourceError(
                "not a regular file (FIFO, socket or device)", path=str(path),
                rule="source.file_type",
            )


def _checked_link(path: Path, name: str, *, allow_symlinks: bool, areas: list[Path]) -> ModelEntry:
    if not allow_symlinks:
        raise SourceError(
            "symlink in model folder", path=str(path), rule="trust.allow_symlinks",
            detail="symlinks are refused unless the policy sets trust.allow_symlinks",
        )
    target = Path(os.path.realpath(path))
    if not any(_inside(target, area) for area in areas):
        raise SourceError(
            "symlink points outside the model folder", path=str(path),
            rule="trust.allow_symlinks", detail=f"target {target}",
        )
    try:
        st = target.stat()
    except OSError as exc:
        raise SourceError("broken symlink", path=str(path), detail=str(exc)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(
            "symlink to something other than a regular file", path=str(path),
            rule="trust.allow_symlinks", detail="linked folders are not followed",
        )
    return ModelEntry(name=name, path=target, size=st.st_size, is_link=True,
                      identity=(st.st_dev, st.st_ino))
