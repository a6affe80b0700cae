"""The result of a successful verification: the model's files as the bytes that were hashed.

Everything downstream loads from here instead of re-opening paths. In the default mode each
``VerifiedFile`` holds private anonymous memory filled by the same read that fed the hash,
so renaming a new file over the original, or writing into it in place, after ``verify``
returns cannot change what gets loaded. ``safeload.load`` accepts a ``VerifiedFile``
directly: it only needs ``.buffer() -> memoryview`` and ``.path``.

Loading hands that memory over instead of copying it (``take_buffer``): torch tensors must be
writable, and a second private copy per load measured as expensive as the verification
itself. Ownership moves exactly once; afterwards the file refuses to give out bytes, because
the new owner may have written into them and they are no longer the verified bytes.

Every file also links to the :class:`VerificationRecord` of the verification that produced
it: which signers (as structured values, not display strings) verified which model digest.
A load under a different policy re-evaluates that policy's trust requirements against the
record, so a file verified under a lax policy is not "verified" under a stricter one.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from safeload.errors import UsageError
from safeload.signing._manifest import Serialization

__all__ = ["VerificationRecord", "VerifiedFile", "VerifiedModel", "VerifiedSigner"]


@dataclass(frozen=True, slots=True)
class VerifiedSigner:
    """One distinct signer whose signature verified, as the facts a policy can match on.

    Descriptions are for people; matching on them would confuse a key's display hint with its
    identity, or a certificate identity with the CA that vouched for it.
    """

    method: Literal["key", "certificate", "sigstore"]
    description: str
    """What ``VerifiedModel.signers`` shows (``key:sha256:...``, ``sigstore:who (issuer)``)."""
    identity: str | None = None
    """Sigstore: the SAN that matched; certificate: the identity reported for the leaf."""
    issuer: str | None = None
    """Sigstore: the OIDC issuer in the certificate."""
    key_fingerprint: str | None = None
    """Key: ``sha256:<hex>`` of the public key's SubjectPublicKeyInfo DER."""
    anchor_fingerprint: str | None = None
    """Certificate: ``sha256:<hex>`` of the trust anchor's DER the chain led to."""
    leaf_identities: tuple[str, ...] = ()
    """Certificate: every identity the leaf carries (SAN emails, URIs, DNS names, CNs)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "description": self.description}
        for key in ("identity", "issuer", "key_fingerprint", "anchor_fingerprint"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.leaf_identities:
            out["leaf_identities"] = list(self.leaf_identities)
        return out


@dataclass(frozen=True, slots=True)
class VerificationRecord:
    """Who verified what: shared by a ``VerifiedModel`` and each of its files.

    An empty ``signers`` means the bytes were checked against digests only (no signature):
    such a file is never "verified by a trusted signer".
    """

    signers: tuple[VerifiedSigner, ...]
    model_digest: str
    """``sha256:<hex>``: the OMS subject digest."""


class _Owned:
    """The one writable handle on a verified file's private memory, given away at most once."""

    __slots__ = ("_lock", "_memory", "taken")

    def __init__(self, memory: mmap.mmap) -> None:
        self._memory = memory
        self._lock = threading.Lock()
        self.taken = False

    def take(self, name: str) -> memoryview:
        with self._lock:
            if self.taken:
                raise _handed_over(name)
            self.taken = True
            return memoryview(self._memory)


def _handed_over(name: str) -> UsageError:
    return UsageError(
        "verified bytes were already handed over to a load", path=name,
        rule="verify.bytes_taken",
        detail="the loaded tensors own (and may have changed) them; verify again to load again",
    )


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
    """Read-only view of the verified bytes (until a load takes them over); ``None`` when
    verify ran with keep_bytes=False."""
    size: int = 0
    owned: _Owned | None = field(default=None, repr=False, compare=False)
    """The writable private memory behind ``data`` (with unsafe_mmap: copy-on-write over the
    file), which ``take_buffer`` hands over."""
    record: VerificationRecord | None = field(default=None, repr=False, compare=False)
    """The verification this file came from; ``None`` (hand-built) counts as unverified."""

    def review_trust(self, policy: Any) -> Any:
        """Re-evaluate ``policy``'s signer requirements against this file's record.

        Returns a ``safeload.signing._trust.TrustReview``; reads no bytes, hashes nothing.
        """
        from safeload.signing._trust import review_record, settings_from_policy

        return review_record(self.record, settings_from_policy(policy))

    def buffer(self) -> memoryview:
        """The verified bytes (read-only). Loading from this is loading what was verified."""
        if self.data is None:
            raise UsageError(
                "verified bytes were not kept", path=self.name,
                detail="call safeload.verify(..., keep_bytes=True) to load what was verified",
            )
        if self.owned is not None and self.owned.taken:
            raise _handed_over(self.name)
        return self.data

    def take_buffer(self) -> memoryview:
        """The verified bytes for a loader to own: writable, no copy; works once.

        What ``safeload.load`` uses, so tensors are views of the verified memory. Views from
        :meth:`buffer` taken earlier share that memory and see any later writes to the tensors.
        With ``unsafe_mmap`` it is a copy-on-write mapping of the file: tensor writes stay in
        this process, never reach the file.
        """
        data = self.buffer()
        if self.owned is None:
            return data
        return self.owned.take(self.name)


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
    record: VerificationRecord | None = None
    """The structured signers and model digest every file in ``files`` links to."""

    @property
    def verified_signers(self) -> tuple[VerifiedSigner, ...]:
        return () if self.record is None else self.record.signers

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
            "verified_signers": [s.to_dict() for s in self.verified_signers],
            "serialization": self.serialization.to_json(),
            "files": {n: {"digest": f.digest, "size": f.size} for n, f in self.files.items()},
            "signer_ignored": list(self.signer_ignored),
            "verifier_ignored": list(self.verifier_ignored),
            "unsafe_mmap": self.unsafe_mmap,
        }
