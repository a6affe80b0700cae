"""The result of a successful verification: the model's files as the bytes that were hashed.

Everything downstream loads from here instead of re-opening paths. In the default mode each
``VerifiedFile.data`` is private anonymous memory filled by the same read that fed the hash,
so renaming a new file over the original, or writing into it in place, after ``verify``
returns cannot change what gets loaded. ``safeload.load`` accepts a ``VerifiedFile``
directly: it only needs ``.buffer() -> memoryview`` and ``.path``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from safeload.errors import UsageError
from safeload.signing._manifest import Serialization

__all__ = ["VerifiedFile", "VerifiedModel"]


@dataclass(frozen=True, slots=True)
class VerifiedFile:
    """One signed file of a verified model."""

    name: str
    """Relative POSIX name inside the model folder."""
    path: str
    """Where it was read from (informational: never re-open it to load)."""
    digest: str
    """``<algorithm>:<hex>``; for ``shards`` signatures, SHA-256 over the shard digests."""
    data: memoryview | None = field(default=None, repr=False, compare=False)
    """Read-only view of the verified bytes; ``None`` when verify ran with keep_bytes=False."""
    size: int = 0

    def buffer(self) -> memoryview:
        """The verified bytes (read-only). Loading from this is loading what was verified."""
        if self.data is None:
            raise UsageError(
                "verified bytes were not kept", path=self.name,
                detail="call safeload.verify(..., keep_bytes=True) to load what was verified",
            )
        return self.data


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    """A model folder whose signature(s) checked out, with its files' verified bytes."""

    root: str
    files: Mapping[str, VerifiedFile]
    signers: tuple[str, ...]
    """One description per distinct trusted signer that verified (``key:sha256:...``...)."""
    model_digest: str
    """``sha256:<hex>``: the OMS subject digest, usable as a pin for the whole model."""
    serialization: Serialization
    signer_ignored: tuple[str, ...] = ()
    """Present files the *signer's* ignore_paths left out: not verified, never in ``files``."""
    verifier_ignored: tuple[str, ...] = ()
    """Present files the verifier's (caller's or policy's) ignore_paths left out."""
    unsafe_mmap: bool = False
    """True if ``files`` map the files on disk instead of holding private copies."""

    def __getitem__(self, name: str) -> VerifiedFile:
        return self.files[name]

    def __iter__(self) -> Iterator[VerifiedFile]:
        return iter(self.files.values())

    def __len__(self) -> int:
        return len(self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": True,
            "root": self.root,
            "model_digest": self.model_digest,
            "signers": list(self.signers),
            "serialization": self.serialization.to_json(),
            "files": {n: {"digest": f.digest, "size": f.size} for n, f in self.files.items()},
            "signer_ignored": list(self.signer_ignored),
            "verifier_ignored": list(self.verifier_ignored),
            "unsafe_mmap": self.unsafe_mmap,
        }
