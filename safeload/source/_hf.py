"""Resolve ``org/name@revision`` to a snapshot folder of the local Hugging Face cache.

safeload never downloads: a reference resolves only to what is already in the cache, so
``HF_HUB_OFFLINE`` is always honoured (and reported in the error when the snapshot is
missing). The cache layout is ``<cache>/models--org--name/{refs,snapshots,blobs}``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from safeload.errors import SourceError

__all__ = ["hf_cache_dir", "parse_hf_ref", "resolve_hf_ref"]

_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


def hf_cache_dir() -> Path:
    """``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    if home := os.environ.get("HF_HOME"):
        return Path(home) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def parse_hf_ref(ref: str) -> tuple[str, str]:
    """Split ``org/name@revision`` (revision defaults to ``main``) and validate both parts."""
    repo, _, revision = ref.partition("@")
    revision = revision or "main"
    if not _REPO.match(repo) or ".." in repo:
        raise SourceError(f"not a Hugging Face repo id: {repo!r}", rule="sources.repo")
    if not _REF.match(revision) or ".." in revision:
        raise SourceError(f"not a revision: {revision!r}", rule="sources.revision")
    return repo, revision


def resolve_hf_ref(
    ref: str, *, cache_dir: str | os.PathLike[str] | None = None, require_revision: bool = False
) -> Path:
    """The snapshot folder for ``ref``; ``SourceError`` when it is not in the local cache.

    ``require_revision`` (policy ``sources.require_revision``) demands a full 40-hex commit,
    since a branch name can move between review and load.
    """
    repo, revision = parse_hf_ref(ref)
    if require_revision and not _COMMIT.match(revision):
        raise SourceError(
            f"{ref!r} does not pin a commit", rule="sources.require_revision",
            detail="give a full 40-hex commit revision: org/name@<sha>",
        )
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    commit = revision
    if not _COMMIT.match(revision):
        ref_file = repo_dir / "refs" / revision
        commit = _read_ref(ref_file, ref, repo_dir)
        if not _COMMIT.match(commit):
            raise SourceError("malformed cache ref", path=str(ref_file), rule="sources.revision")
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        raise _missing(ref, repo_dir)
    return snapshot


def _read_ref(ref_file: Path, ref: str, repo_dir: Path) -> str:
    """The commit a cache ref names. The cache may be shared: a FIFO planted as ``refs/main``
    must not block ``open()``, and a huge file must not be read whole (a ref is 40 hex)."""
    try:
        fd = os.open(ref_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _missing(ref, repo_dir) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(
                "cache ref is not a regular file", path=str(ref_file), rule="sources.revision"
            )
        raw = os.read(fd, 128)
    finally:
        os.close(fd)
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SourceError(
            "malformed cache ref", path=str(ref_file), rule="sources.revision"
        ) from None


def _missing(ref: str, repo_dir: Path) -> SourceError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    hint = "HF_HUB_OFFLINE is set; " if offline else ""
    return SourceError(
        f"{ref!r} is not in the local Hugging Face cache", path=str(repo_dir),
        rule="sources.cache",
        detail=hint + "safeload never downloads; fetch it first (huggingface-cli download)",
    )
