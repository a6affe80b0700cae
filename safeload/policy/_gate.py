"""The policy's two touch points in a load: limits before reading, a verdict after.

Why one small object instead of loose calls in the loader: the loader must not be able to
forget a step. ``policy_gate`` resolves the effective policy once, fixes the limits the reader
gets, and checks the policy's pickle globals against the program's registry; ``check`` then
builds the :class:`Candidate`, decides, audits and enforces, in that order, so every load,
allowed or not, leaves an audit line before anything can raise.

Digests cost a pass over the bytes, so ``check`` hashes only when someone will use the
result: a pinned digest, an ``audit_log`` file, or a ``safeload.audit`` logger that is on.
A verified file brings its digest from verification, and the record of who verified it.
That record is held to the *load's* policy here (its signer groups, ``min_signers`` and pins),
without reading a byte: a file verified under a lax policy is not "verified" under a stricter
one, and a hash-only record (no signature) never counts as signed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from safeload.policy._apply import select_extra_globals, tighter_limits
from safeload.policy._audit import AUDIT_LOGGER_NAME, audit
from safeload.policy._decide import Candidate, Decision, RuleHit, decide, enforce
from safeload.policy._layering import DEFAULT_SOURCE
from safeload.policy._limits import Limits
from safeload.policy._load import effective_policy, policy_files
from safeload.policy._models import Policy

__all__ = ["PolicyGate", "policy_gate"]

_PLAIN_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class PolicyGate:
    """The effective policy and what the loader knows about its source before reading."""

    policy: Policy
    limits: Limits
    """The limits to give the reader: the policy's, lowered by the caller's."""
    verified: bool = False
    """A verified file whose record holds at least one signer this policy trusts."""
    digest: str | None = None
    configured: bool = True
    """False when no policy was passed or found (the built-in default applies to limits only)."""
    signers: tuple[str, ...] = ()
    """Every signer the source's verification recorded (for the audit line)."""
    signers_reviewed: bool = False
    trust_findings: tuple[RuleHit, ...] = ()
    """Where the verification record falls short of this policy's signer requirements."""
    pin_names: tuple[str, ...] = ()
    model_digest: str | None = None

    def _want_digest(self, level: int) -> bool:
        return bool(
            self.policy.trust.pinned_digests
            or self.policy.audit_log
            or logging.getLogger(AUDIT_LOGGER_NAME).isEnabledFor(level)
        )

    def check(
        self,
        data: bytes | bytearray | memoryview,
        *,
        name: str,
        fmt: str,
        shapes: Sequence[Sequence[int]] = (),
        sandboxed: bool = False,
        repo: str | None = None,
        revision: str | None = None,
        unsafe_options: Sequence[str] = (),
    ) -> Decision:
        """Decide on what was read, audit it, and raise PolicyViolation if enforce refuses."""
        digest = self.digest
        if digest is None and self._want_digest(logging.INFO):
            digest = hashlib.sha256(data).hexdigest()
        candidate = Candidate(
            path=name or "<buffer>",
            format=fmt,
            size_bytes=len(memoryview(data).cast("B")),
            digest=digest,
            signers=self.signers,
            verified=self.verified,
            tensor_count=len(shapes),
            max_tensor_elements=max((math.prod(s) for s in shapes), default=0),
            repo=repo,
            revision=revision,
            sandboxed=sandboxed,
            signers_reviewed=self.signers_reviewed,
            trust_findings=self.trust_findings,
            pin_names=self.pin_names,
            model_digest=self.model_digest,
        )
        decision = decide(candidate, self.policy)
        if not decision.allowed and digest is None and self._want_digest(logging.WARNING):
            # A violation is worth the hash: the audit line should name exactly these bytes.
            candidate = replace(candidate, digest=hashlib.sha256(data).hexdigest())
            decision = replace(decision, candidate=candidate)
        audit(decision, unsafe_options=unsafe_options)
        enforce(decision)
        return decision


def _is_verified_file(source: object) -> bool:
    """Only safeload's own ``VerifiedFile`` is verified. Duck typing (any object with a
    ``buffer()`` method and a ``digest`` string) let a look-alike satisfy
    ``require_signature`` and skip an ``untrusted``-mode sandbox. Looked up without importing
    signing (policy sits below it): if that module is not loaded, no VerifiedFile exists."""
    module = sys.modules.get("safeload.signing._verified")
    cls = getattr(module, "VerifiedFile", None)
    return cls is not None and type(source) is cls


def policy_gate(
    policy: Policy | str | os.PathLike[str] | None,
    limits: Limits | None = None,
    *,
    source: object = None,
    registered_globals: Mapping[str, object] | None = None,
) -> PolicyGate:
    """Resolve the effective policy for one load (see ``effective_policy`` for discovery).

    ``source`` is what the caller passed to load; a ``VerifiedFile`` from ``safeload.verify``
    counts as verified only if its record holds a signer *this* policy trusts, and its record
    is held to this policy's signer groups, ``min_signers`` and pins (``trust_findings``).
    ``registered_globals`` is the program's safe-globals registry; a policy naming a global
    the program never registered is refused here, before any bytes are read.
    """
    effective = effective_policy(policy)
    configured = policy is not None or policy_files(effective) != (DEFAULT_SOURCE,)
    if registered_globals is not None:
        select_extra_globals(effective, registered_globals)
    digest = getattr(source, "digest", None)
    if not (_is_verified_file(source) and isinstance(digest, str)):
        return PolicyGate(policy=effective, limits=tighter_limits(effective.limits, limits),
                          configured=configured)
    review = source.review_trust(effective)  # type: ignore[attr-defined]
    record = getattr(source, "record", None)
    recorded = () if record is None else record.signers
    # Only a plain whole-file SHA-256 is reusable; a sharded OMS digest is not what pins name.
    plain = _PLAIN_SHA256.match(digest) is not None
    return PolicyGate(
        policy=effective,
        limits=tighter_limits(effective.limits, limits),
        verified=bool(review.trusted),
        digest=digest if plain else None,
        configured=configured,
        signers=tuple(str(s.description) for s in recorded),
        signers_reviewed=True,
        trust_findings=tuple(RuleHit(f.rule, f.seen, f.limit, f.message)
                             for f in review.shortfalls),
        pin_names=(str(getattr(source, "name", "")),) if getattr(source, "name", "") else (),
        model_digest=None if record is None else str(record.model_digest),
    )
